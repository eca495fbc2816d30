"""The series view's step finder (analysis/series.py): it finds real steps, names the two
versions around each, and claims none inside the noise its repeats measured."""

from __future__ import annotations

import random

import pytest

from analysis.series import find_steps


def series(levels, noise=0.02, repeats=3, seed=0):
    rng = random.Random(seed)
    return [(f"v{i:02d}", [level * (1 + rng.gauss(0, noise)) for _ in range(repeats)])
            for i, level in enumerate(levels)]


def test_a_threefold_speed_up_is_one_step_between_the_right_versions():
    found = find_steps(series([30.0] * 8 + [10.0] * 9))
    assert [(s.before, s.after) for s in found.steps] == [("v07", "v08")]
    assert found.steps[0].ratio == pytest.approx(1 / 3, rel=0.03)
    assert found.steps[0].before_value == pytest.approx(30, rel=0.03)
    assert found.note == ""


def test_two_steps_are_both_found_and_a_flat_series_has_none():
    found = find_steps(series([10.0] * 6 + [14.0] * 6 + [7.0] * 6, seed=3))
    assert [(s.before, s.after) for s in found.steps] == [("v05", "v06"), ("v11", "v12")]
    for seed in range(20):
        assert find_steps(series([10.0] * 17, noise=0.05, seed=seed)).steps == []


def test_a_change_within_the_noise_of_the_repeats_is_not_a_step():
    # 4% between halves, repeats that vary by 10%: not a step (at most rarely, by chance).
    claimed = sum(bool(find_steps(series([10.0] * 8 + [10.4] * 8, noise=0.10,
                                         seed=seed)).steps) for seed in range(40))
    assert claimed <= 2
    # The same 4% with very quiet repeats is beyond the noise, but under the 5% that
    # counts as a change.
    assert find_steps(series([10.0] * 8 + [10.4] * 8, noise=0.001)).steps == []
    assert len(find_steps(series([10.0] * 8 + [10.4] * 8, noise=0.001),
                          min_relative=0.01).steps) == 1


def test_gaps_are_skipped_and_without_repeats_no_step_is_claimed():
    points = series([30.0] * 4 + [10.0] * 4)
    points.insert(4, ("unsupported", []))
    found = find_steps(points)
    assert [(s.before, s.after) for s in found.steps] == [("v03", "v04")]
    assert "unsupported" not in [name for name, _ in found.points]
    single = find_steps(series([30.0] * 4 + [10.0] * 4, repeats=1))
    assert single.steps == [] and single.note.startswith("one run per version")
    assert find_steps(series([1.0, 2.0])).note.startswith("fewer than three versions")

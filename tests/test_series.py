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


def _timing_trial(busy_cpus, threads="1", cpus="2", image="torch-2.0.1-cu118", ms=10.0,
                  run_id=None):
    from analysis.load import Trial

    tags = {"versweep.cpus": cpus}
    if busy_cpus is not None:
        tags["versweep.busy_cpus"] = busy_cpus
    run_id = run_id or f"r{busy_cpus}"
    return Trial(run_id=run_id, name=f"rnn_bench @ {image} ({run_id})", status="ok",
                 workload="rnn_bench", image=image, repeat=0, trial_key=f"k{run_id}",
                 params={"bench": "1x320-ce-short", "impl": "cudnn", "num_threads": threads},
                 tags=tags, metrics={"ms_per_batch_median": ms}, message="")


def test_a_timing_trial_is_busy_when_other_work_used_the_cpus_beyond_its_own_threads():
    from analysis.sections import busy

    assert not busy(_timing_trial("1.30"))  # its thread and versweep's own processes
    assert busy(_timing_trial("1.90"))  # another core mostly busy with something else
    assert not busy(_timing_trial("1.90", threads="2"))  # its own two threads
    assert not busy(_timing_trial("2.00", threads="None"))  # all cores its own
    assert not busy(_timing_trial(None))  # not measured (older records)


def test_busy_trials_are_left_out_of_the_speed_figures_unless_asked(monkeypatch):
    from analysis import sections
    from analysis.load import SweepData

    quiet = _timing_trial("1.2", ms=10.0, run_id="quiet")
    noisy = _timing_trial("1.95", ms=30.0, run_id="noisy")
    data = SweepData(tracking_uri="", experiment_id="1", experiment_name="x",
                     parent_run_id="p", parent_run_name="p", parent_tags={}, started=None,
                     trials=[quiet, noisy], images=["torch-2.0.1-cu118"], search=False)
    monkeypatch.setattr(sections, "trials_for", lambda trials, section: list(trials))
    images = ["torch-2.0.1-cu118"]
    [group] = sections.speed_groups(data, images, images[0], {})
    assert group.busy == [noisy] and group.repeat_medians[images[0]] == [10.0]
    [group] = sections.speed_groups(data, images, images[0], {}, include_busy=True)
    assert group.busy == [] and sorted(group.repeat_medians[images[0]]) == [10.0, 30.0]

"""The figures a report prints, checked against numbers a person can work out by hand.

Medians, intervals, ratios and the faster / slower / "~" marks of analysis/stats.py,
the parity verdicts of test perplexities over seeds, and the GTX 1080 reference rows
read from the CSV the project ships (compared with the seed's published figures).
"""

from __future__ import annotations

import math
import random
import warnings

import numpy as np
import pytest
from scipy import stats as scipy_stats

from analysis import reference
from analysis.stats import (
    BASELINE,
    DIFFERS,
    FASTER,
    NOT_AVAILABLE,
    SAME,
    SAME_WITHIN_NOISE,
    SLOWER,
    TOO_FEW_REPEATS,
    compare,
    median_ci,
    parity,
    welch_p_value,
)


def run_ms(median: float, spread: float = 0.01, n: int = 21, seed: int = 0) -> list[float]:
    """One run's per-batch ms: n values spread evenly around ``median`` (exactly its median)."""
    values = [median * (1.0 + spread * k / (n // 2)) for k in range(-(n // 2), n // 2 + 1)]
    random.Random(seed).shuffle(values)
    return values


def runs_ms(repeat_medians: list[float], spread: float = 0.01) -> list[list[float]]:
    return [run_ms(m, spread, seed=i) for i, m in enumerate(repeat_medians)]


def tight(median: float) -> list[list[float]]:
    """Three quiet repeats at median * (0.998, 1, 1.002), +-1% within each."""
    return runs_ms([median * 0.998, median, median * 1.002])


# --------------------------------------------------------------------------- median_ci


def test_the_median_of_one_run_and_its_interval_from_the_order_statistics():
    # Five batches: 10 20 30 40 50 ms. A resample's median is 10 when at least three
    # of its five draws are 10: P = P(Binomial(5, 1/5) >= 3) = 5.8% > 2.5%, so the
    # 2.5th percentile is 10, and by symmetry the 97.5th is 50.
    assert scipy_stats.binom.sf(2, 5, 0.2) == pytest.approx(0.05792)
    interval = median_ci([[30, 10, 50, 20, 40]])
    assert (interval.estimate, interval.low, interval.high) == (30.0, 10.0, 50.0)
    assert (interval.n_repeats, interval.n_samples) == (1, 5)


def test_an_even_run_takes_the_mean_of_its_middle_values():
    assert median_ci([[4.0, 1.0, 3.0, 2.0]]).estimate == 2.5


def test_the_interval_of_a_long_run_sits_where_the_binomial_puts_it():
    # 21 evenly spaced values around 100 (99.0, 99.1, ... 101.0): the resampled median
    # is at most the j-th smallest with probability P(Binomial(21, j/21) >= 11).
    values = run_ms(100.0, spread=0.01)
    ordered = sorted(values)
    interval = median_ci([values])
    below = [scipy_stats.binom.sf(10, 21, (j + 1) / 21) for j in range(21)]
    low_index = next(j for j, p in enumerate(below) if p >= 0.025)
    high_index = next(j for j, p in enumerate(below) if p >= 0.975)
    assert interval.estimate == pytest.approx(100.0)
    # The bootstrap's 2,000 draws land on the exact quantile or its neighbour.
    assert ordered[low_index - 1] <= interval.low <= ordered[low_index + 1]
    assert ordered[high_index - 1] <= interval.high <= ordered[high_index + 1]
    assert interval.low < 100.0 < interval.high


def test_the_drawn_resample_median_has_the_distribution_of_a_real_resample():
    # The exact order-statistic draw against building 100,000 resamples, odd and even n.
    from analysis.stats import _median_positions

    rng = np.random.default_rng(3)
    for n in (7, 10):
        values = np.sort(rng.normal(size=n))
        built = np.median(values[rng.integers(0, n, size=(100_000, n))], axis=1)
        lower, upper = _median_positions(n, 100_000, rng)
        drawn = (values[lower] + values[upper]) / 2.0
        for q in (2.5, 10, 25, 50, 75, 90, 97.5):
            # Both are discrete on the same few points: a quantile matches or is a neighbour.
            support = np.unique(np.concatenate([built, drawn]))
            at_built = np.searchsorted(support, np.percentile(built, q, method="lower"))
            at_drawn = np.searchsorted(support, np.percentile(drawn, q, method="lower"))
            assert abs(int(at_built) - int(at_drawn)) <= 1
        assert drawn.mean() == pytest.approx(built.mean(), abs=0.01)


def test_repeats_vote_with_their_medians():
    interval = median_ci(tight(80.0))
    assert interval.estimate == pytest.approx(80.0)
    assert interval.low < 80.0 < interval.high
    assert interval.high - interval.low < 0.01 * 80.0
    assert (interval.n_repeats, interval.n_samples) == (3, 63)
    # Two repeats: the median of two medians is their mean.
    assert median_ci(runs_ms([10.0, 20.0])).estimate == pytest.approx(15.0)


def test_scattered_repeats_give_a_wide_interval():
    interval = median_ci(runs_ms([420.0, 660.0, 900.0], spread=0.05))
    assert interval.estimate == pytest.approx(660.0)
    assert interval.low < 450.0 and interval.high > 870.0


def test_runs_without_samples_count_with_their_recorded_median():
    # A run that kept no samples.json is passed as [its ms_per_batch_median].
    interval = median_ci([[12.0], [10.0], [11.0]])
    assert (interval.estimate, interval.n_repeats, interval.n_samples) == (11.0, 3, 3)
    assert interval.low >= 10.0 and interval.high <= 12.0


def test_no_values_give_nan_not_an_exception():
    interval = median_ci([])
    assert math.isnan(interval.estimate) and interval.n_repeats == 0
    assert median_ci([[], [math.nan]]).n_samples == 0


def test_the_same_data_gives_the_same_interval_and_order_does_not_matter():
    data = tight(80.0)
    assert median_ci(data) == median_ci(data)
    assert median_ci(data) == median_ci([list(reversed(run)) for run in data])
    # Another seed draws other replicates; the interval barely moves.
    noisy = [list(np.random.default_rng(r).normal(80.0, 2.0, 400)) for r in range(3)]
    assert median_ci(noisy, seed=1) != median_ci(noisy)
    assert median_ci(noisy, seed=1).low == pytest.approx(median_ci(noisy).low, rel=2e-3)


# --------------------------------------------------------------------------- compare


def test_clearly_faster():
    result = compare(tight(100.0), tight(80.0))
    assert result.ratio == pytest.approx(0.80)
    assert result.low < 0.80 < result.high and result.high < 0.81 and result.low > 0.79
    assert result.p_value < 0.01
    assert result.mark == FASTER


def test_clearly_slower():
    result = compare(tight(100.0), tight(120.0))
    assert result.ratio == pytest.approx(1.20)
    assert result.mark == SLOWER
    assert result.low > 1.0


def test_a_two_percent_difference_is_never_a_regression():
    # Significant (tight noise) but below the practical 5% threshold: "~".
    quiet = compare(tight(100.0), tight(102.0))
    assert quiet.ratio == pytest.approx(1.02)
    assert quiet.p_value < 0.05 and quiet.low > 1.0
    assert quiet.mark == SAME_WITHIN_NOISE
    # Within noise (repeats scattered by +-3%): not significant either.
    noisy = compare(runs_ms([97.0, 100.0, 103.0]), runs_ms([99.0, 102.0, 105.0]))
    assert noisy.p_value > 0.05 and noisy.low < 1.0 < noisy.high
    assert noisy.mark == SAME_WITHIN_NOISE


def test_a_large_difference_drowned_in_noise_is_not_called():
    result = compare(tight(600.0), runs_ms([420.0, 660.0, 900.0], spread=0.05))
    assert result.ratio == pytest.approx(1.10)
    assert result.low < 1.0 < result.high
    assert result.mark == SAME_WITHIN_NOISE


def test_many_noisy_two_percent_regressions_are_never_marked():
    rng = np.random.default_rng(11)
    for _ in range(20):
        base = [list(rng.normal(100.0, 5.0, 50) * rng.normal(1.0, 0.02)) for _ in range(3)]
        cand = [list(rng.normal(102.0, 5.0, 50) * rng.normal(1.0, 0.02)) for _ in range(3)]
        assert compare(base, cand).mark == SAME_WITHIN_NOISE


def test_the_threshold_is_a_parameter():
    assert compare(tight(100.0), tight(102.0), threshold=0.01).mark == SLOWER
    assert compare(tight(100.0), tight(120.0), threshold=0.25).mark == SAME_WITHIN_NOISE


def test_one_run_per_side_is_judged_on_its_batch_to_batch_noise():
    result = compare([run_ms(100.0)], [run_ms(80.0, seed=1)])
    assert result.ratio == pytest.approx(0.8)
    assert result.mark == FASTER


def test_a_missing_side_is_not_available():
    for base, cand in ((tight(100.0), []), ([], tight(100.0)), ([[]], [[math.nan]])):
        result = compare(base, cand)
        assert result.mark == NOT_AVAILABLE and math.isnan(result.ratio)


def test_swapping_the_sides_inverts_the_ratio():
    forward, backward = compare(tight(100.0), tight(80.0)), compare(tight(80.0), tight(100.0))
    assert forward.ratio * backward.ratio == pytest.approx(1.0)
    assert (forward.mark, backward.mark) == (FASTER, SLOWER)


def test_identical_runs_are_the_same():
    data = tight(50.0)
    result = compare(data, data)
    assert (result.ratio, result.mark) == (1.0, SAME_WITHIN_NOISE)


# --------------------------------------------------------------------------- parity


def test_parity_same_differs_and_the_baseline():
    results = parity({"old": [115.2, 116.0, 115.6], "same": [115.5, 115.9, 115.4],
                      "worse": [121.0, 121.8, 121.3]}, "old")
    assert results["old"].verdict == BASELINE and results["old"].diff == 0.0
    assert results["same"].verdict == SAME
    assert results["same"].mean == pytest.approx(115.6)
    assert results["same"].p_value == pytest.approx(1.0, abs=1e-6)
    worse = results["worse"]
    assert worse.verdict == DIFFERS
    assert worse.diff == pytest.approx(121.36667 - 115.6, abs=1e-4)
    assert worse.std == pytest.approx(0.404145, abs=1e-6) and worse.n == 3
    # Welch's t-test, as scipy computes it.
    assert worse.p_value == pytest.approx(scipy_stats.ttest_ind(
        [121.0, 121.8, 121.3], [115.2, 116.0, 115.6], equal_var=False).pvalue)


def test_one_seed_is_too_few_to_call():
    results = parity({"old": [115.6], "new": [130.0], "newer": [115.0, 116.0]}, "old")
    assert results["new"].verdict == TOO_FEW_REPEATS and results["new"].p_value is None
    assert results["newer"].verdict == TOO_FEW_REPEATS  # the baseline has one seed


def test_a_significant_but_tiny_difference_is_the_same_model():
    # 30 seeds each make a 0.3% shift significant; under 1% it is the same model.
    rng = np.random.default_rng(5)
    base = list(rng.normal(100.0, 0.2, 30))
    shifted = list(rng.normal(100.3, 0.2, 30))
    result = parity({"a": base, "b": shifted}, "a")["b"]
    assert result.p_value is not None and result.p_value < 0.05
    assert result.verdict == SAME


def test_deterministic_runs_with_no_spread():
    results = parity({"a": [100.0, 100.0], "b": [100.0, 100.0], "c": [104.0, 104.0]}, "a")
    assert results["b"].verdict == SAME
    assert results["c"].verdict == DIFFERS and results["c"].p_value == 0.0


def test_welchs_test_gives_scipys_p_value_to_the_last_bit():
    """parity's own Welch test (no scipy.stats import at start-up) is scipy's arithmetic."""
    rng = np.random.default_rng(11)
    for case in range(2000):
        scale = 10 ** rng.uniform(-3, 4)
        a = rng.normal(100.0, 1.0, int(rng.integers(2, 12))) * scale
        b = rng.normal(100.0 + rng.uniform(-2, 2), rng.uniform(0.1, 3.0),
                       int(rng.integers(2, 12))) * scale
        if case % 7 == 0:
            a, b = np.round(a, 1), np.round(b, 1)
        if case % 11 == 0:
            b = np.full(b.size, b[0])  # no spread on one side
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # scipy's "precision loss" on nearly equal values
            expected = float(scipy_stats.ttest_ind(a, b, equal_var=False).pvalue)
        assert np.array_equal([welch_p_value(a, b)], [expected], equal_nan=True)


def test_parity_needs_its_baseline():
    with pytest.raises(KeyError):
        parity({"a": [1.0, 2.0]}, "b")


# --------------------------------------------------------------------------- reference


def test_the_reference_rows_are_the_seeds_published_figures():
    rows = reference.reference_rows()
    # 3 impls x 4 versions of 1x320, 4 versions of 4x320 CE, 3 of CTC (no 0.1.12 run).
    assert len(rows) == 19
    by_key = {(r.bench, r.impl, r.version): r for r in rows}
    # seed-facts.md 3.5, read from the CSV: mean / median of the last 400 of 500 batches.
    published = {
        ("1x320-ce-long", "cudnn", "0.1.12"): (145.5, 145.6),
        ("1x320-ce-long", "cudnn", "0.4.0"): (79.5, 79.8),
        ("1x320-ce-long", "fused", "0.2.0"): (263.4, 259.1),
        ("1x320-ce-long", "basic", "0.3.1"): (309.5, 307.9),
    }
    for key, (mean, median) in published.items():
        row = by_key[key]
        assert round(row.mean_ms, 1) == mean
        assert round(row.interval.estimate, 1) == median
        assert row.interval.low <= row.interval.estimate <= row.interval.high
        assert (row.interval.n_repeats, row.interval.n_samples) == (1, 400)
    assert round(by_key[("4x320-ce-long", "cudnn", "0.4.0")].mean_ms, 1) == 534.5
    assert round(by_key[("4x320-ctc-long", "cudnn", "0.2.0")].mean_ms, 1) == 2509.0
    assert ("4x320-ctc-long", "cudnn", "0.1.12") not in by_key


def test_every_reference_row_names_its_source_and_hardware():
    for row in reference.reference_rows():
        assert row.gpu == "GTX 1080"
        assert "stefbraun/rnn_benchmarks" in row.source
        assert (row.version, row.cuda, row.cudnn) in {
            ("0.1.12", "8.0", "6021"), ("0.2.0", "8.0", "6021"), ("0.3.1", "8.0", "7005"),
            ("0.4.0", "9.0", "7102")}
    readme = (reference.REFERENCE_CSV.parent / "README.md").read_text()
    assert "results/10/pytorch_comparison/results.csv" in readme
    assert "no licence file" in readme


def test_the_reference_rows_come_in_a_stable_order():
    rows = reference.reference_rows()
    assert [(r.bench, r.impl, r.version) for r in rows[:4]] == [
        ("1x320-ce-long", "cudnn", v) for v in ("0.1.12", "0.2.0", "0.3.1", "0.4.0")]
    assert rows == reference.reference_rows()

"""Statistics of a version comparison: medians with bootstrap intervals, noise-aware ratios, parity.

Everything here is deterministic: every bootstrap draws from a generator seeded
by the ``seed`` argument and a digest of the data it resamples, so the same
records always give the same report, an image's interval and its comparisons
rest on the same replicates, and two different images never share random numbers.

The unit of evidence is the *repeat* (one trial run), not the batch. Batches of
one run share its process, clocks, allocator state and GPU temperature, so they
are not independent; repeats are. That drives the two choices below.

* The statistic of an image is the **median of its repeats' medians**: each run
  gets one vote, its median ms per batch. With one repeat it is that run's
  median, the figure rnn_benchmarks prints.
* Its interval comes from a **hierarchical bootstrap**: resample the repeats with
  replacement, then the batches within each chosen repeat, take each chosen
  repeat's median and the median of those. Within a repeat the median of a
  resample is drawn exactly, without building the resample: the k-th smallest
  of n draws (with replacement) from the sorted values ``x`` is
  ``x[floor(n * U)]`` with ``U ~ Beta(k, n + 1 - k)``, the k-th order statistic
  of n uniforms. That makes the cost grow with repeats x bootstrap draws, not
  with batches: a report over 5,000 runs of 400 batches each stays in seconds.
  (The median of the *pooled* resample, the other natural choice, costs
  n_boot x all batches per image: minutes at that size, for a figure that
  differs little and weighs a long run more than a short one.)
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

# Bootstrap draws per interval: 2,000 puts the 2.5% and 97.5% percentiles 50 draws
# from the ends, enough for two stable digits of an interval.
N_BOOT = 2000

# A ratio is called faster or slower only beyond this practical threshold (and when
# significant): 5% is a change a person acts on, and the run-to-run spread of GPU
# timings on a quiet machine is a few per cent. asv compare's default factor is 10%.
SPEED_THRESHOLD = 0.05

# Significance level of the speed and parity tests.
ALPHA = 0.05

# Two language models whose mean test perplexities differ by less than this
# fraction are the same model for a person, whatever a test says (many seeds make
# tiny differences significant).
PARITY_MIN_RELATIVE_DIFFERENCE = 0.01

# Marks of a speed comparison, in the manner of `asv compare`.
FASTER, SLOWER, SAME_WITHIN_NOISE, NOT_AVAILABLE = "faster", "slower", "~", "n/a"

# Verdicts of a parity check.
SAME, DIFFERS, TOO_FEW_REPEATS, BASELINE = "same", "differs", "too few repeats", "baseline"


@dataclass(frozen=True)
class Interval:
    """A point estimate with a two-sided confidence interval, and what it rests on."""

    estimate: float
    low: float
    high: float
    n_repeats: int  # repeats (runs) with at least one value
    n_samples: int  # values over all repeats (per-batch times)


@dataclass(frozen=True)
class Comparison:
    """Candidate against baseline: ratio (candidate / baseline) with its interval and mark.

    ``mark`` is "faster", "slower", "~" (not significant, or below the practical
    threshold) or "n/a" (a side has no data; then the numbers are NaN).
    """

    ratio: float
    low: float
    high: float
    p_value: float
    mark: str


@dataclass(frozen=True)
class ParityResult:
    """One image's test perplexity over seeds, against the baseline image's."""

    mean: float
    std: float  # sample standard deviation over seeds (0.0 with one seed)
    n: int
    diff: float  # mean - baseline mean
    p_value: float | None  # Welch's t-test; None when either side has fewer than 2 seeds
    verdict: str  # "same", "differs", "too few repeats" or "baseline"


# --------------------------------------------------------------------------- medians


def _clean_repeats(repeats: Sequence[Sequence[float]]) -> list[np.ndarray]:
    """Each repeat's finite values, sorted; repeats left empty are dropped."""
    cleaned = []
    for values in repeats:
        array = np.asarray(values if isinstance(values, list | tuple | np.ndarray)
                           else list(values), dtype=float)
        finite = np.isfinite(array)
        array = np.sort(array if finite.all() else array[finite])
        if array.size:
            cleaned.append(array)
    return cleaned


def _sorted_median(values: np.ndarray) -> float:
    """The median of already sorted values, without np.median's partition."""
    n = values.size
    return float(values[(n - 1) // 2] + values[n // 2]) / 2.0


def _median_of_medians(repeats: list[np.ndarray]) -> float:
    return _sorted_median(np.sort([_sorted_median(values) for values in repeats]))


def _median_positions(n: int, draws: int,
                      rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Positions (lower, upper) in n sorted values of the medians of ``draws`` resamples.

    A resample is n draws with replacement; its median is the mean of the values
    at ``lower`` and ``upper`` (equal for odd n). Drawn exactly without building
    the resample: with k = (n + 1) // 2, the k-th smallest of n draws is at
    floor(n * U_(k)) with U_(k) ~ Beta(k, n + 1 - k), the k-th order statistic of
    n uniforms. For even n the median also needs the (k+1)-th: given U_(k) = u,
    U_(k+1) = u + (1 - u) * B with B ~ Beta(1, n - k), the smallest of the n - k
    uniforms above u.
    """
    if n == 1:
        zeros = np.zeros(draws, dtype=np.int64)
        return zeros, zeros
    k = (n + 1) // 2
    u_k = rng.beta(k, n + 1 - k, size=draws)
    lower = np.minimum((u_k * n).astype(np.int64), n - 1)
    if n % 2:
        return lower, lower
    # Beta(1, m) by inversion, 1 - V ** (1 / m): a uniform costs less than a beta draw.
    u_next = u_k + (1.0 - u_k) * (1.0 - rng.random(draws) ** (1.0 / (n - k)))
    return lower, np.minimum((u_next * n).astype(np.int64), n - 1)


def _bootstrap_statistic(repeats: list[np.ndarray], n_boot: int,
                         rng: np.random.Generator) -> np.ndarray:
    """``n_boot`` hierarchical-bootstrap replicates of the median of repeat medians.

    Each replicate picks len(repeats) repeats with replacement ("slots"); each
    slot gets its own resampled median of its repeat's values, so a repeat
    picked twice gets two independent resamples of its batches. Slots of
    repeats with the same number of values share one vectorised draw.
    """
    count = len(repeats)
    lengths = np.array([values.size for values in repeats])
    width = int(lengths.max())
    padded = np.zeros((count, width))
    for row, values in enumerate(repeats):
        padded[row, :values.size] = values
    flat = padded.ravel()  # a 1-D gather is cheaper than a 2-D fancy index
    if count == 1:
        chosen = np.zeros((n_boot, 1), dtype=np.int64)
    else:
        chosen = rng.integers(0, count, size=(n_boot, count))
    unique = np.unique(lengths)
    if unique.size == 1:
        # Every slot resamples a repeat of the same length: one draw for all of them,
        # in slot order (row by row, the order a boolean mask of them selects).
        starts = chosen.ravel() * width
        lower, upper = _median_positions(int(unique[0]), starts.size, rng)
        picked = ((flat[starts + lower] + flat[starts + upper]) / 2.0).reshape(n_boot, count)
    else:
        picked = np.empty((n_boot, count))
        slot_lengths = lengths[chosen]
        for length in unique:
            slots = slot_lengths == length
            starts = chosen[slots] * width
            lower, upper = _median_positions(int(length), int(slots.sum()), rng)
            picked[slots] = (flat[starts + lower] + flat[starts + upper]) / 2.0
    if count == 1:
        return picked[:, 0]
    # The median of each replicate's slots, as np.median computes it (the middle value, or
    # the mean of the middle two) for these finite values, from a sort of each row: a
    # fifth of np.median's cost at a dozen repeats.
    ordered = np.sort(picked, axis=1)
    half = count // 2
    if count % 2:
        return ordered[:, half]
    return (ordered[:, half - 1] + ordered[:, half]) / 2.0


# Replicates already drawn, by (data digest, n_boot, seed): a report asks for the
# baseline's once per candidate, and for each image's both in its interval and in
# its comparison. Bounded so a long-lived process does not grow without end.
_REPLICATE_CACHE: dict[tuple[bytes, int, int], np.ndarray] = {}
_REPLICATE_CACHE_SIZE = 4096


def _replicates(repeats: list[np.ndarray], n_boot: int, seed: int) -> np.ndarray:
    """The bootstrap replicates of ``repeats``, drawn from a generator seeded by the data.

    The generator's seed combines ``seed`` with a digest of the values, so the
    same data always gives the same replicates (an image's interval and its
    comparisons agree), while two different data sets draw independently (a
    ratio's replicates must not share random numbers between its two sides).
    """
    digest = hashlib.blake2b(digest_size=16)
    for values in repeats:
        digest.update(np.int64(values.size).tobytes())
        digest.update(values.tobytes())
    key = (digest.digest(), n_boot, seed)
    found = _REPLICATE_CACHE.get(key)
    if found is None:
        entropy = [seed, int.from_bytes(key[0], "little")]
        found = _bootstrap_statistic(repeats, n_boot, np.random.default_rng(entropy))
        found.setflags(write=False)
        if len(_REPLICATE_CACHE) >= _REPLICATE_CACHE_SIZE:
            _REPLICATE_CACHE.clear()
        _REPLICATE_CACHE[key] = found
    return found


def median_ci(repeats: Sequence[Sequence[float]], confidence: float = 0.95,
              n_boot: int = N_BOOT, seed: int = 0) -> Interval:
    """The median of ``repeats`` (one sequence of per-batch values per run) with a bootstrap CI.

    The estimate is the median of the repeats' medians; the interval is the
    percentile interval of a hierarchical bootstrap (repeats, then values within
    each repeat; see the module docstring). A single repeat gives a bootstrap
    over its values only. A repeat with no per-batch values can be passed as
    ``[its ms_per_batch_median]``: one value, so it adds between-run spread only.
    Non-finite values are ignored. With no values at all, everything is NaN.
    """
    cleaned = _clean_repeats(repeats)
    n_samples = sum(values.size for values in cleaned)
    if not cleaned:
        return Interval(math.nan, math.nan, math.nan, 0, 0)
    estimate = _median_of_medians(cleaned)
    replicates = _replicates(cleaned, n_boot, seed)
    tail = (1.0 - confidence) / 2.0 * 100.0
    low, high = np.percentile(replicates, [tail, 100.0 - tail])
    return Interval(estimate, float(low), float(high), len(cleaned), n_samples)


# --------------------------------------------------------------------------- speed comparison


def compare(baseline: Sequence[Sequence[float]], candidate: Sequence[Sequence[float]], *,
            threshold: float = SPEED_THRESHOLD, alpha: float = ALPHA, n_boot: int = N_BOOT,
            seed: int = 0) -> Comparison:
    """Is ``candidate`` faster or slower than ``baseline``? Both are repeats of per-batch times.

    ratio = candidate median / baseline median (the statistic of median_ci).
    Its interval and p-value come from independent hierarchical bootstraps of
    the two sides: the (1 - alpha) percentile interval of the replicate ratios,
    and the two-sided bootstrap p-value 2 * min(P(ratio <= 1), P(ratio >= 1)),
    no smaller than 1 / n_boot. The p-value is below alpha when the interval
    excludes 1 (to the bootstrap's resolution), so the interval shown and the
    mark agree.

    The mark is "slower" when the difference is significant (p < alpha) AND the
    ratio exceeds 1 + threshold, "faster" when significant AND the ratio is below
    1 / (1 + threshold), else "~". So a 2% change is "~" however tight the
    noise, and a large change is "~" when the repeats scatter too much to trust.
    With fewer than two repeats on a side the bootstrap sees only that run's
    batch-to-batch noise, the best there is; a report shows n_repeats next to it.
    """
    base = _clean_repeats(baseline)
    cand = _clean_repeats(candidate)
    if not base or not cand:
        return Comparison(math.nan, math.nan, math.nan, math.nan, NOT_AVAILABLE)
    base_estimate = _median_of_medians(base)
    cand_estimate = _median_of_medians(cand)
    if base_estimate <= 0:
        return Comparison(math.nan, math.nan, math.nan, math.nan, NOT_AVAILABLE)
    ratio = cand_estimate / base_estimate
    base_reps = _replicates(base, n_boot, seed)
    cand_reps = _replicates(cand, n_boot, seed)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratios = cand_reps / base_reps
    ratios = ratios[np.isfinite(ratios)]
    tail = alpha / 2.0 * 100.0
    low, high = np.percentile(ratios, [tail, 100.0 - tail])
    p_value = 2.0 * min(float(np.mean(ratios <= 1.0)), float(np.mean(ratios >= 1.0)))
    p_value = min(1.0, max(p_value, 1.0 / n_boot))
    significant = p_value < alpha
    if significant and ratio > 1.0 + threshold:
        mark = SLOWER
    elif significant and ratio < 1.0 / (1.0 + threshold):
        mark = FASTER
    else:
        mark = SAME_WITHIN_NOISE
    return Comparison(float(ratio), float(low), float(high), float(p_value), mark)


# --------------------------------------------------------------------------- parity


def welch_p_value(a: np.ndarray, b: np.ndarray) -> float:
    """The two-sided p-value of Welch's t-test (unequal variances) of two samples.

    The same arithmetic, step by step, as ``scipy.stats.ttest_ind(a, b, equal_var=False)``
    (scipy 1.17: _var, _unequal_var_ttest_denom, _ttest_ind_from_stats), so the same
    bits: tests/test_analysis_stats.py checks it against scipy. Only the t distribution
    comes from scipy, from scipy.special: importing scipy.stats costs about a second at
    start-up, scipy.special a tenth of it, and only parity verdicts need it.
    """
    from scipy.special import stdtr

    def mean_var(x: np.ndarray) -> tuple[np.float64, np.float64, int]:
        mean = np.mean(x, keepdims=True)
        moment = np.mean((x - mean) ** 2)
        n = x.shape[0]
        return mean[0], moment * (np.float64(n) / (np.float64(n) - 1)), n

    m1, v1, n1 = mean_var(np.asarray(a, dtype=float))
    m2, v2, n2 = mean_var(np.asarray(b, dtype=float))
    vn1, vn2 = v1 / n1, v2 / n2
    with np.errstate(divide="ignore", invalid="ignore"):
        df = (vn1 + vn2) ** 2 / (vn1 ** 2 / (n1 - 1) + vn2 ** 2 / (n2 - 1))
        df = np.float64(1.0) if np.isnan(df) else df  # zero variances: any df will do
        t = np.divide(m1 - m2, np.sqrt(vn1 + vn2))
    return float(2 * stdtr(df, -np.abs(t)))


def parity(values_by_image: Mapping[str, Sequence[float]], baseline: str, *,
           alpha: float = ALPHA,
           min_relative_difference: float = PARITY_MIN_RELATIVE_DIFFERENCE,
           ) -> dict[str, ParityResult]:
    """Does each image reach the baseline image's test perplexity on the same config?

    ``values_by_image`` holds one value per seed (repeat). An image "differs"
    when Welch's t-test says its mean differs from the baseline's beyond the
    seed-to-seed noise (p < alpha) AND the difference exceeds
    ``min_relative_difference`` of the baseline's mean; else it is "same". With
    fewer than two seeds on either side there is no noise to compare against:
    "too few repeats", never a guess. Identical values on both sides (a
    deterministic run) are "same" when equal and judged by the relative floor
    alone otherwise. The baseline's own entry has the verdict "baseline".
    """
    if baseline not in values_by_image:
        raise KeyError(f"baseline image {baseline!r} has no values")
    clean = {image: np.asarray([v for v in values if math.isfinite(v)], dtype=float)
             for image, values in values_by_image.items()}
    base = clean[baseline]
    base_mean = float(np.mean(base)) if base.size else math.nan
    results: dict[str, ParityResult] = {}
    for image, values in clean.items():
        n = int(values.size)
        mean = float(np.mean(values)) if n else math.nan
        std = float(np.std(values, ddof=1)) if n >= 2 else 0.0
        diff = mean - base_mean
        if image == baseline:
            results[image] = ParityResult(mean, std, n, 0.0, None, BASELINE)
            continue
        if n < 2 or base.size < 2:
            results[image] = ParityResult(mean, std, n, diff, None, TOO_FEW_REPEATS)
            continue
        large = abs(diff) > min_relative_difference * abs(base_mean)
        if np.ptp(values) == 0 and np.ptp(base) == 0:
            # No spread on either side: the t statistic is undefined; any
            # difference is systematic, so only the practical floor decides.
            p_value = 1.0 if diff == 0 else 0.0
        else:
            p_value = welch_p_value(values, base)
        verdict = DIFFERS if (p_value < alpha and large) else SAME
        results[image] = ParityResult(mean, std, n, diff, p_value, verdict)
    return results


__all__ = [
    "ALPHA", "BASELINE", "DIFFERS", "FASTER", "NOT_AVAILABLE", "SAME", "SAME_WITHIN_NOISE",
    "SLOWER", "SPEED_THRESHOLD", "TOO_FEW_REPEATS", "Comparison", "Interval", "ParityResult",
    "compare", "median_ci", "parity", "welch_p_value",
]

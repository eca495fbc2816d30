"""A metric against the torch version, in release order, and the steps in it.

    steps = find_steps([("torch-1.13.1-cu116", [31.2, 30.8, 31.5]),
                        ("torch-2.0.1-cu117", [10.3, 10.1, 10.4]), ...])
    steps[0].before, steps[0].after, steps[0].ratio   # "torch-1.13.1-cu116", "torch-2.0.1...", 0.33

Each point is one version with the values of its repeats. A **step** is a place between
two consecutive versions where the series changes by more than its repeats vary, and by
at least ``min_relative`` (5% by default: what the speed tables call a change).

How: PELT (Killick, Fearnhead & Eckley 2012; the ``ruptures`` library), an exact search
for the segmentation of the per-version means that minimises the within-segment squared
error plus a penalty per change. It works on the logarithm of the values, so a step is a
ratio and a 2x change weighs the same at 1 ms and at 100 ms. The penalty comes from the
repeats: their pooled within-version variance s² (the noise of one run), divided by the
repeats per version (the noise of a version's mean), times 5 ln(n), a BIC-like penalty
for n versions. A change therefore has to stand out from the run-to-run noise that the
repeats measured, not from a guess. Simulated (3 repeats with 10% run-to-run noise, 300
series each): a flat series of 17 versions gets a false step in 0.3% of series (8
versions: 2.7%), and a 30% step is found, alone and in its place, in 100% of them. A
factor of 3 gave 5.7% false steps at 17 versions, 14% at 8.

Why PELT with this penalty rather than a permutation test (the e-divisive means of
Apache Otava or MongoDB's signal-processing-algorithms): a version series has few points
(one per release line, 10 to 30) and each point already has repeats. A permutation test
over so few points has little power and coarse p-values, and it ignores the repeats; PELT
is exact for any n and the repeats give it the noise level directly. Without repeats
(one run per version) there is no noise estimate and no step is claimed.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from analysis.stats import SPEED_THRESHOLD

# The penalty per change, in units of (noise variance of a version's mean) x ln(n).
PENALTY_FACTOR = 5.0


@dataclass(frozen=True)
class Step:
    """A change between two consecutive measured versions."""

    before: str  # the last version of the segment before the step
    after: str  # the first version of the segment after it
    ratio: float  # the geometric mean after / before, over the two adjacent segments
    before_value: float  # the segments' geometric means, in the metric's unit
    after_value: float
    noise: float  # the relative noise of one version's mean (exp(sigma) - 1)


@dataclass(frozen=True)
class Series:
    """What find_steps saw: the versions used, and why it may not have looked for steps."""

    points: list[tuple[str, list[float]]]
    steps: list[Step]
    note: str = ""  # why no step could be looked for (too few versions, no repeats)


def find_steps(points: Sequence[tuple[str, Sequence[float]]], *,
               min_relative: float = SPEED_THRESHOLD) -> Series:
    """The steps of a series of (version, repeat values), versions in release order.

    Versions without a positive finite value are left out (a gap, not a zero); a step
    then lies between the measured versions around it.
    """
    kept = [(name, [float(v) for v in values if math.isfinite(v) and v > 0])
            for name, values in points]
    kept = [(name, values) for name, values in kept if values]
    if len(kept) < 3:
        return Series(kept, [], "fewer than three versions measured: no series to search")
    logs = [np.log(values) for _, values in kept]
    deviations = sum(float(((x - x.mean()) ** 2).sum()) for x in logs)
    freedom = sum(x.size - 1 for x in logs)
    if freedom == 0:
        return Series(kept, [], "one run per version: no noise estimate, so no step is "
                                "claimed (give the grid repeats)")
    repeats = statistics.mean(x.size for x in logs)
    noise_variance = deviations / freedom / repeats  # of one version's mean
    means = np.array([x.mean() for x in logs])
    n = len(means)
    penalty = PENALTY_FACTOR * max(noise_variance, 1e-12) * math.log(n)
    import ruptures  # imported here: a report without a series view does not need it

    ends = ruptures.Pelt(model="l2", min_size=1, jump=1).fit(means.reshape(-1, 1)) \
        .predict(pen=penalty)
    bounds = [0, *ends]  # segment k is means[bounds[k]:bounds[k + 1]]
    steps = []
    noise = math.exp(math.sqrt(noise_variance)) - 1.0
    for k in range(1, len(bounds) - 1):
        left = means[bounds[k - 1]:bounds[k]].mean()
        right = means[bounds[k]:bounds[k + 1]].mean()
        ratio = math.exp(right - left)
        if abs(ratio - 1.0) < min_relative:
            continue  # beyond the noise, but too small to call a change
        steps.append(Step(before=kept[bounds[k] - 1][0], after=kept[bounds[k]][0],
                          ratio=ratio, before_value=math.exp(left),
                          after_value=math.exp(right), noise=noise))
    return Series(kept, steps)

"""The report's figures, drawn with matplotlib's Agg backend and returned as PNG bytes.

Each function takes plain numbers (no MLflow, no statistics) so it can be called
with anything: the sweep's own trials or the GTX 1080 reference rows. The PNG
bytes go into report.html as data URIs and next to report.md as files.

    grouped_bars        milliseconds per batch, one group per implementation,
                        one bar per version, error bars = 95% CI (the seed's figures)
    lines_across_versions  the same figures as lines over the versions, one line per
                        implementation, error bars = 95% CI
    learning_curves     a metric per epoch, one line per run, coloured by image
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import matplotlib

# Agg draws into memory: no display, no window system, the same pixels on every machine.
matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.collections import PolyCollection  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

# Dots per inch of the saved PNGs: sharp on a laptop screen, ~40-80 kB per figure.
DPI = 100
# The widest figure (inches): wider than a report column is unreadable, so a figure with
# many bars gets thinner bars instead, and many groups go to further rows (PER_PANEL).
MAX_WIDTH_INCHES = 14.0
# Bar groups (or lines) per row of a figure; more go to further rows of the same figure.
PER_PANEL = 6

# One colour per version, kept in the same order across every figure of a report,
# so "torch-1.13.1" is the same colour in the bars, the lines and the curves.
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b",
           "#e377c2", "#7f7f7f", "#bcbd22", "#17becf")


@dataclass(frozen=True)
class Bar:
    """One bar: a median with its 95% interval (None where nothing was measured)."""

    estimate: float | None
    low: float | None = None
    high: float | None = None


def colours(count: int) -> list:
    """``count`` distinguishable colours: the palette, or past ten a dark-to-light ramp
    (viridis), which for versions in order reads as oldest to newest."""
    if count <= len(PALETTE):
        return list(PALETTE[:max(count, 1)])
    ramp = matplotlib.colormaps["viridis"]
    return [ramp(i / (count - 1)) for i in range(count)]


def png(figure: Figure) -> bytes:
    """A matplotlib figure as PNG bytes (at DPI, cropped to what is drawn); closes it."""
    return _png(figure)


def _png(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI, bbox_inches="tight")
    plt.close(figure)
    return buffer.getvalue()


def _number(value: float | None) -> float | None:
    """The value as a float when it is a finite number, else None (nothing to draw)."""
    return float(value) if value is not None and math.isfinite(value) else None


def _rows(count: int) -> list[range]:
    """Indices 0..count-1 in panels of at most PER_PANEL, one panel per row of a figure."""
    return [range(i, min(i + PER_PANEL, count)) for i in range(0, max(count, 1), PER_PANEL)]


def grouped_bars(title: str, groups: Sequence[str], series: Mapping[str, Sequence[Bar]], *,
                 ylabel: str = "ms per batch (median, 95% CI)",
                 note: str = "") -> bytes:
    """Bars grouped by ``groups`` (e.g. implementations), one bar per series (e.g. version).

    ``series`` maps a legend label to one Bar per group, in the order of
    ``groups``. A Bar without an estimate leaves a gap with "n/a" written in
    it, so a version that did not run is visibly absent, not silently missing.
    More than PER_PANEL groups are drawn in several rows sharing one legend.
    """
    labels = list(series)
    count = max(len(labels), 1)
    palette = colours(len(labels))
    width = 0.8 / count
    panels = _rows(len(groups))
    per_row = len(panels[0])
    figure, axes_list = plt.subplots(
        len(panels), 1, squeeze=False,
        figsize=(min(MAX_WIDTH_INCHES, max(6.0, 1.2 + 0.35 * count * per_row)),
                 0.9 + 3.3 * len(panels)))
    tops = [_number(bar.high) or _number(bar.estimate) or 0.0
            for bars in series.values() for bar in bars]
    tallest = max(tops, default=1.0) or 1.0
    drawn: set[str] = set()
    for row, panel in enumerate(panels):
        axes = axes_list[row][0]
        # The error bars of every series of the panel, drawn by one errorbar call after
        # the bars (as before: errorbar's lines sit above every bar collection whatever the
        # call order, and they are all black): an errorbar call per series made 20 x 3
        # artists per panel, a fifth of the figure's cost.
        whisker_xs: list[float] = []
        whisker_ys: list[float] = []
        whisker_below: list[float] = []
        whisker_above: list[float] = []
        for index, label in enumerate(labels):
            # Each series' bars are one PolyCollection: axes.bar makes a Rectangle patch
            # per bar, five times slower to draw, which a sweep of 20 versions x 20
            # variants feels.
            xs, heights, below, above = [], [], [], []
            for slot, position in enumerate(panel):
                bar = series[label][position]
                x = slot - 0.4 + width * (index + 0.5)
                estimate, low, high = (_number(bar.estimate), _number(bar.low),
                                       _number(bar.high))
                if estimate is None:
                    axes.text(x, tallest * 0.02, "n/a", rotation=90, ha="center", va="bottom",
                              fontsize=7, color="#666666")
                    continue
                xs.append(x)
                heights.append(estimate)
                below.append(max(estimate - low, 0.0) if low is not None else 0.0)
                above.append(max(high - estimate, 0.0) if high is not None else 0.0)
            if xs:
                half = width * 0.95 / 2
                axes.add_collection(PolyCollection(
                    [[(x - half, 0.0), (x - half, h), (x + half, h), (x + half, 0.0)]
                     for x, h in zip(xs, heights, strict=True)],
                    facecolors=[palette[index]], edgecolors="none"))
                whisker_xs += xs
                whisker_ys += heights
                whisker_below += below
                whisker_above += above
                drawn.add(label)
        if whisker_xs:
            axes.errorbar(whisker_xs, whisker_ys, yerr=[whisker_below, whisker_above],
                          fmt="none", ecolor="black", elinewidth=0.8, capsize=2)
        axes.set_xticks(range(len(panel)))
        axes.set_xticklabels([groups[i] for i in panel])
        axes.set_xlim(-0.5, per_row - 0.5)
        axes.set_ylabel(ylabel)
        axes.set_ylim(0, tallest * 1.08)
        axes.grid(axis="y", alpha=0.3)
    axes_list[0][0].set_title(title)
    # One legend for all rows; a version with nothing measured is still in it (a hatched
    # proxy), so the "n/a" gaps have a name.
    handles = [Patch(facecolor=palette[i]) if label in drawn else
               Patch(facecolor="none", edgecolor=palette[i], hatch="///")
               for i, label in enumerate(labels)]
    names = [label if label in drawn else f"{label} (no result)" for label in labels]
    if labels:
        axes_list[0][0].legend(handles, names, fontsize=8, title="version", title_fontsize=8,
                               loc="upper left", bbox_to_anchor=(1.0, 1.0))
    if note:
        figure.text(0.01, -0.02, note, fontsize=7, color="#555555", ha="left", va="top")
    return _png(figure)


def lines_across_versions(title: str, versions: Sequence[str],
                          lines: Mapping[str, Sequence[Bar]], *,
                          ylabel: str = "ms per batch (median, 95% CI)",
                          note: str = "") -> bytes:
    """One line per key of ``lines`` (e.g. implementation) over ``versions`` (x axis, in order).

    Whiskers are the 95% interval; a version without a figure breaks the line. More
    than PER_PANEL lines are drawn in several rows, each with its own legend.
    """
    labels = list(lines)
    panels = _rows(len(labels))
    figure, axes_list = plt.subplots(
        len(panels), 1, squeeze=False, sharex=True,
        figsize=(min(MAX_WIDTH_INCHES, max(6.0, 1.5 + 0.8 * len(versions))),
                 1.4 + 3.0 * len(panels)))
    xs = list(range(len(versions)))
    palette = colours(min(len(labels), PER_PANEL))
    for row, panel in enumerate(panels):
        axes = axes_list[row][0]
        for index, position in enumerate(panel):
            label = labels[position]
            ys, below, above = [], [], []
            for point in lines[label]:
                y, low, high = (_number(point.estimate), _number(point.low),
                                _number(point.high))
                ys.append(math.nan if y is None else y)  # nan: a gap in the line
                below.append(max(y - low, 0.0) if y is not None and low is not None else 0.0)
                above.append(max(high - y, 0.0) if y is not None and high is not None else 0.0)
            # A line and one collection of interval whiskers: cheaper to draw than
            # errorbar's caps, and just as readable.
            axes.plot(xs, ys, marker="o", markersize=4, color=palette[index], label=label)
            axes.vlines(xs, [y - b for y, b in zip(ys, below, strict=True)],
                        [y + a for y, a in zip(ys, above, strict=True)],
                        color=palette[index], linewidth=1.2)
        axes.set_ylabel(ylabel)
        axes.set_ylim(bottom=0)
        axes.grid(alpha=0.3)
        if len(panel):
            axes.legend(fontsize=8, title="implementation", title_fontsize=8,
                        loc="upper left", bbox_to_anchor=(1.0, 1.0))
    bottom = axes_list[-1][0]
    bottom.set_xticks(xs)
    bottom.set_xticklabels(versions, rotation=30, ha="right")
    bottom.set_xlabel("image (oldest PyTorch first)")
    axes_list[0][0].set_title(title)
    if note:
        figure.text(0.01, -0.02, note, fontsize=7, color="#555555", ha="left", va="top")
    return _png(figure)


# Line styles that tell the runs (seeds, repeats) of one colour apart, in run order.
RUN_STYLES = ("-", "--", ":", "-.")
# A y range wider than this ratio is drawn on a log scale (a diverging run next to
# converging ones would flatten them all into the x axis).
LOG_SCALE_SPAN = 100.0


def spans_orders_of_magnitude(values: Sequence[float]) -> bool:
    """Whether positive finite ``values`` span more than LOG_SCALE_SPAN (min to max)."""
    positive = [v for v in values if math.isfinite(v) and v > 0]
    return bool(positive) and max(positive) / min(positive) > LOG_SCALE_SPAN


def learning_curves(title: str, curves: Mapping[str, Sequence[Sequence[tuple[int, float]]]], *,
                    ylabel: str, xlabel: str = "epoch", log_y: bool | None = None,
                    legend_title: str = "image") -> bytes:
    """A metric per step: one colour per key of ``curves`` (e.g. image), one line per run (seed).

    Several seeds of one image share its colour, so the spread between seeds
    reads directly as the noise a version change has to beat; their line styles tell
    them apart (RUN_STYLES: solid, dashed, dotted, dash-dot, in run order). A key with no
    runs draws nothing but keeps its colour slot, so an image has the same colour here as
    in the speed figures. ``log_y`` None: a log scale where the values span more than
    LOG_SCALE_SPAN.
    """
    figure, axes = plt.subplots(figsize=(7.0, 4.2))
    palette = colours(len(curves))
    drawn: list[float] = []
    for index, (label, runs) in enumerate(curves.items()):
        for number, points in enumerate(runs):
            finite = [(step, value) for step, value in points if math.isfinite(value)]
            if not finite:
                continue
            steps, values = zip(*finite, strict=True)
            drawn.extend(values)
            axes.plot(steps, values, marker="." if len(steps) < 30 else None,
                      color=palette[index], alpha=0.85,
                      linestyle=RUN_STYLES[number % len(RUN_STYLES)],
                      label=f"{label} ({len(runs)} run{'s' if len(runs) != 1 else ''})"
                      if number == 0 else None)
    axes.set_xlabel(xlabel)
    axes.set_title(title)
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole
    if log_y is None:
        log_y = spans_orders_of_magnitude(drawn)
    if log_y:
        axes.set_yscale("log")
        ylabel += " (log scale)"
    axes.set_ylabel(ylabel)
    axes.grid(alpha=0.3)
    if curves:
        axes.legend(fontsize=8, title=legend_title, title_fontsize=8)
    return _png(figure)

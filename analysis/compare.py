"""``report.py --compare A B``: a compact two-image table for a terminal, as ``asv compare`` prints.

    before: torch-1.13.1-cu117 (torch 1.13.1, CUDA 11.7, cuDNN 8500)
    after:  torch-2.5.1-cu124  (torch 2.5.1, CUDA 12.4, cuDNN 90100)

           before            after    ratio  benchmark
    -  2.31±0.02ms  1.52±0.01ms   0.66  rnn_bench 1x320-ce-short cudnn
    +   10.4±0.1ms   11.9±0.2ms   1.14  rnn_bench 1x320-ce-short fused
        5.12±0.3ms   5.20±0.4ms   1.02  rnn_bench 1x320-ce-long cudnn
    x   30.1±0.2ms  unsupported      -  rnn_bench 4x320-ctc-long cudnn

The first column is the mark: ``+`` slower, ``-`` faster (both only when the
difference is statistically significant and beyond the practical threshold; see
analysis/stats.py), blank for no significant change, ``x`` when only one side
has a figure. ``±`` is the wider half of the 95% bootstrap interval of the median.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

# The mark column, from stats.Comparison.mark.
MARK_SYMBOLS = {"slower": "+", "faster": "-", "~": " ", "n/a": "x"}


@dataclass(frozen=True)
class Figure:
    """One side of a row: an estimate with its interval, or why there is none."""

    estimate: float | None
    low: float | None = None
    high: float | None = None
    missing: str = ""  # e.g. "unsupported", "failed", "not run"


@dataclass(frozen=True)
class Row:
    """One benchmark compared between the two images."""

    benchmark: str
    before: Figure
    after: Figure
    ratio: float | None
    mark: str  # "faster", "slower", "~", "n/a", or a parity verdict for perplexity rows
    unit: str = "ms"


def format_number(value: float, digits: int = 3) -> str:
    """``digits`` significant figures without exponent notation (3: 0.0123, 1.23, 12.3, 123,
    and 1234 whole)."""
    if not math.isfinite(value):
        return str(value)
    if value == 0:
        return "0"
    decimals = max(digits - 1 - math.floor(math.log10(abs(value))), 0)
    return f"{value:.{decimals}f}"


def format_figure(figure: Figure, unit: str) -> str:
    """``1.23±0.04ms``: the estimate and the wider half of its interval, or why there is none."""
    if figure.estimate is None or not math.isfinite(figure.estimate):
        return figure.missing or "-"
    text = format_number(figure.estimate)
    if figure.low is not None and figure.high is not None:
        half = max(figure.estimate - figure.low, figure.high - figure.estimate)
        if half > 0:
            text += "±" + format_number(half, 2)
    return text + unit


def mark_symbol(mark: str) -> str:
    """The one-character mark of the first column (perplexity verdicts: ``!`` differs)."""
    if mark in MARK_SYMBOLS:
        return MARK_SYMBOLS[mark]
    return {"differs": "!", "same": " ", "too few repeats": "?"}.get(mark, "?")


def format_table(rows: Sequence[Row], before: str, after: str, *,
                 before_about: str = "", after_about: str = "") -> str:
    """The whole terminal text: who is compared, the rows, and what the marks mean."""
    lines = [f"before: {before}" + (f" ({before_about})" if before_about else ""),
             f"after:  {after}" + (f" ({after_about})" if after_about else ""), ""]
    cells = [(mark_symbol(row.mark), format_figure(row.before, row.unit),
              format_figure(row.after, row.unit),
              f"{row.ratio:.2f}" if row.ratio is not None and math.isfinite(row.ratio)
              else "-", row.benchmark) for row in rows]
    header = ("", "before", "after", "ratio", "benchmark")
    widths = [max([len(header[i])] + [len(c[i]) for c in cells]) for i in range(4)]
    lines.append(f"{header[0]:<1}  {header[1]:>{widths[1]}}  {header[2]:>{widths[2]}}  "
                 f"{header[3]:>{widths[3]}}  {header[4]}")
    for mark, first, second, ratio, name in cells:
        lines.append(f"{mark:<1}  {first:>{widths[1]}}  {second:>{widths[2]}}  "
                     f"{ratio:>{widths[3]}}  {name}")
    if not rows:
        lines.append("(nothing that both images ran)")
    lines += ["", "+ slower, - faster (significant and beyond the threshold), blank: no "
              "significant change, x: only one side has a figure;",
              "! perplexity differs beyond seed-to-seed noise, ? too few repeats to say; "
              "ratio = after / before; ± = the wider half of the 95% interval (perplexity: "
              "the standard deviation over seeds)."]
    return "\n".join(lines) + "\n"

"""The report's figures: scales, legends and line styles a reader can trust."""

from __future__ import annotations

import math

import pytest

from analysis import plots


@pytest.mark.parametrize("values, spans", [
    ([100.0, 150.0, 9000.0], False),  # 90x: a linear scale still shows it
    ([100.0, 1.47e18], True),  # the review's search: one run diverged, the rest flattened
    ([0.0, -5.0, 1.0, 101.0], True),  # only positive values count
    ([math.nan, math.inf, 3.0], False),
    ([], False),
])
def test_a_log_scale_where_the_values_span_orders_of_magnitude(values, spans):
    assert plots.spans_orders_of_magnitude(values) is spans


def _drawn(monkeypatch):
    """The figure learning_curves drew, kept from _png."""
    kept = []
    monkeypatch.setattr(plots, "_png", lambda figure: kept.append(figure) or b"png")
    return kept


def test_search_curves_spanning_1e29_are_on_a_log_scale_with_their_own_legend(monkeypatch):
    kept = _drawn(monkeypatch)
    curves = {"finished": [[(1, 300.0), (2, 150.0)], [(1, 280.0), (2, 1e31)]],
              "stopped early": [[(1, 900.0)]]}
    assert plots.learning_curves("search", curves, ylabel="valid perplexity",
                                 legend_title="trials") == b"png"
    axes = kept[0].axes[0]
    assert axes.get_yscale() == "log"
    assert axes.get_ylabel() == "valid perplexity (log scale)"
    assert axes.get_legend().get_title().get_text() == "trials"


def test_the_seeds_of_one_image_share_a_colour_and_differ_in_line_style(monkeypatch):
    kept = _drawn(monkeypatch)
    curves = {"torch-1.13.1": [[(1, 120.0), (2, 110.0)]] * 3, "torch-2.13.0": [[(1, 121.0)]]}
    plots.learning_curves("lm", curves, ylabel="validation perplexity")
    axes = kept[0].axes[0]
    lines = axes.get_lines()
    assert axes.get_yscale() == "linear"
    assert axes.get_legend().get_title().get_text() == "image"
    first = lines[:3]
    assert len({line.get_color() for line in first}) == 1
    assert [line.get_linestyle() for line in first] == ["-", "--", ":"]
    assert lines[3].get_color() != first[0].get_color()

"""A search sweep's report figures: Optuna's own plots of its study, with the best trial marked.

The search is tests/analysis_store.py's (the real sweeps/grids/hparams.toml: 5 trials
ok, 2 stopped early by ASHA, 1 diverged; its study in optuna.db), written through
SweepRecords as a sweep writes it. The figures are checked on the matplotlib figures
analysis/search_figures.py returns, before they become PNG bytes.
"""

from __future__ import annotations

import csv
import dataclasses
import math
from pathlib import Path

import matplotlib
import optuna
import pytest
from analysis_store import HPARAMS, SEARCH_OUTCOMES, write_search_sweep
from matplotlib.lines import Line2D

from analysis import command, search_figures
from analysis.load import SweepData, Trial, load_sweep_data
from analysis.search_figures import BEST_COLOUR, from_records, from_stored_study, searched_study
from sweeps.errors import GridError
from sweeps.grid.load import load_sweep, search_space_of
from sweeps.records.store import SweepRecords

METRIC = "valid_perplexity"


@pytest.fixture(scope="module")
def search(tmp_path_factory):
    """(the store's directory, its URI, what was written) of the hparams search."""
    directory = tmp_path_factory.mktemp("search-store")
    uri = f"sqlite:///{directory / 'mlflow.db'}"
    written = write_search_sweep(SweepRecords(uri, HPARAMS), directory)
    return directory, uri, written


@pytest.fixture(scope="module")
def data(search) -> SweepData:
    return load_sweep_data(search[1], HPARAMS)


@pytest.fixture(scope="module")
def best_run(data) -> Trial:
    return min((t for t in data.trials if t.status == "ok"), key=lambda t: t.metrics[METRIC])


def test_the_report_draws_optunas_three_figures_and_a_per_trial_csv(search, best_run,
                                                                    tmp_path):
    _, uri, written = search
    assert command.main(["--experiment", HPARAMS, "--tracking-uri", uri, "--out",
                         str(tmp_path), "--no-log", "--format", "md,csv"]) == 0
    markdown = (tmp_path / "report.md").read_text()
    section = markdown.split("## Hyper-parameter search", 1)[1].split("\n## ", 1)[0]
    for name in ("search_slice.png", "search_history.png", "search_parallel.png"):
        png = tmp_path / "plots" / name
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
        assert f"](plots/{name})" in section
    # The per-value table is gone; the captions say what the figures leave out and why.
    assert "per parameter value" not in section
    assert "Drawn from the sweep's Optuna study (optuna.db)" in section
    assert "Left out, as Optuna's plots leave out trials without a final objective: " \
           "1 diverged (FAIL), 2 stopped early (PRUNED)." in section
    assert f"run `{best_run.run_id[:8]}`" in section

    with open(tmp_path / "search_trials.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["run_id"] for r in rows] == [t.run_id for t in written.trials]
    assert [r["status"] for r in rows] == list(SEARCH_OUTCOMES)
    states = {"ok": "COMPLETE", "stopped": "PRUNED", "diverged": "FAIL"}
    assert [r["optuna_state"] for r in rows] == [states[s] for s in SEARCH_OUTCOMES]
    assert [r["run_id"] for r in rows if r["best"] == "True"] == [best_run.run_id]
    for row, trial in zip(rows, written.trials, strict=True):
        assert float(row["learning_rate"]) == trial.config["learning_rate"]
        assert row["hidden_size"] == str(trial.config["hidden_size"])
    best_row = next(r for r in rows if r["best"] == "True")
    assert float(best_row[METRIC]) == pytest.approx(best_run.metrics[METRIC])


def test_the_slice_of_a_log_uniform_parameter_has_a_log_x_axis_over_the_whole_space(data):
    figure = search_figures.slice_figure(searched_study(data, data.trials, METRIC, True))
    panels = {a.get_xlabel(): a for a in figure.axes if a.get_xlabel()}
    assert set(panels) == {"learning_rate", "keep_prob", "hidden_size", "clip_norm"}
    # hparams.toml: learning_rate and clip_norm are loguniform, keep_prob uniform.
    assert panels["learning_rate"].get_xscale() == "log"
    assert panels["clip_norm"].get_xscale() == "log"
    assert panels["keep_prob"].get_xscale() == "linear"
    low, high = panels["learning_rate"].get_xlim()
    assert low < 0.1 and high > 10.0  # the space [0.1, 10], not only the values sampled
    labels = [t.get_text() for t in panels["learning_rate"].get_xticklabels()]
    assert {"0.1", "1", "10"} <= set(labels)
    matplotlib.pyplot.close(figure)


def _stars(axes) -> list[tuple]:
    """The points drawn in the best trial's colour on ``axes``."""
    found = []
    for collection in axes.collections:
        colours = collection.get_facecolors()
        if len(colours) and matplotlib.colors.to_hex(colours[0]) == BEST_COLOUR:
            found.extend(tuple(p) for p in collection.get_offsets())
    return found


def test_every_figure_marks_the_best_trial(data, best_run):
    study = searched_study(data, data.trials, METRIC, True)
    best = study.best
    assert best.user_attrs[search_figures.RUN_ID_ATTR] == best_run.run_id
    assert best.value == pytest.approx(best_run.metrics[METRIC])

    figure = search_figures.slice_figure(study)
    for axes in (a for a in figure.axes if a.get_xlabel()):
        [(x, y)] = _stars(axes)
        assert y == pytest.approx(best.value)
        if axes.get_xlabel() == "learning_rate":
            assert x == pytest.approx(float(best_run.params["learning_rate"]))
    legend = figure.axes[0].get_legend()
    assert [t.get_text() for t in legend.get_texts()] == [
        f"best trial (#{best.number}: {best.value:.4g})"]

    history = search_figures.history_figure(study)
    [(x, y)] = _stars(history.axes[0])
    assert (x, y) == (best.number, pytest.approx(best.value))
    labels = [t.get_text() for t in history.axes[0].get_legend().get_texts()]
    assert "stopped early (2, no final value)" in labels
    assert "diverged or failed (1, no final value)" in labels

    parallel = search_figures.parallel_figure(study)
    [line] = [ln for ln in parallel.axes[0].get_lines()
              if isinstance(ln, Line2D) and ln.get_color() == BEST_COLOUR]
    assert line.get_ydata()[0] == pytest.approx(best.value)  # the objective's axis
    for figure_ in (figure, history, parallel):
        matplotlib.pyplot.close(figure_)


def test_the_study_from_the_records_gives_the_same_best_trial_as_optuna_db(data):
    stored = searched_study(data, data.trials, METRIC, True)
    assert stored.source.startswith("the sweep's Optuna study (optuna.db)")
    space = search_space_of(data.grid_text)
    rebuilt = from_records(data.trials, space, METRIC, True)
    assert rebuilt.source.startswith("the sweep's MLflow runs, in the space of its grid")
    assert rebuilt.left_out == [] and stored.left_out == []

    def by_run(found):
        return {t.user_attrs[search_figures.RUN_ID_ATTR]: (t.state, t.value, t.params)
                for t in found.study.trials}

    assert by_run(rebuilt) == by_run(stored)
    assert (rebuilt.best.user_attrs[search_figures.RUN_ID_ATTR]
            == stored.best.user_attrs[search_figures.RUN_ID_ATTR])
    assert rebuilt.best.distributions == stored.best.distributions

    # Without optuna.db (any store but SQLite), the report takes the records' path itself.
    no_db = dataclasses.replace(data, tracking_uri="http://mlflow.example:5000")
    assert no_db.study() is None
    found = searched_study(no_db, no_db.trials, METRIC, True)
    assert found.source == rebuilt.source
    assert by_run(found) == by_run(stored)


def test_a_stopped_trial_ray_told_optuna_as_complete_is_drawn_as_pruned(data, best_run):
    # Ray Tune's OptunaSearch tells Optuna an ASHA-stopped trial as COMPLETE with the
    # value of its last epoch: here a stopped trial's part-trained value beats every
    # finished one, and it still must not be the search's best.
    stored = data.study()
    as_ray_tells = optuna.create_study(direction="minimize")
    for trial, run in zip(stored.trials, data.trials, strict=True):
        value = 1.0 if run.status == "stopped" else run.metrics.get(METRIC)
        state = (optuna.trial.TrialState.COMPLETE if run.status in ("ok", "stopped")
                 else optuna.trial.TrialState.PRUNED)
        as_ray_tells.add_trial(optuna.trial.create_trial(
            params=trial.params, distributions=trial.distributions, state=state,
            value=value if state == optuna.trial.TrialState.COMPLETE else None))
    found = from_stored_study(as_ray_tells, data.trials, METRIC, True)
    assert found.best.user_attrs[search_figures.RUN_ID_ATTR] == best_run.run_id
    states = {t.user_attrs[search_figures.STATUS_ATTR]: t.state for t in found.study.trials}
    assert states["stopped"] == optuna.trial.TrialState.PRUNED
    assert len(found.complete) == SEARCH_OUTCOMES.count("ok")


def _trial(number: int, value: float | None, status: str = "ok", **params: str) -> Trial:
    return Trial(run_id=f"run{number:02d}", name=f"trial {number}", status=status,
                 workload="ptb_lm", image="local", repeat=0, trial_key=f"k{number}",
                 params=params, tags={}, metrics={} if value is None else {METRIC: value},
                 message="", start_time_ms=number)


def test_an_objective_spanning_orders_of_magnitude_is_on_a_log_scale(data):
    space = search_space_of(data.grid_text)
    # One learning rate far too high: perplexity 1e5 next to 100s.
    values = [120.0, 95.0, 1.0e5, 150.0, 101.0]
    trials = [_trial(i, v, learning_rate=str(0.2 * 2 ** i), keep_prob="0.5",
                     hidden_size="200", clip_norm="1.0") for i, v in enumerate(values)]
    found = from_records(trials, space, METRIC, True)
    assert found.log_objective() and found.best.value == 95.0
    history = search_figures.history_figure(found)
    assert history.axes[0].get_yscale() == "log"
    assert history.axes[0].get_ylabel() == f"{METRIC} (log scale)"
    slices = search_figures.slice_figure(found)
    assert all(a.get_yscale() == "log" for a in slices.axes if a.get_xlabel())
    parallel = search_figures.parallel_figure(found)
    objective = parallel.axes[0]
    # Drawn as log10, labelled in perplexity.
    assert objective.get_ylim()[1] == pytest.approx(5.0)
    assert objective.yaxis.get_major_formatter()(math.log10(95.0), 0) == "95"
    assert "on a log scale" in search_figures.figure_note(found)
    for figure in (history, slices, parallel):
        matplotlib.pyplot.close(figure)


def test_mode_max_marks_the_highest_objective(data):
    space = search_space_of(data.grid_text)
    trials = [_trial(i, v, learning_rate=str(0.5 + i), keep_prob="0.5", hidden_size="400",
                     clip_norm="2") for i, v in enumerate([3.0, 9.0, 5.0])]
    found = from_records(trials, space, "valid_perplexity", lower=False)
    assert found.study.direction == optuna.study.StudyDirection.MAXIMIZE
    assert found.best.value == 9.0 and found.best.user_attrs["versweep.run_id"] == "run01"


def test_without_the_grid_or_the_study_the_figures_span_the_values_the_runs_hold(data):
    lost = dataclasses.replace(data, tracking_uri="http://mlflow.example:5000", grid_text="")
    found = searched_study(lost, lost.trials, METRIC, True)
    assert "the space spans the values they hold" in found.source
    assert "the sweep's grid file was not found" in found.source
    assert {"learning_rate", "keep_prob", "hidden_size", "clip_norm"} <= set(found.params)
    assert search_figures.slice_figure(found) is not None
    matplotlib.pyplot.close("all")


def test_a_run_outside_the_recorded_space_is_left_out_and_said(data):
    space = search_space_of(data.grid_text)
    trials = [_trial(0, 100.0, learning_rate="0.5", keep_prob="0.5", hidden_size="400",
                     clip_norm="2"),
              _trial(1, 90.0, learning_rate="50.0", keep_prob="0.5", hidden_size="400",
                     clip_norm="2")]
    found = from_records(trials, space, METRIC, True)
    assert [t.user_attrs["versweep.run_id"] for t in found.study.trials] == ["run00"]
    [(run, why)] = found.left_out
    assert run.run_id == "run01" and why == "its `learning_rate` (50.0) is not in the search space"
    assert "Not in the study: 1 run(s)" in search_figures.figure_note(found)


def test_optunas_plots_leave_the_reports_other_figures_alone(data):
    # plot_slice and plot_optimization_history switch matplotlib to the ggplot style.
    before = dict(matplotlib.rcParams)
    study = searched_study(data, data.trials, METRIC, True)
    for draw in (search_figures.slice_figure, search_figures.history_figure,
                 search_figures.parallel_figure):
        matplotlib.pyplot.close(draw(study))
    assert dict(matplotlib.rcParams) == before


def test_the_search_space_is_read_back_from_a_sweeps_grid_text_with_its_overrides():
    sweep = load_sweep("hparams", ["search.space.learning_rate.high=5", "search.num_samples=3"])
    assert search_space_of(sweep.text) == sweep.search.space
    assert sweep.search.space[0].high == 5.0
    with pytest.raises(GridError, match="search: missing; the grid is not a search"):
        search_space_of(load_sweep("smoke").text)
    # A user's own workload that is not on this machine: the space is still read.
    own = Path(__file__).parent / "missing-workload.toml"
    text = sweep.text.replace('workload = "ptb_lm"', 'workload = "not_here"')
    assert search_space_of(text, str(own)) == sweep.search.space

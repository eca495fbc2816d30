"""A search sweep's figures: Optuna's own plots of its study, with the best trial marked.

    searched_study   the study to draw: the sweep's optuna.db study with every trial's
                     state taken from its MLflow run, or, where there is no optuna.db (any
                     store but SQLite), a study built from the runs alone
    slice_figure     the objective against each searched parameter, on the search space's
                     scale (a log-uniform parameter on a log axis)
    history_figure   the objective of every trial in the order Optuna asked, and the best so far
    parallel_figure  every finished trial across all searched parameters

The figures are optuna.visualization.matplotlib's (plot_slice, plot_optimization_history,
plot_parallel_coordinate), so they read as Optuna's users know them; each gets a marker for
the search's best trial, and the objective goes on a log scale where it spans more than
plots.LOG_SCALE_SPAN.

Why the states come from the runs: Ray Tune's OptunaSearch tells Optuna a trial ASHA
stopped as COMPLETE, with the objective of the last epoch it ran, so optuna.db holds
stopped trials' part-trained values next to finished ones. Here a trial is COMPLETE only
where its run ended ``ok`` with a finite objective; a stopped one is PRUNED (Optuna's word
for it) and a diverged, failed or unsupported one FAIL. Optuna's plots draw COMPLETE
trials only, so the figures' captions name what they leave out.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import matplotlib
import numpy as np
import optuna
from matplotlib.axis import Axis
from matplotlib.collections import LineCollection
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure
from matplotlib.ticker import (
    FuncFormatter,
    LogLocator,
    MaxNLocator,
    NullFormatter,
)
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from optuna.trial import FrozenTrial, TrialState

from analysis import plots
from analysis.load import SweepData, Trial
from sweeps.errors import GridError
from sweeps.grid.load import search_space_of
from sweeps.grid.spec import Param

# The marker of the search's best trial, the same in every figure.
BEST_COLOUR = "#d62728"
BEST_LABEL = "best trial"

# The user attributes a drawn trial carries: its run and how the run ended.
RUN_ID_ATTR = "versweep.run_id"
STATUS_ATTR = "versweep.status"

# What a run's status is in Optuna's words (ok with a finite objective: COMPLETE).
STATES = {"stopped": TrialState.PRUNED, "diverged": TrialState.FAIL,
          "failed": TrialState.FAIL, "unsupported": TrialState.FAIL}


@dataclass
class SearchStudy:
    """The study the figures draw, and what it holds of the sweep's runs."""

    study: optuna.Study  # in memory: one trial per run of the sweep, numbered in asking order
    metric: str
    lower: bool  # lower objective is better (the search's mode is min)
    source: str  # where the trials and their space came from, in words
    # Runs not in the study, with the reason (another sweep of the report, a value
    # outside the recorded space, ...).
    left_out: list[tuple[Trial, str]] = field(default_factory=list)

    @property
    def complete(self) -> list[FrozenTrial]:
        """The drawn trials: finished, with a finite objective."""
        return [t for t in self.study.trials if t.state == TrialState.COMPLETE
                and t.value is not None and math.isfinite(t.value)]

    @property
    def best(self) -> FrozenTrial | None:
        """The search's best trial (min or max per its mode), or None when none finished."""
        complete = self.complete
        if not complete:
            return None
        pick = min if self.lower else max
        return pick(complete, key=lambda t: cast(float, t.value))

    @property
    def params(self) -> list[str]:
        """The searched parameters the finished trials have, in Optuna's (sorted) order."""
        return sorted({name for t in self.complete for name in t.params})

    def log_objective(self) -> bool:
        """Whether the objective spans more than plots.LOG_SCALE_SPAN (all values positive)."""
        values = [float(t.value) for t in self.complete if t.value is not None]
        return bool(values) and min(values) > 0 and plots.spans_orders_of_magnitude(values)

    def counts(self) -> dict[str, int]:
        """Trials of the study per run status (``ok``, ``stopped``, ...)."""
        found: dict[str, int] = {}
        for trial in self.study.trials:
            status = str(trial.user_attrs.get(STATUS_ATTR, trial.state.name.lower()))
            found[status] = found.get(status, 0) + 1
        return found


# --------------------------------------------------------------------------- the study


def searched_study(data: SweepData, trials: Sequence[Trial], metric: str,
                   lower: bool) -> SearchStudy:
    """The study of the sweep's search, its trials' states taken from their runs.

    optuna.db when the sweep has one (data.study()); else one built from the runs with
    the space the grid's [search] declared (sweeps/grid/load.py reads it); else, where
    the grid is not readable either, a space spanning the values the runs hold. Only the
    runs of the report's newest sweep (data.parent_run_id): a study is one sweep's.
    """
    own = [t for t in trials if not t.sweep_id or t.sweep_id == data.parent_run_id]
    others = [(t, "of another sweep (the figures are of the newest one's search)")
              for t in trials if t.sweep_id and t.sweep_id != data.parent_run_id]
    stored = data.study()
    if stored is not None:
        found = from_stored_study(stored, own, metric, lower)
    else:
        space, why = _recorded_space(data)
        found = from_records(own, space, metric, lower, why=why)
    found.left_out[:0] = others
    return found


def from_stored_study(stored: optuna.Study, trials: Sequence[Trial], metric: str,
                      lower: bool) -> SearchStudy:
    """The trials of a stored study (optuna.db), each with the state of its run.

    A study trial is matched to the run whose params hold the same sampled values. Its
    params, distributions and intermediate values are Optuna's; its state and objective
    are the run's. A study trial without a run (asked, never decided) is not drawn.
    """
    # Runs by their sampled values (in start order, for the rare configs sampled twice).
    runs: dict[tuple, list[Trial]] = {}
    names = sorted({name for asked in stored.trials for name in asked.params})
    for run in sorted(trials, key=lambda t: t.start_time_ms):
        runs.setdefault(tuple(_key(run.params.get(n)) for n in names), []).append(run)
    built: list[FrozenTrial] = []
    for asked in sorted(stored.trials, key=lambda t: t.number):
        same = runs.get(tuple(_key(asked.params.get(n)) for n in names))
        if not same:
            continue  # asked, never decided: no run says how it ended
        run = same.pop(0)
        built.append(_trial(run, metric, dict(asked.params), dict(asked.distributions),
                            dict(asked.intermediate_values)))
    drawn = {t.user_attrs[RUN_ID_ATTR] for t in built}
    study = _in_memory(lower, built)
    return SearchStudy(study, metric, lower, "the sweep's Optuna study (optuna.db), each "
                       "trial's state from its MLflow run",
                       [(t, "not in the sweep's Optuna study") for t in trials
                        if t.run_id not in drawn])


def from_records(trials: Sequence[Trial], space: Sequence[Param] | None, metric: str,
                 lower: bool, *, why: str = "") -> SearchStudy:
    """A study built from the runs alone: their params and objective, in start order.

    ``space`` is the search's declared space (each Param becomes the distribution Optuna
    sampled it from); None: the values the runs hold span each parameter (``why`` says
    why the space is not known, for the caption).
    """
    ordered = sorted(trials, key=lambda t: t.start_time_ms)
    if space is not None:
        distributions = {param.name: distribution(param) for param in space}
        source = "the sweep's MLflow runs, in the space of its grid's [search]"
    else:
        distributions = _spanned(ordered)
        source = ("the sweep's MLflow runs; the space spans the values they hold, on linear "
                  f"axes ({why or 'the grid file is not readable'})")
    built: list[FrozenTrial] = []
    left_out: list[tuple[Trial, str]] = []
    for run in ordered:
        params: dict[str, Any] = {}
        for name, dist in distributions.items():
            value = _value(run.params.get(name), dist)
            if value is None:
                left_out.append((run, f"its `{name}` ({run.params.get(name, 'missing')}) is "
                                      "not in the search space"))
                break
            params[name] = value
        else:
            built.append(_trial(run, metric, params, dict(distributions), {}))
    return SearchStudy(_in_memory(lower, built), metric, lower, source, left_out)


def distribution(param: Param) -> BaseDistribution:
    """The Optuna distribution a grid's search dimension is sampled from (as Ray Tune's
    OptunaSearch converts sweeps/execute/tune.py's search_space)."""
    if param.kind == "choice":
        return CategoricalDistribution(list(param.values))
    assert param.low is not None and param.high is not None, f"{param.name} needs bounds"
    if param.kind == "int":
        return IntDistribution(int(param.low), int(param.high))
    return FloatDistribution(float(param.low), float(param.high),
                             log=param.kind == "loguniform")


def _recorded_space(data: SweepData) -> tuple[tuple[Param, ...] | None, str]:
    """The grid's [search] space (its --set overrides applied), or None and why not."""
    if not data.grid_text:
        return None, "the sweep's grid file was not found"
    try:
        return search_space_of(data.grid_text, "the sweep's grid file"), ""
    except GridError as exc:
        return None, str(exc)


def _spanned(trials: Sequence[Trial]) -> dict[str, BaseDistribution]:
    """A distribution per searched key spanning the values the runs hold."""
    names = sorted({name for t in trials for name in t.params})
    found: dict[str, BaseDistribution] = {}
    for name in names:
        texts = [t.params[name] for t in trials if name in t.params]
        if len(texts) < len(trials) or len(set(texts)) < 2:
            continue  # not searched: every run has the same value, or not every run has it
        numbers = _numbers(texts)
        if numbers is None:
            found[name] = CategoricalDistribution(sorted(set(texts)))
        elif all(n.is_integer() for n in numbers) and all("." not in t for t in texts):
            found[name] = IntDistribution(int(min(numbers)), int(max(numbers)))
        else:
            found[name] = FloatDistribution(min(numbers), max(numbers))
    return found


def _numbers(texts: Sequence[str]) -> list[float] | None:
    try:
        return [float(t) for t in texts]
    except ValueError:
        return None


def _key(value: Any) -> str | None:
    """A sampled value, or a run's param text of it, in one comparable form (MLflow keeps
    params as text: 0.5 -> "0.5", 650 -> "650", True -> "True")."""
    if value is None:
        return None
    if isinstance(value, bool):
        return str(value).lower()
    try:
        return f"{float(value):.12g}"
    except (TypeError, ValueError):
        return str(value).lower()


def _same(value: Any, text: str | None, dist: BaseDistribution) -> bool:
    """Whether a run's param ``text`` is the sampled ``value`` (MLflow keeps params as text)."""
    if text is None:
        return False
    if isinstance(dist, CategoricalDistribution) or isinstance(value, (bool, str)):
        return str(value) == text or str(value).lower() == text.lower()
    try:
        return math.isclose(float(value), float(text), rel_tol=1e-9, abs_tol=0.0)
    except (TypeError, ValueError):
        return False


def _value(text: str | None, dist: BaseDistribution) -> Any:
    """A run's param text as a value of ``dist``, or None when it is not one."""
    if text is None:
        return None
    if isinstance(dist, CategoricalDistribution):
        return next((c for c in dist.choices if _same(c, text, dist)), None)
    try:
        number = float(text)
    except ValueError:
        return None
    value: float | int = number
    if isinstance(dist, IntDistribution):
        if not number.is_integer():
            return None
        value = int(number)
    return value if dist._contains(dist.to_internal_repr(value)) else None


def _trial(run: Trial, metric: str, params: dict[str, Any],
           distributions: dict[str, BaseDistribution],
           intermediate: Mapping[int, float]) -> FrozenTrial:
    objective = run.metrics.get(metric)
    finished = run.status == "ok" and objective is not None and math.isfinite(objective)
    state = TrialState.COMPLETE if finished else STATES.get(run.status, TrialState.FAIL)
    return optuna.trial.create_trial(
        state=state, value=float(cast(float, objective)) if finished else None, params=params,
        distributions=distributions, intermediate_values=dict(intermediate),
        user_attrs={RUN_ID_ATTR: run.run_id, STATUS_ATTR: run.status})


def _in_memory(lower: bool, trials: Sequence[FrozenTrial]) -> optuna.Study:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="minimize" if lower else "maximize")
    study.add_trials(trials)
    return study


# --------------------------------------------------------------------------- the figures


@contextlib.contextmanager
def _optuna_plotting() -> Iterator[None]:
    """Optuna's matplotlib plots, without their side effects on the report's other figures.

    plot_slice and plot_optimization_history switch the process to matplotlib's ggplot
    style (plt.style.use), and every plot warns that it is experimental; both stay in here.
    """
    with matplotlib.rc_context(), warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        # A parameter every finished trial shares gets an axis of no width (Optuna's
        # limits); matplotlib widens it, and says so.
        warnings.filterwarnings("ignore", message="Attempting to set identical",
                                category=UserWarning)
        yield


def _plain_log_ticks(axis: Axis) -> None:
    """Readable ticks on a log axis: plain numbers (0.1, 1, 10) at decades, or at 1-2-5
    within one or two, or at a few round values inside one decade, where matplotlib's own
    would label every minor tick in scientific notation."""
    low, high = sorted(axis.get_view_interval())
    if low <= 0:
        return
    decades = math.log10(high / low)
    if decades >= 2:
        axis.set_major_locator(LogLocator(base=10.0, subs=(1.0,)))
    elif decades >= 0.7:
        axis.set_major_locator(LogLocator(base=10.0, subs=(1.0, 2.0, 5.0)))
    else:
        axis.set_major_locator(MaxNLocator(nbins=4))
    axis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:.3g}"))
    axis.set_minor_formatter(NullFormatter())


def _space_limits(dist: BaseDistribution) -> tuple[float, float] | None:
    """The x range of a numeric parameter's whole search space, with a little room."""
    if not isinstance(dist, (FloatDistribution, IntDistribution)):
        return None
    low, high = float(dist.low), float(dist.high)
    if dist.log:
        room = (math.log10(high) - math.log10(low)) * 0.04
        return 10 ** (math.log10(low) - room), 10 ** (math.log10(high) + room)
    room = (high - low) * 0.04
    return low - room, high + room


def _axes_label(search: SearchStudy) -> str:
    return search.metric + (" (log scale)" if search.log_objective() else "")


def _best_label(search: SearchStudy, best: FrozenTrial) -> str:
    return f"{BEST_LABEL} (#{best.number}: {_short(best.value)})"


def _short(value: float | None) -> str:
    return "?" if value is None else f"{value:.4g}"


def slice_figure(search: SearchStudy) -> Figure | None:
    """plot_slice: the objective against each searched parameter, one panel each, on the
    distribution's scale (log-uniform: a log x axis; a choice: one column per value); the
    colour is the trial's number. None when no trial finished."""
    best, params = search.best, search.params
    if best is None or not params:
        return None
    with _optuna_plotting():
        drawn = optuna.visualization.matplotlib.plot_slice(
            search.study, params=params, target_name=_axes_label(search))
        panels = list(drawn.flat) if hasattr(drawn, "flat") else [drawn]
        figure = cast(Figure, panels[0].figure)
        marker = None
        for axes, name in zip(panels, params, strict=True):
            dist = best.distributions[name]
            x = best.params[name]
            if isinstance(dist, CategoricalDistribution):
                x = repr(x)  # plot_slice puts a choice at repr(value) on a categorical axis
            else:
                # The whole space, not only the part the trials reached: where the search
                # looked is part of the answer.
                limits = _space_limits(dist)
                if limits is not None:
                    axes.set_xlim(*limits)
                if axes.get_xscale() == "log":
                    _plain_log_ticks(axes.xaxis)
            if search.log_objective():
                axes.set_yscale("log")
                _plain_log_ticks(axes.yaxis)
            marker = axes.scatter([x], [cast(float, best.value)], marker="*", s=260,
                                  color=BEST_COLOUR, edgecolors="black", linewidths=0.8,
                                  zorder=5)
        panels[0].set_ylabel(_axes_label(search))
        figure.suptitle(f"Search: {search.metric} against each searched parameter "
                        f"({len(search.complete)} finished trials)")
        figure.set_size_inches(min(plots.MAX_WIDTH_INCHES, 1.5 + 3.2 * len(params)), 4.2)
        # Only the best trial's marker in the legend (plot_slice labels an empty scatter
        # of infeasible trials; a search has no constraints).
        panels[0].legend(cast(list, [marker]), [_best_label(search, best)], loc="upper left",
                         bbox_to_anchor=(0.0, -0.16), fontsize=8, frameon=False)
    return figure


def history_figure(search: SearchStudy) -> Figure | None:
    """plot_optimization_history: every finished trial's objective in the order Optuna
    asked for it, and the best value so far. None when no trial finished."""
    best = search.best
    if best is None:
        return None
    with _optuna_plotting():
        axes = optuna.visualization.matplotlib.plot_optimization_history(
            search.study, target_name=search.metric)
        if search.log_objective():
            axes.set_yscale("log")
            _plain_log_ticks(axes.yaxis)
        # Trials without a final objective have no point in Optuna's plot: a tick on the
        # x axis shows where in the search they came.
        for states, colour, label in ((TrialState.PRUNED, "#888888", "stopped early"),
                                      (TrialState.FAIL, "#444444", "diverged or failed")):
            numbers = [t.number for t in search.study.trials if t.state == states]
            if numbers:
                axes.scatter(numbers, [0.03] * len(numbers), marker="|", s=120, color=colour,
                             transform=axes.get_xaxis_transform(), clip_on=False,
                             label=f"{label} ({len(numbers)}, no final value)")
        axes.set_ylabel(_axes_label(search))
        axes.set_xlabel("trial (in the order Optuna asked for it)")
        axes.set_title(f"Search: {search.metric} per trial, and the best so far")
        axes.scatter([best.number], [cast(float, best.value)], marker="*", s=300, color=BEST_COLOUR,
                     edgecolors="black", linewidths=0.8, zorder=5,
                     label=_best_label(search, best))
        axes.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=8)
        figure = cast(Figure, axes.figure)
        figure.set_size_inches(8.0, 4.2)
    return figure


def parallel_figure(search: SearchStudy) -> Figure | None:
    """plot_parallel_coordinate: one line per finished trial through its objective (first
    axis) and every searched parameter, coloured by the objective; the best trial's line
    is drawn over them. None when no trial finished."""
    best, params = search.best, search.params
    if best is None or not params:
        return None
    log = search.log_objective()
    with _optuna_plotting():
        axes = optuna.visualization.matplotlib.plot_parallel_coordinate(
            search.study, params=params, target_name=_axes_label(search),
            # A log objective is drawn as log10 (the axis is relabelled in its units).
            target=(lambda t: math.log10(cast(float, t.value))) if log else None)
        lines = next(c for c in axes.collections if isinstance(c, LineCollection))
        # Optuna's Blues run to white for the worst trials: start them at a light blue so
        # every line shows on the white background.
        blues = matplotlib.colormaps["Blues"]
        shades = ListedColormap(blues(np.linspace(0.25, 1.0, 256)))
        lines.set_cmap(shades.reversed() if search.lower or log else shades)
        for twin in axes.figure.axes:
            if twin is not axes and twin.get_yscale() == "log":
                _plain_log_ticks(twin.yaxis)
        # One segment per finished trial in trial order: find the best one's by its objective.
        target = math.log10(cast(float, best.value)) if log else cast(float, best.value)
        order = [t.number for t in search.complete]
        segments = lines.get_segments()
        index = order.index(best.number)
        if not math.isclose(segments[index][0][1], cast(float, target), rel_tol=1e-9,
                            abs_tol=1e-12):
            index = min(range(len(segments)), key=lambda i: abs(segments[i][0][1] - target))
        axes.plot(segments[index][:, 0], segments[index][:, 1], color=BEST_COLOUR,
                  linewidth=3.0, zorder=5, label=_best_label(search, best))
        if log:
            units = FuncFormatter(lambda y, _: f"{10 ** y:.4g}")
            axes.yaxis.set_major_formatter(units)
            if lines.colorbar is not None:
                lines.colorbar.formatter = units
                lines.colorbar.update_ticks()
        axes.legend(loc="lower left", bbox_to_anchor=(0.0, 1.06), fontsize=8, frameon=False)
        axes.set_title(f"Search: the {len(search.complete)} finished trials across every "
                       "searched parameter", y=1.14)
        figure = cast(Figure, axes.figure)
        figure.set_size_inches(min(plots.MAX_WIDTH_INCHES, 3.0 + 1.8 * len(params)), 4.6)
    return figure


def not_drawn(search: SearchStudy) -> list[str]:
    """The study's trials without a final objective, counted by how they ended."""
    counts = search.counts()
    words = {"stopped": "stopped early (PRUNED)", "diverged": "diverged (FAIL)",
             "failed": "failed (FAIL)", "unsupported": "unsupported (FAIL)"}
    missing = [f"{n} {words.get(status, status)}" for status, n in sorted(counts.items())
               if status != "ok" and n]
    ok_without = counts.get("ok", 0) - len(search.complete)
    if ok_without > 0:
        missing.append(f"{ok_without} ok without a finite `{search.metric}`")
    return missing


def figure_note(search: SearchStudy) -> str:
    """What the figures draw and leave out, for their captions."""
    missing = not_drawn(search)
    note = (f"Drawn from {search.source}: the {len(search.complete)} trials that finished "
            "(Optuna's COMPLETE).")
    if missing:
        note += (" Left out, as Optuna's plots leave out trials without a final objective: "
                 + ", ".join(missing) + ".")
    if search.left_out:
        note += f" Not in the study: {len(search.left_out)} run(s) ("
        note += "; ".join(sorted({why for _, why in search.left_out})) + ")."
    if search.log_objective():
        note += (f" `{search.metric}` spans more than {plots.LOG_SCALE_SPAN:g}x: it is on a "
                 "log scale.")
    return note

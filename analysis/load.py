"""A sweep as a report needs it, from the records sweeps/records/ writes and reads (DESIGN.md).

    load_sweep_data(uri, "versions")          the newest sweep of experiment "versions"
    load_sweep_data(uri, "versions", "3f2a")  the sweep whose parent run id starts with 3f2a

gives a SweepData: the parent run's tags and one Trial per *decided* child run
(MLflow status FINISHED). Runs that ended KILLED (interrupted, or left by a
driver that died and started again on --resume) and runs tagged
versweep.superseded are not decisions and are left out; so is anything still
RUNNING. Every status a decided trial can have is kept: ok, unsupported,
failed, diverged, stopped. A report must show what did not run, not drop it:
so a grid sweep's plan (trials.json of the parent run) comes with it, and
SweepData.undecided() names the planned trials that have no decided run yet
(an interrupted or still running sweep).

A SQLite store (the embedded default) is read directly and read-only from
MLflow's tables: a handful of queries for the whole sweep, about a second for
5,000 runs where MLflow's search API takes about a minute, and no mlflow import
(seconds by itself). Every other store, and a SQLite file whose schema is not
the one expected, goes through MlflowClient, opened by sweeps.records.store.open_client.
Per-batch samples of runs whose artifacts live on this machine (``file:`` URIs,
the default next to a SQLite store) are read straight from disk; other
artifact stores are downloaded through MLflow in threads.
"""

from __future__ import annotations

import concurrent.futures
import datetime
import difflib
import json
import re
import sqlite3
import tempfile
import tomllib
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sweeps.errors import UserError
from sweeps.paths import MATRIX_PATH
from sweeps.records.layout import check_schema, study_name, trial_name
from sweeps.records.read import (
    ClientReader,
    RunView,
    StoreReader,
    download_text,
    local_artifact_dir,
    local_artifact_file,
    open_reader,
    reading_client,
    shown_uri,
    sqlite_file,
)
from sweeps.versions import version_tuple

SAMPLES_ARTIFACT = "samples.json"
# A grid sweep's plan on its parent run: every trial it meant to decide (sweeps/records/store.py).
PLAN_ARTIFACT = "trials.json"


# Threads that download samples from a remote artifact store at once.
DOWNLOAD_THREADS = 8

# Where a search sweep's Optuna study lives for a SQLite store (sweeps/run.py _study_storage).
OPTUNA_DB_NAME = "optuna.db"

_TORCH_IN_NAME = re.compile(r"torch-(\d+(?:\.\d+)*)")


@dataclass(frozen=True)
class Trial:
    """One decided trial: a child run of the sweep, as a report needs it.

    ``params`` are the resolved worker config (flattened, as text); ``metrics``
    the latest value of each metric (the result figures); ``message`` says why a
    trial did not end ``ok``: the unsupported reason, the worker's error, or the
    driver's message, whichever is there first.
    """

    run_id: str
    name: str
    status: str  # ok, unsupported, failed, diverged, stopped
    workload: str
    image: str
    repeat: int
    trial_key: str
    params: dict[str, str]
    tags: dict[str, str]
    metrics: dict[str, float]
    message: str
    artifact_uri: str = ""
    tracking_uri: str = field(default="", repr=False)
    start_time_ms: int = 0
    sweep_id: str = ""  # the run id of its sweep (parent run)

    def samples(self) -> list[float] | None:
        """The per-batch seconds after warm-up (samples.json), or None when the run has none."""
        return _read_samples(self.tracking_uri, self.run_id, self.artifact_uri)


@dataclass(frozen=True)
class PlannedTrial:
    """One trial of a grid sweep's plan (the parent run's trials.json, written at its start)."""

    key: str  # versweep.trial_key of its runs
    name: str
    workload: str
    image: str
    repeat: int
    sweep_id: str = ""  # the parent run whose plan names it


@dataclass(frozen=True)
class SweepInfo:
    """One sweep (parent run) a report covers."""

    run_id: str
    name: str
    started: datetime.datetime
    status: str  # the parent run's MLflow status: FINISHED, RUNNING, KILLED, FAILED
    counts: dict[str, int]  # decided trials per status
    search: bool


@dataclass
class SweepData:
    """A sweep's parent run and its decided trials."""

    tracking_uri: str
    experiment_id: str
    experiment_name: str
    parent_run_id: str
    parent_run_name: str
    parent_tags: dict[str, str]
    started: datetime.datetime  # the parent run's start, UTC
    trials: list[Trial]
    images: list[str]  # every image of the trials, oldest torch first (see order_images)
    search: bool  # an Optuna search sweep (grid [search]) rather than a grid of trials
    sweep_name: str = ""  # versweep.sweep: the grid's name
    grid_text: str = ""  # the grid file as the parent run keeps it ("" if missing)
    search_metric: str | None = None  # e.g. "valid_perplexity" (search sweeps)
    search_mode: str | None = None  # "min" or "max"
    search_space: tuple[str, ...] = ()  # the config keys the search varied
    parent_status: str = ""  # MLflow status of the parent run: FINISHED, RUNNING, KILLED
    # A grid sweep's plan (trials.json of the parent run); () for a search, or when the
    # parent run has no plan (written before it kept one).
    planned: tuple[PlannedTrial, ...] = ()
    # The trials the sweep meant to decide: a grid's trial count, a search's num_samples
    # (tag versweep.trials_planned); None where the parent run does not say.
    trials_planned: int | None = None
    # Every sweep the report covers, newest first; the first is the one above (parent_*).
    sweeps: tuple[SweepInfo, ...] = ()
    parent_artifact_uri: str = ""  # where the parent run's artifacts are ("" not known)

    def undecided(self) -> list[PlannedTrial]:
        """The planned trials without a decided run: the sweep was interrupted or still runs."""
        decided = {(t.sweep_id, t.trial_key) for t in self.trials}
        return [p for p in self.planned if (p.sweep_id, p.key) not in decided]

    def study(self, storage: str | None = None) -> Any:
        """The search's Optuna study, or None (not a search, or its database is not found).

        ``storage`` is an Optuna RDB URL; by default the optuna.db next to a
        SQLite MLflow store, where sweeps/run.py keeps it. For other stores the
        study lives in the sweep's working directory: pass its URL.
        """
        if not self.search:
            return None
        if storage is None:
            db = sqlite_file(self.tracking_uri)
            if db is None or not (db.parent / OPTUNA_DB_NAME).exists():
                return None
            storage = "sqlite:///" + str(db.parent / OPTUNA_DB_NAME)
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        try:
            return optuna.load_study(study_name=study_name(self.experiment_name,
                                                           self.sweep_name,
                                                           self.parent_run_id),
                                     storage=storage)
        except KeyError:  # no study of this name in that storage
            return None

    def trials_of(self, workload: str) -> list[Trial]:
        """The trials of one workload, in record order."""
        return [t for t in self.trials if t.workload == workload]


# --------------------------------------------------------------------------- loading


def load_sweep_data(tracking_uri: str, experiment: str,
                    sweep: str | Sequence[str] | None = None, *,
                    all_sweeps: bool = False, direct_sqlite: bool = True) -> SweepData:
    """The decided trials of sweeps of ``experiment``: ``sweep`` (a parent run id or a
    unique prefix of one, or several of them), every sweep with ``all_sweeps``, or the
    newest sweep when None.

    Several sweeps make one SweepData: their trials together (each knows its sweep,
    Trial.sweep_id), their plans together, ``sweeps`` listing each; the newest of them
    is the one its parent_* fields describe (whose grid file decides the kind). Sweeps
    of different kinds (a grid and a search) are a UserError: they answer different
    questions.

    A SQLite store is read directly, read-only, from MLflow's tables (one query
    per table instead of MLflow's search API: 5,000 runs in about a second
    instead of a minute, and without importing mlflow); ``direct_sqlite=False``,
    an unfamiliar schema and every other store go through MlflowClient.

    Whether the sweep is a grid or an Optuna search comes from its grid file (an
    artifact of the parent run). When that file cannot be read, the parent run's
    tag ``versweep.sweep_kind`` decides (a search then comes with a UserWarning: its
    metric, mode and searched parameters are taken from its runs), else its plan
    (trials.json: a grid); a sweep with none of them is a UserError, never silently
    a grid.

    Raises UserError (one line, saying what to do) for a store that does not
    exist, an unknown experiment (the nearest name suggested), an experiment
    with no sweep runs, an unknown sweep, a sweep with no decided trial, and a
    sweep whose kind cannot be told (above).
    """
    wanted = [sweep] if isinstance(sweep, str) else list(sweep or [])
    reader = open_reader(tracking_uri, direct_sqlite)
    try:
        return _load(reader, tracking_uri, experiment, wanted, all_sweeps)
    except sqlite3.Error:
        # The file answered the schema check but not a query (locked for longer than
        # the timeout, damaged): MLflow's own reading retries and says what is wrong.
        return _load(ClientReader(tracking_uri), tracking_uri, experiment, wanted, all_sweeps)
    finally:
        reader.close()


def _load(reader: StoreReader, tracking_uri: str, experiment: str, wanted: list[str],
          all_sweeps: bool) -> SweepData:
    found = reader.experiment(experiment)
    if found is None or found[1] == "deleted":
        names = reader.experiment_names()
        near = difflib.get_close_matches(experiment, names, n=1, cutoff=0.5)
        hint = (f"did you mean '{near[0]}'?" if near else
                f"experiments there: {', '.join(names[:10])}" if names else
                "the store holds no experiment yet; run a sweep first")
        state = "is deleted" if found is not None else "does not exist"
        raise UserError(f"MLflow experiment '{experiment}' {state} in {shown_uri(tracking_uri)}; "
                        f"{hint}")
    experiment_id = found[0]
    parents = reader.sweep_parents(experiment_id)
    if not parents:
        raise UserError(f"MLflow experiment '{experiment}' has no sweep runs (no run tagged "
                        "versweep.kind=sweep); was it written by versweep? "
                        "run one with: python sweeps/run.py --grid <grid>")
    parents.sort(key=lambda run: (run.start_time, run.run_id), reverse=True)
    if all_sweeps:
        chosen = list(parents)
    elif wanted:
        chosen = []
        for name in wanted:
            picked = _pick_parent(parents, name, experiment)
            if picked not in chosen:
                chosen.append(picked)
        chosen.sort(key=lambda run: (run.start_time, run.run_id), reverse=True)
    else:
        chosen = parents[:1]
    for run in chosen:
        check_schema(run.tags, f"sweep {run.run_id} of experiment '{experiment}'")
    _same_kind(chosen, experiment)
    children = [run for run in reader.children_of(experiment_id, [p.run_id for p in chosen])
                if run.tags.get("versweep.superseded", "").lower() != "true"]
    with_children = {run.tags.get("mlflow.parentRunId", "") for run in children}
    # The newest chosen sweep with a decided trial speaks for them all (grid file, kind).
    parent = next((p for p in chosen if p.run_id in with_children), chosen[0])
    if not children:
        others = [p for p in parents if p not in chosen]
        hint = (f"; an earlier sweep: --sweep {others[0].run_id} "
                f"({_started(others[0]):%Y-%m-%d %H:%M}Z)" if others else "")
        which = (f"sweep {parent.run_id} ('{parent.name}')" if len(chosen) == 1 else
                 f"none of the {len(chosen)} chosen sweeps")
        raise UserError(
            f"{which} of experiment '{experiment}' has "
            f"no finished trial runs (it is {parent.status.lower()}: still running, or "
            f"interrupted before any trial was decided){hint}")
    children.sort(key=lambda run: (run.start_time, run.run_id))
    trials = [_trial(run, tracking_uri) for run in children]
    grid_text, unreadable = _grid_text(tracking_uri, parent)
    grid = _parse_grid(grid_text)
    if grid_text and not grid:
        unreadable = "it is not valid TOML"
    search_table = grid.get("search") if isinstance(grid.get("search"), dict) else None
    space = search_table.get("space") if search_table else None
    if unreadable:
        search = _kind_without_grid(tracking_uri, parent, experiment, unreadable)
        grid_text = ""
    else:
        search = search_table is not None
    infos = tuple(_sweep_info(p, [t for t in trials if t.sweep_id == p.run_id], search)
                  for p in [parent, *(p for p in chosen if p is not parent)])
    plans = () if search else tuple(planned for p in chosen
                                    for planned in _plan(tracking_uri, p))
    planned_counts = [p.tags.get("versweep.trials_planned", "") for p in chosen]
    return SweepData(
        tracking_uri=tracking_uri,
        experiment_id=experiment_id,
        experiment_name=experiment,
        parent_run_id=parent.run_id,
        parent_run_name=parent.name,
        parent_tags=dict(parent.tags),
        started=_started(parent),
        trials=trials,
        images=order_images({t.image for t in trials},
                            {t.image: t.tags.get("versweep.torch", "") for t in trials}),
        search=search,
        sweep_name=parent.tags.get("versweep.sweep", experiment),
        grid_text=grid_text,
        search_metric=str(search_table.get("metric")) if search_table and
        search_table.get("metric") else None,
        search_mode=str(search_table.get("mode", "min")) if search_table else None,
        search_space=tuple(space) if isinstance(space, dict) else (),
        parent_status=next((p.status for p in chosen if p.status != "FINISHED"),
                           parent.status),
        planned=plans,
        trials_planned=(sum(int(n) for n in planned_counts)
                        if all(n.isdigit() for n in planned_counts) else None),
        sweeps=infos,
        parent_artifact_uri=parent.artifact_uri,
    )


def _sweep_kind(run: RunView) -> str:
    return run.tags.get("versweep.sweep_kind", "")


def _same_kind(chosen: Sequence[RunView], experiment: str) -> None:
    """UserError where the chosen sweeps mix grids and searches (their parent runs say)."""
    kinds = {_sweep_kind(run): run for run in chosen if _sweep_kind(run)}
    if len(kinds) > 1:
        grid, search = kinds.get("grid"), kinds.get("search")
        raise UserError(f"sweeps of experiment '{experiment}' of two kinds cannot share a "
                        f"report: {grid.run_id if grid else '?'} is a grid, "
                        f"{search.run_id if search else '?'} an Optuna search; report them "
                        "one kind at a time (--sweep ID ...)")


def _sweep_info(run: RunView, trials: Sequence[Trial], search: bool) -> SweepInfo:
    counts: dict[str, int] = {}
    for trial in trials:
        counts[trial.status] = counts.get(trial.status, 0) + 1
    return SweepInfo(run_id=run.run_id, name=run.name, started=_started(run),
                     status=run.status, counts=counts,
                     search=_sweep_kind(run) == "search" if _sweep_kind(run) else search)


def _started(run: RunView) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(run.start_time / 1000.0, tz=datetime.UTC)


def _pick_parent(parents: list[RunView], sweep: str | None, experiment: str) -> RunView:
    """The parent run named by ``sweep`` (an id or unique prefix), or the newest (parents[0])."""
    if sweep is None:
        return parents[0]
    wanted = sweep.strip().lower()
    exact = [p for p in parents if p.run_id == wanted]
    if exact:
        return exact[0]
    prefixed = [p for p in parents if p.run_id.startswith(wanted)] if wanted else []
    if len(prefixed) == 1:
        return prefixed[0]
    listed = ", ".join(f"{p.run_id} ({_started(p):%Y-%m-%d %H:%M}Z)" for p in parents[:5])
    if len(prefixed) > 1:
        raise UserError(f"--sweep '{sweep}' matches {len(prefixed)} sweeps of experiment "
                        f"'{experiment}'; give more of the run id: {listed}")
    more = f" and {len(parents) - 5} more" if len(parents) > 5 else ""
    raise UserError(f"experiment '{experiment}' has no sweep '{sweep}'; its sweeps, newest "
                    f"first: {listed}{more}")


def _trial(run: RunView, tracking_uri: str) -> Trial:
    tags = run.tags
    repeat = tags.get("versweep.repeat", "0")
    message = next((tags[key] for key in ("versweep.reason", "versweep.error",
                                          "versweep.message") if tags.get(key)), "")
    return Trial(
        run_id=run.run_id,
        name=trial_name(run.name, tags.get("mlflow.parentRunId", "")),
        status=tags.get("versweep.status", "ok"),
        workload=tags.get("versweep.workload", ""),
        image=tags.get("versweep.image", ""),
        repeat=int(repeat) if repeat.isdigit() else 0,
        trial_key=tags.get("versweep.trial_key", ""),
        params=run.params,
        tags=tags,
        metrics=run.metrics,
        message=message,
        artifact_uri=run.artifact_uri,
        tracking_uri=tracking_uri,
        start_time_ms=run.start_time,
        sweep_id=tags.get("mlflow.parentRunId", ""),
    )


# --------------------------------------------------------------------------- store readers


def _grid_text(tracking_uri: str, parent: RunView) -> tuple[str, str]:
    """(the grid file the parent run keeps as an artifact, "") or ("", why it cannot be read)."""
    grid_path = parent.tags.get("versweep.grid_path", "")
    name = Path(grid_path).name if grid_path else ""
    local = local_artifact_dir(parent.artifact_uri)
    if local is not None:
        candidates = [local / name] if name else []
        candidates += sorted(local.glob("*.toml"))
        for path in candidates:
            if path.is_file():
                try:
                    return path.read_text(errors="replace"), ""
                except OSError as exc:
                    return "", f"{path}: {exc.strerror or exc}"
        return "", f"it is not in {local}"
    try:
        client = reading_client(tracking_uri)
        names = [name] if name else [f.path for f in client.list_artifacts(parent.run_id)
                                     if f.path.endswith(".toml")][:1]
        if not names:
            return "", "the parent run has no .toml artifact"
        return download_text(client, parent.run_id, names[0]), ""
    except Exception as exc:  # noqa: BLE001  (MLflow raises several types for "no artifact")
        return "", f"{type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[0]}"


def _kind_without_grid(tracking_uri: str, parent: RunView, experiment: str, why: str) -> bool:
    """Whether a sweep whose grid file cannot be read (``why``) is a search; or UserError.

    A report must not quietly turn a search into a grid report. The parent run's tag
    ``versweep.sweep_kind`` (sweeps/records/store.py) says which it is: a search is reported
    as one, with a warning that its metric, mode and searched parameters are taken from
    its runs (the grid file named them). A parent run without the tag (recorded before
    it existed) that keeps a grid's plan (trials.json) is a grid. With neither, nothing
    says what the sweep is: a UserError naming the sweep and why its grid is unreadable.
    """
    name = Path(parent.tags.get("versweep.grid_path", "")).name or "*.toml"
    said = f"its grid file ({name}) could not be read ({why})"
    kind = parent.tags.get("versweep.sweep_kind", "")
    if kind == "search":
        warnings.warn(f"sweep {parent.run_id} of experiment '{experiment}': {said}; it is a "
                      "search (tag versweep.sweep_kind), so its metric, mode and searched "
                      "parameters are taken from its runs", UserWarning, stacklevel=4)
        return True
    if kind == "grid" or _plan(tracking_uri, parent):
        return False  # a grid report needs nothing of the grid file
    raise UserError(f"cannot tell whether sweep {parent.run_id} of experiment '{experiment}' "
                    f"is a grid or an Optuna search: {said} and its parent run has neither a "
                    "versweep.sweep_kind tag nor a plan (trials.json); restore the grid file "
                    f"as an artifact of run {parent.run_id}, or tag the run "
                    "versweep.sweep_kind=grid or =search in the MLflow UI")


def _plan(tracking_uri: str, parent: RunView) -> tuple[PlannedTrial, ...]:
    """The grid sweep's plan: trials.json of the parent run (sweeps/records/store.py open_sweep).

    () when the parent run has none (a search, or a sweep recorded before plans were
    kept) or it cannot be read: the report then knows only the decided trials.
    """
    local = local_artifact_dir(parent.artifact_uri)
    try:
        if local is not None:
            path = local / PLAN_ARTIFACT
            text = path.read_text(errors="replace") if path.is_file() else ""
        else:
            text = download_text(reading_client(tracking_uri), parent.run_id, PLAN_ARTIFACT)
        entries = json.loads(text) if text else []
        return tuple(PlannedTrial(key=str(e["key"]), name=str(e.get("name", e["key"])),
                                  workload=str(e.get("workload", "")),
                                  image=str(e.get("image", "")),
                                  repeat=int(e.get("repeat", 0)), sweep_id=parent.run_id)
                     for e in entries if isinstance(e, dict) and e.get("key"))
    except Exception:  # noqa: BLE001  (no plan only costs the list of undecided trials)
        return ()


def _parse_grid(text: str) -> dict:
    """The grid a sweep ran: its file, with the --set overrides it lists re-applied (a
    search's metric, mode and space may come from them); {} where it is not valid TOML."""
    try:
        document = tomllib.loads(text) if text else {}
    except tomllib.TOMLDecodeError:
        return {}
    from sweeps.grid.load import apply_overrides, recorded_overrides  # torch-free

    try:
        apply_overrides(document, recorded_overrides(text), "the sweep's grid file")
    except UserError:
        pass  # overrides this versweep cannot apply: the file as written
    return document


# --------------------------------------------------------------------------- image order


def _matrix_order() -> dict[str, tuple[int, tuple[int, ...]]]:
    """Image name -> (position in images/matrix.toml, torch version); {} if unreadable."""
    try:
        from sweeps.grid.matrix import load_matrix

        matrix = load_matrix(MATRIX_PATH)
    except Exception:  # noqa: BLE001  (no matrix: order by torch version alone)
        return {}
    return {name: (i, version_tuple(image.torch)) for i, name in enumerate(matrix)
            for image in [matrix[name]]}


def order_images(images: set[str] | Sequence[str], torch_of: dict[str, str]) -> list[str]:
    """Images oldest torch first: by torch version (the matrix's, else the run's torch tag,
    else the version in the name), then by position in images/matrix.toml, then by name."""
    matrix = _matrix_order()

    def key(name: str) -> tuple:
        position, version = matrix.get(name, (len(matrix), ()))
        if not version:
            version = version_tuple(torch_of.get(name, ""))
        if not version:
            in_name = _TORCH_IN_NAME.search(name)
            version = version_tuple(in_name.group(1)) if in_name else ()
        return (version == (), version, position, name)

    return sorted(set(images), key=key)


# --------------------------------------------------------------------------- samples, history


# samples.json's units (sweeps/records/store.py, layout 3) -> seconds.
_SAMPLE_UNITS = {"s": 1.0, "ms": 1e-3, "us": 1e-6}


def _parse_samples(text: str | bytes) -> list[float] | None:
    """Per-batch seconds from samples.json: an object with its unit (layout 3) or a bare
    list of seconds (layouts 1 and 2); None for anything else."""
    try:
        values = json.loads(text)
    except ValueError:
        return None
    if isinstance(values, dict):
        scale = _SAMPLE_UNITS.get(values.get("unit", "s"))
        values = values.get("values")
        if scale is None or not isinstance(values, list):
            return None
        if scale != 1.0:
            values = [v * scale for v in values
                      if isinstance(v, (int, float)) and not isinstance(v, bool)]
    if not isinstance(values, list):
        return None
    if set(map(type, values)) == {float}:  # what records.py writes: the fast case
        return values
    return [float(v) for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]


def _read_samples(tracking_uri: str, run_id: str, artifact_uri: str) -> list[float] | None:
    local = local_artifact_dir(artifact_uri)
    if local is not None:
        try:
            return _parse_samples((local / SAMPLES_ARTIFACT).read_text())
        except FileNotFoundError:
            return None
    try:
        with tempfile.TemporaryDirectory() as scratch:
            client = reading_client(tracking_uri)
            path = client.download_artifacts(run_id, SAMPLES_ARTIFACT, scratch)
            return _parse_samples(Path(path).read_text())
    except Exception:  # noqa: BLE001  (MLflow raises several types for "no such artifact")
        return None


def samples_file(trial: Trial) -> str | None:
    """Where the trial's samples.json is on this machine; None when its artifacts are in a
    remote store (then load_samples downloads it through MLflow)."""
    return local_artifact_file(trial.artifact_uri, SAMPLES_ARTIFACT)


def read_samples_file(path: str) -> list[float] | None:
    """The per-batch seconds in a local samples.json; None when there is none, or it holds
    no samples."""
    try:
        with open(path, "rb") as handle:
            return _parse_samples(handle.read())
    except FileNotFoundError:
        return None


def load_samples(trials: Sequence[Trial]) -> dict[str, list[float]]:
    """run_id -> per-batch seconds for every trial that has a samples.json.

    Local (``file:``) artifacts are read straight from disk; the rest are
    downloaded through MLflow, DOWNLOAD_THREADS at a time. Trials without
    samples are absent from the result.
    """
    found: dict[str, list[float]] = {}
    remote = []
    for trial in trials:
        path = samples_file(trial)
        if path is None:
            remote.append(trial)
            continue
        values = read_samples_file(path)
        if values is not None:
            found[trial.run_id] = values
    if remote:
        with concurrent.futures.ThreadPoolExecutor(max_workers=DOWNLOAD_THREADS) as pool:
            for trial, values in zip(remote, pool.map(Trial.samples, remote), strict=True):
                if values is not None:
                    found[trial.run_id] = values
    return found


def metric_histories(tracking_uri: str, run_ids: Sequence[str],
                     key: str) -> dict[str, list[tuple[int, float]]]:
    """run id -> [(step, value)] of one metric (e.g. valid_perplexity), for learning curves.

    One value per step, the last one logged: records.py logs a result figure
    that is also a step metric (words_per_second) at the last step again. A SQLite
    store answers in one query; others through MLflow, several runs at a time.
    """
    reader = open_reader(tracking_uri)
    try:
        raw = reader.histories(list(run_ids), key)
    except sqlite3.Error:  # as in load_sweep_data: let MLflow read it
        raw = ClientReader(tracking_uri).histories(list(run_ids), key)
    finally:
        reader.close()
    curves = {}
    for run_id, points in raw.items():
        by_step: dict[int, float] = {}
        # Oldest first (a stable sort keeps logging order for equal stamps): the last wins.
        for _, step, value in sorted(points, key=lambda point: point[0]):
            by_step[step] = float(value)
        curves[run_id] = sorted(by_step.items())
    return curves


def metric_history(tracking_uri: str, run_id: str, key: str) -> list[tuple[int, float]]:
    """(step, value) of one metric of one run, by step (see metric_histories)."""
    return metric_histories(tracking_uri, [run_id], key)[run_id]


__all__ = ["SweepData", "SweepInfo", "Trial", "load_samples", "load_sweep_data", "metric_histories",
           "metric_history", "order_images", "read_samples_file", "samples_file", "study_name"]

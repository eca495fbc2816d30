"""MLflow records of a sweep: one parent run per sweep, one child run per trial.

This is the only module of versweep that imports mlflow, so the layout of
DESIGN.md ("MLflow layout") lives here and nowhere else:

    experiment  <grid name, or --experiment>      every run: versweep.schema (layout.py)
    └── parent run  "<sweep> <UTC time>"   tags versweep.kind=sweep, versweep.sweep,
        │                                   versweep.sweep_kind (grid | search),
        │                                   versweep.grid_sha256, versweep.backend,
        │                                   versweep.summary.*, versweep.best.*
        │                                   artifact: the grid file
        └── child run  "<TrialSpec.name>"  tags mlflow.parentRunId, versweep.trial_key,
                                           versweep.status, versweep.env.*, ...
                                           params: the resolved worker config, flattened
                                           metrics: every `metric` event at its step,
                                                    the `result` metrics
                                           artifacts: worker.log, samples.json

Everything goes through ``MlflowClient`` with explicit run ids, never through
``mlflow.start_run``'s process-global active run, because one process may
drive several trials and many processes (Ray trial actors) write at once.

SQLite, measured with mlflow 3.17 (see benchmarks/records_sqlite_concurrency.py
and docs/bench/records_sqlite_concurrency.txt):

* Steady-state concurrent writers are safe: mlflow sets ``PRAGMA busy_timeout =
  20000`` on every session, so writers queue on the database lock instead of
  failing. 1 to 8 writer processes, one write per step: no errors, but single
  writes waited up to 5 s on a busy 2-core machine. A lock held past the 20 s
  makes a plain MlflowClient write fail with "database is locked"; the bounded
  retry below (``retrying``) rides it out, and a failed SQLite write is rolled
  back whole, so repeating it records nothing twice.
* The first open of a *fresh* database is not safe: ``SqlAlchemyStore``
  creates the tables and runs the alembic migrations without a lock, and 4
  processes doing it at once failed in 9-10 of 12 opens ("table ... already
  exists", "Online migration expected to match one row") and once left the
  file permanently unusable. So every process opens a SQLite store under an
  exclusive file lock (0 of 12 failed).
"""

from __future__ import annotations

import contextlib
import datetime
import functools
import hashlib
import json
import logging
import math
import os
import re
import shlex
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import unquote, urlparse

from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunStatus, RunTag, ViewType
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import (
    RESOURCE_ALREADY_EXISTS,
    TEMPORARILY_UNAVAILABLE,
    ErrorCode,
)

from sweeps.errors import UserError
from sweeps.grid.spec import TRIAL_ORDER, Sweep, TrialSpec
from sweeps.records.layout import SCHEMA_TAG, SCHEMA_VERSION, check_schema, sweep_suffix
from sweeps.status import Status

_log = logging.getLogger(__name__)

T = TypeVar("T")

# MLflow's own limits (mlflow.utils.validation); values beyond them are rejected
# with an exception, so we cut them ourselves and say so in the value.
MAX_PARAM_VALUE_LENGTH = 6000
MAX_TAG_VALUE_LENGTH = 8000
MAX_KEY_LENGTH = 250
MAX_RUN_NAME_LENGTH = 250
TRUNCATED_MARKER = "...[truncated]"
# MLflow's own tags: an experiment's kind (MLflow 3 opens one without a kind on its GenAI
# overview; this kind gives the runs table) and the description of an experiment or run.
EXPERIMENT_KIND_TAG, EXPERIMENT_KIND = "mlflow.experimentKind", "custom_model_development"
NOTE_TAG = "mlflow.note.content"

# Metric names MLflow accepts: letters, digits, and _ - . space / (no "..", no leading "/").
_BAD_METRIC_CHARACTERS = re.compile(r"[^A-Za-z0-9_\-. /]")

# Buffered step metrics are written when this many are waiting or this long has
# passed since the last write, whichever comes first: a benchmark that reports a
# chunk every few milliseconds costs a handful of round trips, while a language
# model's epoch (minutes apart) still appears in the UI as soon as it ends.
# A process killed without finish_trial loses at most the last second of steps;
# call flush() before acting on a step (e.g. before tune.report under ASHA) to lose none.
METRIC_FLUSH_COUNT = 500
METRIC_FLUSH_SECONDS = 1.0

# Retries when the store says "temporarily unavailable" (SQLite: database is locked
# beyond mlflow's 20 s busy timeout; a server: 503). Each waits longer than the last.
STORE_RETRIES = 5
STORE_RETRY_FIRST_WAIT_S = 0.5

# Where a SQLite store's artifacts go: next to the database, one folder per experiment.
ARTIFACTS_DIR_NAME = "mlartifacts"

# Schemes MLflow has tracking stores for (the part before any "+dialect").
_KNOWN_SCHEMES = ("sqlite", "file", "http", "https", "postgresql", "mysql", "mssql",
                  "databricks", "databricks-uc", "uc")

# Fields of the env event copied to short top-level tags, for the UI's run table.
_ENV_SHORTCUTS = ("torch", "cuda", "cudnn", "gpu", "host", "python", "device")


# --------------------------------------------------------------------------- tracking URIs


def default_tracking_uri(cwd: Path) -> str:
    """The embedded default store: ``sqlite:///<cwd>/mlflow.db`` with an absolute path."""
    return _sqlite_uri(Path(cwd) / "mlflow.db")


def resolve_tracking_uri(cli_value: str | None, cwd: Path) -> str:
    """The store a sweep records into: ``--tracking-uri``, else MLFLOW_TRACKING_URI, else default.

    Relative SQLite paths and bare paths are made absolute against ``cwd`` here,
    once, because Ray runs trials in other working directories and a relative
    ``sqlite:///mlflow.db`` would silently become a different database there.
    """
    if cli_value:
        return _normalise_uri(cli_value, Path(cwd), "--tracking-uri")
    from_env = os.environ.get("MLFLOW_TRACKING_URI")
    if from_env:
        return _normalise_uri(from_env, Path(cwd), "MLFLOW_TRACKING_URI")
    return default_tracking_uri(Path(cwd))


def _sqlite_uri(path: Path) -> str:
    # An absolute POSIX path starts with "/", so this gives the four slashes of sqlite:////abs.
    return "sqlite:///" + str(Path(path).expanduser().resolve())


def _normalise_uri(value: str, cwd: Path, source: str) -> str:
    value = value.strip()
    if "://" not in value and ":" not in value.split("/", 1)[0]:
        # A bare path: a SQLite file if it looks like one, else MLflow's file store.
        path = Path(value).expanduser()
        path = path if path.is_absolute() else cwd / path
        if path.suffix in (".db", ".sqlite", ".sqlite3"):
            return _sqlite_uri(path)
        return path.resolve().as_uri()
    scheme = value.split(":", 1)[0].lower()
    if scheme.split("+", 1)[0] not in _KNOWN_SCHEMES:
        raise UserError(
            f"{source} '{value}': unknown scheme '{scheme}'; use sqlite:///path/to/mlflow.db, "
            "http://host:port of an mlflow server, or a database URI MLflow supports"
        )
    if scheme == "sqlite":
        rest = value[len("sqlite:///"):] if value.startswith("sqlite:///") else ""
        if not rest or rest == ":memory:":
            raise UserError(
                f"{source} '{value}': an in-memory SQLite store forgets every record when the "
                "process ends and trials run in other processes; name a file, "
                "e.g. sqlite:///mlflow.db"
            )
        path = Path(unquote(rest))
        return _sqlite_uri(path if path.is_absolute() else cwd / path)
    return value


def sqlite_path(tracking_uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI; None for any other store."""
    if not tracking_uri.startswith("sqlite:///"):
        return None
    return Path(unquote(tracking_uri[len("sqlite:///"):]))


def artifact_root(tracking_uri: str) -> Path | None:
    """Where a SQLite store's artifacts go (``<db dir>/mlartifacts``); None for other stores."""
    db = sqlite_path(tracking_uri)
    return db.parent / ARTIFACTS_DIR_NAME if db is not None else None


def records_location(tracking_uri: str) -> str:
    """One line saying where the records of a sweep are, for the end of a run."""
    db = sqlite_path(tracking_uri)
    if db is not None:
        return f"MLflow records: {db} (SQLite), artifacts under {artifact_root(tracking_uri)}"
    scheme = urlparse(tracking_uri).scheme
    if scheme in ("http", "https"):
        return f"MLflow records: tracking server {tracking_uri}"
    if scheme == "file":
        return f"MLflow records: file store {unquote(urlparse(tracking_uri).path)}"
    return f"MLflow records: {_without_password(tracking_uri)}"


def mlflow_ui_command(tracking_uri: str) -> str:
    """What a user runs (or opens) to see the records in the MLflow UI."""
    scheme = urlparse(tracking_uri).scheme
    if scheme in ("http", "https"):
        return f"open {tracking_uri}"
    if scheme.startswith("databricks") or scheme == "uc":
        return "open the experiment in your Databricks workspace"
    return f"mlflow ui --backend-store-uri {shlex.quote(tracking_uri)}"


def _without_password(uri: str) -> str:
    return re.sub(r"//([^:/@]+):[^@/]*@", r"//\1:***@", uri)


# --------------------------------------------------------------------------- small helpers


def flatten(config: dict[str, Any], prefix: str = "", *, lists: bool = True) -> dict[str, Any]:
    """Nested dicts (and lists) become dotted keys: {"a": {"b": 1}, "c": [2]} -> a.b, c.0.

    With ``lists=False`` a list stays one value (e.g. the GPU architectures of an env event).
    """
    flat: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flatten(value, name + ".", lists=lists))
        elif lists and isinstance(value, (list, tuple)) and value:
            flat.update(flatten({str(i): v for i, v in enumerate(value)}, name + ".",
                                lists=lists))
        else:
            flat[name] = value
    return flat


def text_value(value: Any) -> str:
    """A param or tag value as text: strings as they are, everything else as JSON."""
    if isinstance(value, str):
        return value
    try:
        return json.dumps(value, sort_keys=True, allow_nan=True)
    except (TypeError, ValueError):
        return str(value)


def truncate(text: str, limit: int, *, keep: str = "head") -> str:
    """Cut ``text`` to ``limit`` characters with a visible marker; keep="tail" keeps the end."""
    if len(text) <= limit:
        return text
    room = limit - len(TRUNCATED_MARKER)
    if keep == "tail":
        return TRUNCATED_MARKER + text[len(text) - room:]
    return text[:room] + TRUNCATED_MARKER


def _key(name: str) -> str:
    return truncate(name, MAX_KEY_LENGTH)


def _metric_name(name: str) -> str:
    cleaned = _BAD_METRIC_CHARACTERS.sub("_", str(name)).lstrip("/").replace("..", "_.")
    return _key(cleaned or "_")


def _finite(value: Any) -> float | None:
    """The value as a float if it is a finite number, else None (MLflow cannot plot it)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _now_ms() -> int:
    return int(time.time() * 1000)


def _error_code(error: MlflowException) -> str:
    code = getattr(error, "error_code", None)
    if isinstance(code, int):
        return ErrorCode.Name(code)
    return str(code)


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


def retrying(call: Callable[[], T], what: str) -> T:
    """Run one store call, again after a pause while the store is temporarily unavailable.

    A failed SQLite write is rolled back as a whole, so repeating it cannot
    record anything twice.
    """
    wait = STORE_RETRY_FIRST_WAIT_S
    for attempt in range(STORE_RETRIES + 1):
        try:
            return call()
        except MlflowException as error:
            transient = (_error_code(error) == ErrorCode.Name(TEMPORARILY_UNAVAILABLE)
                         or "database is locked" in str(error))
            if not transient or attempt == STORE_RETRIES:
                raise
            _log.warning("MLflow store busy during %s (%s); retrying in %.1f s",
                         what, _first_line(error), wait)
            time.sleep(wait)
            wait *= 2
    raise AssertionError("unreachable")


@contextlib.contextmanager
def _sqlite_open_lock(db: Path) -> Iterator[None]:
    """Hold an exclusive lock while this process opens (and maybe creates) a SQLite store.

    The lock file lives in the temporary directory, keyed by the database path,
    so it serialises every process on this machine without littering the
    user's directory.
    """
    try:
        import fcntl
    except ImportError:  # Windows: no flock; concurrent first opens stay unprotected
        yield
        return
    digest = hashlib.sha256(str(db).encode("utf-8")).hexdigest()[:16]
    lock_path = Path(tempfile.gettempdir()) / f"versweep-mlflow-{digest}.lock"
    with open(lock_path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def open_client(tracking_uri: str) -> MlflowClient:
    """An MlflowClient whose store is opened now, safely, with one-line errors.

    MLflow opens stores lazily; opening it here (under a lock for SQLite) means a
    missing server or an outdated database shows up as one clear UserError at
    the start of a sweep instead of a traceback in the middle of a trial.
    """
    db = sqlite_path(tracking_uri)
    try:
        if db is not None:
            db.parent.mkdir(parents=True, exist_ok=True)
            # MlflowClient opens the store (and creates a new database's tables) right here.
            with _sqlite_open_lock(db):
                client = MlflowClient(tracking_uri=tracking_uri)
                client.search_experiments(max_results=1)
        else:
            if urlparse(tracking_uri).scheme in ("http", "https"):
                _check_reachable(tracking_uri)
            client = MlflowClient(tracking_uri=tracking_uri)
            retrying(lambda: client.search_experiments(max_results=1), "opening the store")
    except MlflowException as error:
        raise UserError(f"MLflow store {_without_password(tracking_uri)}: "
                        f"{_first_line(error)}") from None
    except OSError as error:
        raise UserError(f"MLflow store {_without_password(tracking_uri)}: {error}") from None
    return client


def _check_reachable(server_uri: str) -> None:
    """Fail in seconds, not minutes, when nothing listens at a tracking server's address.

    MLflow's HTTP client retries a refused connection with back-off for about two
    minutes; a mistyped port deserves a quicker answer. Any HTTP answer at all
    (even 401 or 404 from a proxy) means something is there, and MLflow decides.
    """
    try:
        with urllib.request.urlopen(server_uri.rstrip("/") + "/health", timeout=10):
            pass
    except urllib.error.HTTPError:
        pass
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        raise UserError(
            f"cannot reach the MLflow tracking server at {_without_password(server_uri)} "
            f"({reason}); start one with `mlflow server --host 127.0.0.1 --port N` "
            "or check --tracking-uri / MLFLOW_TRACKING_URI"
        ) from None


# --------------------------------------------------------------------------- the records


class SweepRecords:
    """Writes and reads one experiment's sweeps in an MLflow tracking store.

    One object per process: the driver opens and closes the sweep, each trial
    process starts, feeds and finishes its own child runs. Every method takes
    explicit run ids, so any number of objects may write to the same store.
    """

    def __init__(self, tracking_uri: str, experiment: str):
        self.tracking_uri = tracking_uri
        self.experiment = experiment
        self.client = open_client(tracking_uri)
        self._experiment_of_parent: dict[str, str] = {}
        # Per child run: step metrics waiting to be written, and what the result said.
        self._pending: dict[str, list[Metric]] = {}
        self._last_flush: dict[str, float] = {}
        self._last_step: dict[str, int] = {}
        self._result_samples: dict[str, list[float]] = {}

    def __reduce__(self):
        # Sent to another process (a Ray trial actor), it opens the store again there,
        # under the SQLite lock, instead of carrying this process's connections.
        return (SweepRecords, (self.tracking_uri, self.experiment))

    # ----------------------------------------------------------------- experiment

    def experiment_id(self, *, create: bool) -> str | None:
        """The experiment's id; created (with a predictable artifact folder) if ``create``."""
        found = retrying(lambda: self.client.get_experiment_by_name(self.experiment),
                          "looking up the experiment")
        if found is not None:
            if found.lifecycle_stage == "deleted":
                raise UserError(
                    f"MLflow experiment '{self.experiment}' is deleted in "
                    f"{_without_password(self.tracking_uri)}; restore it with "
                    f"`mlflow experiments restore --experiment-id {found.experiment_id}` "
                    "or choose another name with --experiment"
                )
            return found.experiment_id
        if not create:
            return None
        location = None
        root = artifact_root(self.tracking_uri)
        if root is not None:
            # MLflow's own default for SQLite is ./mlruns of whichever process
            # creates the experiment; next to the database is where people look.
            slug = re.sub(r"[^A-Za-z0-9._-]+", "_", self.experiment).strip("._") or "experiment"
            location = (root / slug).as_uri()
        try:
            return retrying(
                lambda: self.client.create_experiment(self.experiment,
                                                      artifact_location=location),
                "creating the experiment")
        except MlflowException as error:
            if _error_code(error) != ErrorCode.Name(RESOURCE_ALREADY_EXISTS):
                raise
            # Another process created it between our lookup and our create.
            return self.experiment_id(create=False)

    # ----------------------------------------------------------------- the sweep

    def open_sweep(self, sweep: Sweep, *, resume: bool) -> str:
        """The parent run id of this sweep: a new parent run, or with ``resume`` the last one.

        Resuming picks the newest parent run of this sweep name in the
        experiment, preferring one that did not finish, and marks it running
        again. With nothing to resume it raises a UserError.
        """
        if resume:
            return self._reopen_sweep(sweep)
        experiment_id = self.experiment_id(create=True)
        assert experiment_id is not None, "experiment_id(create=True) returns an id"
        self._describe_experiment(experiment_id, sweep)
        started = datetime.datetime.now(datetime.UTC)
        tags = {
            SCHEMA_TAG: str(SCHEMA_VERSION),
            "versweep.kind": "sweep",
            "versweep.sweep": sweep.name,
            "versweep.grid_sha256": grid_sha256(sweep),
            "versweep.grid_path": str(sweep.path),
            "versweep.backend": sweep.backend,
            "versweep.device": sweep.device,
            # What the sweep is, for a reader that cannot read the grid file (a report).
            "versweep.sweep_kind": "grid" if sweep.search is None else "search",
            "versweep.trial_order": TRIAL_ORDER if sweep.search is None else "sampled",
            "versweep.trials_planned": str(len(sweep.trials)) if sweep.search is None
            else str(sweep.search.num_samples),
        }
        job_id = os.environ.get("VERSWEEP_JOB_ID")
        if job_id:
            # Submitted as a Ray Job by sweeps/schedule.py: its firing's record finds it by this.
            tags["versweep.job_id"] = job_id
        if sweep.description:
            tags[NOTE_TAG] = sweep.description  # the run's description in the UI
        tags = {k: truncate(v, MAX_TAG_VALUE_LENGTH) for k, v in tags.items()}
        run = retrying(
            lambda: self.client.create_run(
                experiment_id, run_name=f"{sweep.name} {started:%Y-%m-%d %H:%M:%S}Z", tags=tags),
            "creating the sweep's parent run")
        parent_run_id = run.info.run_id
        params = {
            "backend": sweep.backend,
            "device": sweep.device,
            "trial_timeout_s": sweep.trial_timeout_s,
            "retries": sweep.retries,
            "max_concurrent": sweep.max_concurrent,
            "data_dir": sweep.data_dir,
        }
        self._log_params(parent_run_id, params)
        self._log_text(parent_run_id, sweep.text, sweep.path.name or "grid.toml")
        if sweep.trials:
            plan = [{"key": t.key, "name": t.name, "workload": t.workload, "image": t.image,
                     "repeat": t.repeat, "config": t.config_dict} for t in sweep.trials]
            self._log_text(parent_run_id, json.dumps(plan, indent=1, sort_keys=True),
                           "trials.json")
        self._experiment_of_parent[parent_run_id] = experiment_id
        return parent_run_id

    def _describe_experiment(self, experiment_id: str, sweep: Sweep) -> None:
        """Make the experiment open on MLflow's runs table, with a description.

        MLflow 3 opens an experiment without a kind on its GenAI overview; the kind
        ``custom_model_development`` gives the classic runs view. The description
        (``mlflow.note.content``) is set once: a user's own stays.
        """
        found = retrying(lambda: self.client.get_experiment(experiment_id),
                         "reading the experiment's tags")
        tags = found.tags or {}
        wanted = {}
        if tags.get(EXPERIMENT_KIND_TAG) != EXPERIMENT_KIND:
            wanted[EXPERIMENT_KIND_TAG] = EXPERIMENT_KIND
        if not tags.get(NOTE_TAG):
            wanted[NOTE_TAG] = truncate(experiment_note(self.experiment, sweep),
                                        MAX_TAG_VALUE_LENGTH)
        for key, value in wanted.items():
            retrying(functools.partial(self.client.set_experiment_tag, experiment_id, key,
                                       value), "describing the experiment")

    def _reopen_sweep(self, sweep: Sweep) -> str:
        experiment_id = self.experiment_id(create=False)
        parents = []
        if experiment_id is not None:
            parents = self._search(
                experiment_id,
                f"tags.`versweep.kind` = 'sweep' and tags.`versweep.sweep` = "
                f"{quote(sweep.name)}")
        if not parents:
            raise UserError(
                f"--resume: no earlier run of sweep '{sweep.name}' in MLflow experiment "
                f"'{self.experiment}' at {_without_password(self.tracking_uri)}; "
                "run it once without --resume"
            )
        parents.sort(key=lambda run: run.info.start_time or 0, reverse=True)
        unfinished = [r for r in parents if r.info.status != RunStatus.to_string(
            RunStatus.FINISHED)]
        parent = (unfinished or parents)[0]
        parent_run_id = parent.info.run_id
        # A sweep written by a newer versweep is not continued by this one.
        check_schema(parent.data.tags, f"--resume: sweep run {parent_run_id}")
        resumes = int(parent.data.tags.get("versweep.resumes", "0")) + 1
        retrying(lambda: self.client.update_run(parent_run_id, status="RUNNING"),
                  "reopening the sweep's parent run")
        self._set_tags(parent_run_id, {"versweep.resumes": str(resumes)})
        if parent.data.tags.get("versweep.grid_sha256") != grid_sha256(sweep):
            # The grid changed since: keep what this resume ran with next to the original.
            digest = grid_sha256(sweep)
            self._log_text(parent_run_id, sweep.text, f"resume-{resumes}-{digest[:12]}.toml")
            self._set_tags(parent_run_id, {f"versweep.resume.{resumes}.grid_sha256": digest})
        self._experiment_of_parent[parent_run_id] = parent.info.experiment_id
        return parent_run_id

    def close_sweep(self, parent_run_id: str, summary: dict[str, int],
                    best: dict | None, *, interrupted: bool = False) -> None:
        """Record the counts per status and the best trial on the parent run, and finish it.

        An ``interrupted`` sweep (Ctrl-C) ends KILLED: it is not done, and
        ``--resume`` picks it up first.

        ``best`` holds e.g. trial_key, run_id, name, metric, mode, value, config;
        each becomes a tag versweep.best.<field>, and the value also a metric
        best_<metric> so the experiment's run table can sort sweeps by it.
        """
        tags = {f"versweep.summary.{status}": str(int(count))
                for status, count in summary.items()}
        run = retrying(lambda: self.client.get_run(parent_run_id), "reading the sweep's run")
        tags[NOTE_TAG] = truncate(
            sweep_note(run.data.tags.get(NOTE_TAG, ""), summary, interrupted=interrupted),
            MAX_TAG_VALUE_LENGTH)
        metrics = []
        if best:
            tags.update({f"versweep.best.{field}": text_value(value)
                         for field, value in best.items()})
            value = _finite(best.get("value"))
            if value is not None and best.get("metric"):
                metrics.append(Metric(_metric_name(f"best_{best['metric']}"), value,
                                      _now_ms(), 0))
        self._set_tags(parent_run_id, tags, metrics=metrics)
        end_state = "KILLED" if interrupted else "FINISHED"
        retrying(lambda: self.client.set_terminated(parent_run_id, end_state),
                  "finishing the sweep's parent run")

    # ----------------------------------------------------------------- trials

    def finished_trial_keys(self, parent_run_id: str) -> dict[str, Status]:
        """Trial key -> versweep.status for the child runs that reached a decision (FINISHED)."""
        decided = {}
        for trial in self.list_trials(parent_run_id, finished_only=True):
            if trial["key"]:
                decided[trial["key"]] = Status.parse(trial["status"] or "ok")
        return decided

    def start_trial(self, parent_run_id: str, spec: TrialSpec, *,
                    started_ms: int | None = None) -> str:
        """Create the trial's child run: readable name, identity tags, flattened config params.

        ``started_ms`` is when the trial itself started (ms since the epoch; default now):
        the run is created while the worker starts, and its duration in the MLflow UI is
        the trial's own.

        A RUNNING child run with the same key under this parent was left by a
        driver that died; it is marked KILLED first, so that every key ends with
        exactly one FINISHED run.
        """
        experiment_id = self._parent_experiment(parent_run_id)
        stale = self._search(
            experiment_id,
            f"tags.`mlflow.parentRunId` = {quote(parent_run_id)} and "
            f"tags.`versweep.trial_key` = {quote(spec.key)} and attributes.status = 'RUNNING'")
        for run in stale:
            stale_id = run.info.run_id
            self._set_tags(stale_id, {"versweep.status": Status.STOPPED.value,
                                      "versweep.message": "left running by a driver that "
                                                          "stopped; the trial was started again"})
            retrying(functools.partial(self.client.set_terminated, stale_id, "KILLED"),
                      "marking a stale trial run KILLED")
        tags = {
            "mlflow.parentRunId": parent_run_id,
            SCHEMA_TAG: str(SCHEMA_VERSION),
            "versweep.kind": "trial",
            "versweep.trial_key": spec.key,
            "versweep.workload": spec.workload,
            "versweep.image": spec.image,
            "versweep.repeat": str(spec.repeat),
            "versweep.group": str(spec.group),
        }
        if spec.workload_dir is not None:  # a user's own workload: where its plug-in is
            tags["versweep.workload_dir"] = spec.workload_dir
        run = retrying(
            lambda: self.client.create_run(experiment_id,
                                           run_name=run_name(spec, parent_run_id),
                                           start_time=started_ms, tags=tags),
            "creating a trial run")
        run_id = run.info.run_id
        self._log_params(run_id, spec.config_dict)
        self._last_flush[run_id] = time.monotonic()
        return run_id

    def log_event(self, run_id: str, event: dict) -> int | None:
        """Record one worker protocol event on the trial's run (DESIGN.md, protocol v1).

        Returns the step a ``metric`` event was recorded at (see _metric_step), None for
        any other event.
        """
        kind = event.get("event")
        if kind == "env":
            self._set_tags(run_id, env_tags(event))
        elif kind == "metric":
            step = self._metric_step(run_id, event.get("step"))
            self._last_step[run_id] = max(step, self._last_step.get(run_id, step))
            pending = self._queue_metrics(run_id, event.get("metrics"), step)
            waited = time.monotonic() - self._last_flush.get(run_id, 0.0)
            if len(pending) >= METRIC_FLUSH_COUNT or waited >= METRIC_FLUSH_SECONDS:
                self.flush(run_id)
            return step
        elif kind == "result":
            # Final figures sit at the last step, so a name that is also a step
            # metric (words_per_second) does not draw a line back to step 0.
            self._queue_metrics(run_id, event.get("metrics"), self._last_step.get(run_id, 0))
            if event.get("samples") is not None:
                self._result_samples[run_id] = list(event["samples"])
            self.flush(run_id)
        elif kind == "unsupported":
            self._set_tags(run_id, {"versweep.reason": text_value(event.get("reason", ""))})
        elif kind == "error":
            self._set_tags(run_id, {
                "versweep.error_kind": text_value(event.get("kind", "error")),
                "versweep.error": text_value(event.get("message", "")),
            })
        # Any other event is not part of protocol v1: the worker log keeps it.
        return None

    def _metric_step(self, run_id: str, step: Any) -> int:
        """The step a metric event is recorded at: its own ``step``, a whole number.

        A worker that sends none (``"step": null``, no key, not a number) must neither
        crash the writer nor stack every such value on one step: its values go one step
        after the last one recorded for the run (step 0 for its first).
        """
        try:
            if isinstance(step, bool):
                raise TypeError("a boolean is not a step")
            return int(step)
        except (TypeError, ValueError, OverflowError):  # None, "abc", nan, inf
            last = self._last_step.get(run_id)
            return 0 if last is None else last + 1

    def _queue_metrics(self, run_id: str, metrics: dict | None, step: int) -> list[Metric]:
        """Queue the finite values of ``metrics`` at ``step`` for the next flush."""
        stamp = _now_ms()
        pending = self._pending.setdefault(run_id, [])
        for name, value in (metrics or {}).items():
            number = _finite(value)
            if number is not None:
                pending.append(Metric(_metric_name(name), number, stamp, step))
        return pending

    def flush(self, run_id: str) -> None:
        """Write the step metrics this object still holds for ``run_id`` (one batch call)."""
        pending = self._pending.pop(run_id, [])
        self._last_flush[run_id] = time.monotonic()
        if pending:
            retrying(lambda: self.client.log_batch(run_id, metrics=pending),
                      "logging metrics")

    def finish_trial(self, run_id: str, status: str, *, message: str = "", log_text: str = "",
                     samples: list[float] | None = None,
                     extra_tags: dict[str, str] | None = None, decided: bool = True,
                     artifacts: dict[str, str] | None = None) -> None:
        """Record how the trial ended and end its run FINISHED ("finished" means "decided").

        ``decided=False`` (a trial interrupted by Ctrl-C or a lost driver, not by a
        decision such as ASHA's) ends the run KILLED instead, so ``--resume`` runs
        that trial again; its status tag still says how it ended.

        ``message`` (e.g. the stderr tail of a crash) keeps its end if it is too
        long for a tag; ``log_text`` becomes the artifact worker.log and
        ``samples`` (per-batch seconds; default: those of the result event)
        the artifact samples.json; ``artifacts`` are more texts by file name (the
        venv backend's environment.txt).
        """
        status = Status.parse(status).value  # ValueError for a status the rules do not know
        self.flush(run_id)
        current = retrying(lambda: self.client.get_run(run_id), "reading a trial run")
        if current.info.status == "KILLED":
            # A resumed sweep started this trial again and marked this run KILLED (its
            # driver had died, this trial process had not): the newer run is the record.
            # Finishing this one too would leave two FINISHED runs for one trial key.
            self._set_tags(run_id, {"versweep.superseded": "true",
                                    "versweep.superseded_status": status})
            for state in (self._pending, self._last_flush, self._last_step,
                          self._result_samples):
                state.pop(run_id, None)
            return
        tags = {"versweep.status": status}
        if message:
            tags["versweep.message"] = truncate(message, MAX_TAG_VALUE_LENGTH, keep="tail")
        tags.update({key: text_value(value) for key, value in (extra_tags or {}).items()})
        self._set_tags(run_id, tags)
        if log_text:
            self._log_text(run_id, log_text, "worker.log")
        for name, text in (artifacts or {}).items():
            self._log_text(run_id, text, name)
        if samples is None:
            samples = self._result_samples.get(run_id)
        if samples is not None:
            self._log_text(run_id, json.dumps(samples_document(samples)), "samples.json")
        end_state = "FINISHED" if decided else "KILLED"
        retrying(lambda: self.client.set_terminated(run_id, end_state), "finishing a trial")
        for state in (self._pending, self._last_flush, self._last_step, self._result_samples):
            state.pop(run_id, None)

    # ----------------------------------------------------------------- reading

    def list_trials(self, parent_run_id: str, *, finished_only: bool = False) -> list[dict]:
        """The child runs of a sweep, oldest first, as plain dicts.

        Each has run_id, name, key, status (versweep.status, None while
        undecided), run_status (MLflow's RUNNING/FINISHED/KILLED...), workload,
        image, repeat, metrics (latest value per name), params, tags,
        start_time and end_time (ms since the epoch).
        """
        experiment_id = self._parent_experiment(parent_run_id)
        query = f"tags.`mlflow.parentRunId` = {quote(parent_run_id)}"
        if finished_only:
            query += " and attributes.status = 'FINISHED'"
        runs = self._search(experiment_id, query)
        runs.sort(key=lambda run: (run.info.start_time or 0, run.info.run_id))
        trials = []
        for run in runs:
            tags = dict(run.data.tags)
            repeat = tags.get("versweep.repeat")
            trials.append({
                "run_id": run.info.run_id,
                "name": run.info.run_name,
                "key": tags.get("versweep.trial_key"),
                "status": tags.get("versweep.status"),
                "run_status": run.info.status,
                "workload": tags.get("versweep.workload"),
                "image": tags.get("versweep.image"),
                "repeat": int(repeat) if repeat is not None and repeat.isdigit() else None,
                "metrics": dict(run.data.metrics),
                "params": dict(run.data.params),
                "tags": tags,
                "start_time": run.info.start_time,
                "end_time": run.info.end_time,
            })
        return trials

    # ----------------------------------------------------------------- internals

    def decided_run(self, parent_run_id: str, key: str) -> str | None:
        """The run id of the FINISHED (decided) child run of trial ``key``, or None."""
        found = self._search(
            self._parent_experiment(parent_run_id),
            f"tags.`mlflow.parentRunId` = {quote(parent_run_id)} and "
            f"tags.`versweep.trial_key` = {quote(key)} and attributes.status = 'FINISHED'")
        return found[0].info.run_id if found else None

    def tag_run(self, run_id: str, tags: dict[str, str]) -> None:
        """Set tags on a run (values kept within MLflow's limits)."""
        self._set_tags(run_id, {name: text_value(value) for name, value in tags.items()})

    def _parent_experiment(self, parent_run_id: str) -> str:
        # Children live in their parent's experiment, whatever this object was told.
        if parent_run_id not in self._experiment_of_parent:
            parent = retrying(lambda: self.client.get_run(parent_run_id),
                               "reading the sweep's parent run")
            self._experiment_of_parent[parent_run_id] = parent.info.experiment_id
        return self._experiment_of_parent[parent_run_id]

    def _search(self, experiment_id: str, query: str) -> list:
        runs: list = []
        token = None
        while True:
            page = retrying(
                functools.partial(
                    self.client.search_runs,
                    [experiment_id], filter_string=query, run_view_type=ViewType.ACTIVE_ONLY,
                    max_results=1000, page_token=token),
                "searching runs")
            runs.extend(page)
            token = page.token
            if not token:
                return runs

    def _log_params(self, run_id: str, config: dict[str, Any]) -> None:
        params = [Param(_key(name), truncate(text_value(value), MAX_PARAM_VALUE_LENGTH))
                  for name, value in sorted(flatten(config).items())]
        if params:
            retrying(lambda: self.client.log_batch(run_id, params=params), "logging params")

    def _set_tags(self, run_id: str, tags: dict[str, str], *,
                  metrics: list[Metric] | None = None) -> None:
        run_tags = [RunTag(_key(name), truncate(value, MAX_TAG_VALUE_LENGTH))
                    for name, value in tags.items()]
        if run_tags or metrics:
            retrying(lambda: self.client.log_batch(run_id, metrics=metrics or [],
                                                    tags=run_tags),
                      "setting tags")

    def _log_text(self, run_id: str, text: str, artifact_file: str) -> None:
        retrying(lambda: self.client.log_text(run_id, text, artifact_file),
                  f"logging {artifact_file}")


SAMPLES_UNIT = "s"


def samples_document(samples: list[float]) -> dict[str, Any]:
    """samples.json (layout 3): the per-batch times with their unit and what they are."""
    return {"unit": SAMPLES_UNIT,
            "description": "seconds per measured batch (forward, backward and update), in "
                           "the order run, the warm-up batches dropped",
            "values": [float(s) for s in samples]}


def run_name(spec: TrialSpec, parent_run_id: str) -> str:
    """A trial run's name: the trial's, and the short id of its sweep's run, so that two
    runs of one grid in an experiment are told apart ('... @ local #0 · 3f9a1c')."""
    suffix = sweep_suffix(parent_run_id)
    return truncate(spec.name, MAX_RUN_NAME_LENGTH - len(suffix)) + suffix


SWEEP_NOTE_COUNTS = "**Trials**"


def sweep_note(note: str, summary: dict[str, int], *, interrupted: bool) -> str:
    """A parent run's description with the counts of each status (replacing earlier ones)."""
    kept = note.split("\n\n" + SWEEP_NOTE_COUNTS, 1)[0]
    kept = "" if kept.startswith(SWEEP_NOTE_COUNTS) else kept
    total = sum(int(count) for count in summary.values())
    counts = ", ".join(f"{int(count)} {status}" for status, count in summary.items())
    when = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    ending = "interrupted (resume it with --resume)" if interrupted else "finished"
    line = f"{SWEEP_NOTE_COUNTS} ({ending} {when}): {total} trials: {counts}."
    return f"{kept}\n\n{line}" if kept else line


def experiment_note(experiment: str, sweep: Sweep) -> str:
    """The experiment's description in the MLflow UI (Markdown)."""
    kind = "search" if sweep.search is not None else "grid"
    lines = [f"**versweep** experiment `{experiment}`: the records of the {kind} "
             f"`{sweep.name}` ({sweep.path.name or 'grid.toml'})."]
    if sweep.description:
        lines += ["", sweep.description]
    lines += ["",
              "Each **parent run** is one run of the sweep (`python sweeps/run.py --grid "
              f"{sweep.name}`): its description counts the trials of each status, its tags "
              "hold the best result per workload and its artifacts the grid and the planned "
              "trials. Its **child runs** are the trials, one per workload, config, image and "
              "repeat, each with the torch, CUDA and cuDNN it really ran (tags "
              "`versweep.torch`, ...), its metrics, `worker.log` and `environment.txt`.",
              "",
              f"The version comparison: `versweep report --experiment {experiment}`."]
    return "\n".join(lines)


def env_tags(event: dict) -> dict[str, str]:
    """The tags an ``env`` event becomes: versweep.env.<field> (flags flattened), and shortcuts.

    The resolved config in the event is left out: it is already the run's params.
    """
    # The workload is the run's versweep.workload already; the shortcuts (versweep.torch,
    # ...) are written once, not also as versweep.env.<name>; a fact the worker did not
    # have (None: no GPU, no cuDNN) is left out rather than written as "null".
    fields = {k: v for k, v in event.items()
              if k not in ("v", "event", "config", "workload", *_ENV_SHORTCUTS)}
    tags = {f"versweep.env.{name}": text_value(value)
            for name, value in flatten(fields, lists=False).items()
            if value is not None and value not in ("", {}, [])}
    for name in _ENV_SHORTCUTS:
        if event.get(name) is not None and event.get(name) != "":
            tags[f"versweep.{name}"] = text_value(event[name])
    return tags


def grid_sha256(sweep: Sweep) -> str:
    """The SHA-256 of the grid file as written, so a record names exactly what ran."""
    return hashlib.sha256(sweep.text.encode("utf-8")).hexdigest()


def quote(value: str) -> str:
    """``value`` as a string literal of an MLflow filter string, quotes included.

    Every value put into a filter (a run id, a trial key, a sweep or grid name, a job
    id) goes through here, never between quotes by hand. MLflow's filter grammar has no
    escape character (a backslash stays a backslash, and ``\\'`` would match a
    backslash and a quote), so a value with a single quote is written in double quotes
    instead. A value with both kinds of quote, or ending in a backslash (its tokenizer
    would take the closing quote as escaped), cannot be written at all: ValueError.
    """
    text = str(value)
    if text.endswith("\\") or ("'" in text and '"' in text):
        raise ValueError(f"{text!r} cannot be written as a value of an MLflow filter string")
    return f'"{text}"' if "'" in text else f"'{text}'"

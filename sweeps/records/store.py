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
import errno
import functools
import hashlib
import json
import logging
import math
import os
import re
import shlex
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import unquote, urlparse, urlsplit

from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunStatus, RunTag, ViewType
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import (
    REQUEST_LIMIT_EXCEEDED,
    RESOURCE_ALREADY_EXISTS,
    TEMPORARILY_UNAVAILABLE,
    ErrorCode,
)

from sweeps import validate
from sweeps.errors import ArtifactStoreFull, UserError
from sweeps.grid.spec import TRIAL_ORDER, Sweep, TrialSpec
from sweeps.records.layout import (
    KEY_VIEW_NAME,
    KEY_VIEW_TAG,
    SCHEMA_TAG,
    SCHEMA_VERSION,
    UI_SIDE,
    check_schema,
    sweep_suffix,
)
from sweeps.records.location import (  # noqa: F401  (mlflow-free; callers import them here too)
    ARTIFACTS_DIR_NAME,
    artifact_root,
    default_tracking_uri,
    holds_a_store,
    resolve_tracking_uri,
    sqlite_path,
)
from sweeps.status import ARTIFACT_STORE_FULL_PREFIX, STORE_UNAVAILABLE_PREFIX, Status

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

# A store call is tried again while the store is temporarily unavailable (SQLite: the
# database locked beyond mlflow's 20 s busy timeout; a server: 503, 429, or no answer at
# all: stopped, restarting, frozen). The pauses start at STORE_RETRY_FIRST_WAIT_S and
# double up to STORE_RETRY_MAX_WAIT_S, until STORE_WAIT_S seconds have passed since the
# call first failed ($VERSWEEP_STORE_WAIT_S sets it); then one clear error.
STORE_RETRY_FIRST_WAIT_S = 0.5
STORE_RETRY_MAX_WAIT_S = 30.0
STORE_WAIT_S = 600.0
STORE_WAIT_VARIABLE = "VERSWEEP_STORE_WAIT_S"
# MLflow's HTTP client retries a refused connection by itself, silently, for about four
# minutes (7 retries, pauses up to 120 s). A tracking server's client is given this many
# (unless $MLFLOW_HTTP_REQUEST_MAX_RETRIES says otherwise), so that retrying() does the
# waiting, says what it waits for, and gives up when STORE_WAIT_S says.
MLFLOW_HTTP_RETRIES = 2

# Fields of the env event copied to short top-level tags, for the UI's run table.
_ENV_SHORTCUTS = ("torch", "cuda", "cudnn", "gpu", "host", "python", "device")


# --------------------------------------------------------------------------- tracking URIs


def check_writable(tracking_uri: str) -> None:
    """A SQLite store (and its artifact folder beside it) can be created or written here;
    checked before a sweep creates anything, so a store that cannot be is one line."""
    db = sqlite_path(tracking_uri)
    if db is not None:
        validate.output_file(db, "the MLflow store")
        artifacts = artifact_root(tracking_uri)
        if artifacts is not None:
            validate.output_dir(artifacts, "the MLflow artifact folder")


def store_exists(tracking_uri: str) -> bool:
    """Whether a SQLite store's database is there (any other store: True, the server
    decides); opening a missing one would create it."""
    db = sqlite_path(tracking_uri)
    return db is None or holds_a_store(db)


def nothing_to_resume(sweep_name: str, experiment: str, tracking_uri: str) -> UserError:
    return UserError(
        f"--resume: no earlier run of sweep '{sweep_name}' in MLflow experiment "
        f"'{experiment}' at {_without_password(tracking_uri)}; run it once without --resume")


def records_location(tracking_uri: str) -> str:
    """One line saying where the records of a sweep are, for the end of a run."""
    db = sqlite_path(tracking_uri)
    if db is not None:
        return f"MLflow records: {db} (SQLite), artifacts under {artifact_root(tracking_uri)}"
    scheme = urlparse(tracking_uri).scheme
    if scheme in ("http", "https"):
        return f"MLflow records: tracking server {_without_password(tracking_uri)}"
    if scheme == "file":
        return f"MLflow records: file store {unquote(urlparse(tracking_uri).path)}"
    return f"MLflow records: {_without_password(tracking_uri)}"


def mlflow_ui_command(tracking_uri: str) -> str:
    """What a user runs (or opens) to see the records in the MLflow UI."""
    scheme = urlparse(tracking_uri).scheme
    if scheme in ("http", "https"):
        return f"open {_without_userinfo(tracking_uri)}"
    if scheme.startswith("databricks") or scheme == "uc":
        return "open the experiment in your Databricks workspace"
    return f"mlflow ui --backend-store-uri {shlex.quote(_without_password(tracking_uri))}"


def _without_password(uri: str) -> str:
    return validate.without_password(uri)


def credentials_to_environment(tracking_uri: str) -> str:
    """A tracking server's URI without its ``user:password@``, which go to MLflow's own
    variables (MLFLOW_TRACKING_USERNAME / _PASSWORD) of this process instead.

    The URI travels: into every trial's context, so into Ray Tune's experiment state
    (``ray_results/*/tuner.pkl`` on disk) and Ray's object store. The variables stay in
    this process and the private Ray it starts (its workers inherit them); on a cluster
    each node's own environment holds them (docs/reliability.md, "Security"). MLflow
    sends the same Basic credentials either way; variables already set win, as in MLflow.
    """
    parts = urlsplit(tracking_uri)
    if parts.scheme not in ("http", "https") or parts.password is None:
        return tracking_uri
    if not (os.environ.get("MLFLOW_TRACKING_USERNAME")
            and os.environ.get("MLFLOW_TRACKING_PASSWORD")):
        os.environ["MLFLOW_TRACKING_USERNAME"] = unquote(parts.username or "")
        os.environ["MLFLOW_TRACKING_PASSWORD"] = unquote(parts.password)
    return _without_userinfo(tracking_uri)


def _without_userinfo(uri: str) -> str:
    """``uri`` with no ``user:password@`` (urllib cannot send it; it would be a host)."""
    return re.sub(r"^([a-z][a-z0-9+.-]*://)[^@/]*@", r"\1", uri, flags=re.IGNORECASE)


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


def store_wait_limit() -> float:
    """Seconds a store call waits for an unavailable store: $VERSWEEP_STORE_WAIT_S or 600."""
    raw = os.environ.get(STORE_WAIT_VARIABLE, "").strip()
    if not raw:
        return STORE_WAIT_S
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < 0:
        raise UserError(f"${STORE_WAIT_VARIABLE}: {validate.shown(raw)} is not a number of "
                        "seconds (0 or more)")
    return value


def _unavailable(error: MlflowException) -> bool:
    """Whether the store could not take the call now, and a later try may succeed."""
    text = str(error)
    return (_error_code(error) in (ErrorCode.Name(TEMPORARILY_UNAVAILABLE),
                                   ErrorCode.Name(REQUEST_LIMIT_EXCEEDED))
            or "database is locked" in text
            # MLflow's HTTP client, its own retries spent: refused, reset, timed out, or
            # a proxy in front of a server that is (re)starting.
            or (text.startswith("API request to ")
                and ("failed with exception" in text or "timeout exception" in text
                     or re.search(r"failed with error code (429|502|503|504)\b", text)
                     is not None)))


class StoreUnavailable(UserError):
    """A store call waited $VERSWEEP_STORE_WAIT_S for the store, and gave up."""


def _no_space(error: BaseException) -> bool:
    """Whether ``error`` is a write that found its file system (or quota) full: the local
    artifact store's own OSError, or a tracking server's answer that says so."""
    if isinstance(error, OSError):
        return error.errno in (errno.ENOSPC, errno.EDQUOT)
    text = str(error)
    return "No space left on device" in text or "Disk quota exceeded" in text


def _where(error: MlflowException) -> str:
    """``"at http://host:port "`` for a server's error, else ""."""
    found = re.match(r"API request to (\w+://[^/\s]+)", str(error))
    return f"at {_without_password(found.group(1))} " if found else ""


def _reason(error: MlflowException) -> str:
    """The short cause of an unavailable store ("[Errno 111] Connection refused")."""
    text = str(error)
    found = (re.search(r"\[Errno -?\d+\][^\"')]*", text)
             or re.search(r"(Read|Connect) timed out", text))
    if found:
        return found.group(0).strip()
    return truncate(_first_line(error), 200)


def retrying(call: Callable[[], T], what: str) -> T:
    """Run one store call, again after a pause while the store is unavailable.

    The pauses grow (0.5 s, doubling, at most 30 s); each is logged as a warning
    (``sweeps.records.store``: a sweep's trials relay it to the console) with what
    it waits for. After $VERSWEEP_STORE_WAIT_S (600 s) the call fails with one line.
    A failed SQLite write is rolled back as a whole, so repeating it cannot record
    anything twice.
    """
    wait, first_failure = STORE_RETRY_FIRST_WAIT_S, None
    while True:
        try:
            return call()
        except MlflowException as error:
            if not _unavailable(error):
                raise
            now = time.monotonic()
            first_failure = now if first_failure is None else first_failure
            limit = store_wait_limit()
            left = limit - (now - first_failure)
            if left <= 0:
                raise StoreUnavailable(
                    f"{STORE_UNAVAILABLE_PREFIX} {_where(error)}for {now - first_failure:.0f} s "
                    f"during {what} ({_reason(error)}); once it answers again, continue "
                    f"with --resume (${STORE_WAIT_VARIABLE}={limit:g} sets how long to wait)"
                ) from None
            wait = min(wait, left)
            _log.warning("MLflow store %sunavailable during %s (%s); retrying in %.1f s, "
                         "for %.0f s more", _where(error), what, _reason(error), wait, left)
            time.sleep(wait)
            wait = min(wait * 2, STORE_RETRY_MAX_WAIT_S)


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
    # MLflow prints "View run ... at: <the tracking URI>" when a run ends on a server,
    # credentials and all; versweep prints its own links, with the password starred.
    os.environ["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] = "true"
    from sqlalchemy.exc import SQLAlchemyError

    db = sqlite_path(tracking_uri)
    scheme = urlparse(tracking_uri).scheme.split("+", 1)[0]
    try:
        if db is not None:
            db.parent.mkdir(parents=True, exist_ok=True)
            _check_sqlite(db)
            # MlflowClient opens the store (and creates a new database's tables) right here.
            with _sqlite_open_lock(db):
                client = MlflowClient(tracking_uri=tracking_uri)
                client.search_experiments(max_results=1)
        else:
            if scheme in ("http", "https"):
                _check_reachable(tracking_uri)
            elif scheme in _DATABASE_PORTS:
                _check_database(tracking_uri)
            client = MlflowClient(tracking_uri=tracking_uri)
            retrying(lambda: client.search_experiments(max_results=1), "opening the store")
    except MlflowException as error:
        raise UserError(f"MLflow store {_without_password(tracking_uri)}: "
                        f"{_first_line(error)}") from None
    except (OSError, SQLAlchemyError) as error:
        raise UserError(f"MLflow store {_without_password(tracking_uri)}: "
                        f"{_first_line(error)}") from None
    return client


# The database URIs MLflow's SQLAlchemy store takes, with their servers' usual ports.
_DATABASE_PORTS = {"postgresql": 5432, "mysql": 3306, "mssql": 1433}
_SQLITE_HEADER = b"SQLite format 3\x00"


def _check_sqlite(db: Path) -> None:
    """A SQLite store's file is a SQLite database (or new) and opens here, checked in
    milliseconds: MLflow retries a database it cannot open for about two minutes before
    its own traceback (mlflow.store.db.utils.create_sqlalchemy_engine_with_retry)."""
    import sqlite3

    try:
        with open(db, "rb") as handle:
            head = handle.read(len(_SQLITE_HEADER))
    except FileNotFoundError:
        head = b""
    if db.exists() and not db.is_file():
        raise UserError(f"{db} is not a regular file (a device, a socket or a pipe); name the "
                        "SQLite file of an MLflow store, e.g. sqlite:///mlflow.db")
    if head and head != _SQLITE_HEADER:
        raise UserError(f"{db} is not a SQLite database; name the .db file of an MLflow "
                        "store (a sweep makes one where none is)")
    try:
        connection = sqlite3.connect(str(db), timeout=30)
        try:
            connection.execute("PRAGMA schema_version").fetchone()
        finally:
            connection.close()
    except sqlite3.Error as error:
        raise UserError(f"cannot open the SQLite store {db} ({error}); check that it is an "
                        "MLflow store's .db and that this user may write its folder") from None


def _check_database(tracking_uri: str) -> None:
    """A database URI's driver is installed and its server's port answers, checked in
    seconds: MLflow retries a refused connection for about two minutes, and a missing
    driver is a traceback. A server that answers decides the rest (password, database)."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

    shown = _without_password(tracking_uri)
    try:
        url = make_url(tracking_uri)
        url.get_dialect().import_dbapi()
    except ModuleNotFoundError as error:
        hint = (" (postgresql:// means psycopg 3: pip install 'psycopg[binary]'; or name an "
                "installed driver, e.g. postgresql+psycopg2://)"
                if url.get_backend_name() == "postgresql" else
                " (or name an installed driver in the URI's scheme, e.g. mysql+pymysql://)")
        raise UserError(
            f"MLflow store {shown}: its database driver '{error.name}' is not installed "
            f"here; install it into this environment{hint}") from None
    except (ArgumentError, NoSuchModuleError) as error:
        raise UserError(f"MLflow store {shown}: {_first_line(error)}") from None
    port = url.port or _DATABASE_PORTS.get(url.get_backend_name())
    socket_dir = url.query.get("host") if not url.host else None
    if url.get_backend_name() == "postgresql" and (not url.host or url.host.startswith("/")):
        # A Unix socket: libpq's .s.PGSQL.<port> in the host folder (Debian's, else /tmp).
        folders = [url.host or socket_dir] if (url.host or socket_dir) else [
            "/var/run/postgresql", "/tmp"]
        sockets = [Path(str(folder)) / f".s.PGSQL.{port}" for folder in folders]
        if not any(path.exists() for path in sockets):
            raise StoreUnreachable(
                f"cannot reach the database of MLflow store {shown}: no PostgreSQL socket "
                f"{' or '.join(map(str, sockets))}; start it, or name its host:port in "
                "--tracking-uri / MLFLOW_TRACKING_URI")
        return
    if not url.host or url.host.startswith("/") or port is None:
        return  # another database's Unix socket: its driver decides
    try:
        socket.create_connection((url.host, port), timeout=10).close()
    except OSError as error:
        raise StoreUnreachable(
            f"cannot reach the database of MLflow store {shown} at {url.host}:{port} "
            f"({error.strerror or error}); start it, or check --tracking-uri / "
            "MLFLOW_TRACKING_URI") from None


def _check_reachable(server_uri: str) -> None:
    """Fail in seconds, not minutes, when nothing listens at a tracking server's address.

    MLflow's HTTP client retries a refused connection with back-off for about two
    minutes; a mistyped port deserves a quicker answer. Any HTTP answer at all
    (even 401 or 404 from a proxy) means something is there, and MLflow decides.

    Past this check, MLflow's own retries are few (MLFLOW_HTTP_RETRIES): retrying()
    waits out a server that stops, and says so.
    """
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", str(MLFLOW_HTTP_RETRIES))
    try:
        with urllib.request.urlopen(_without_userinfo(server_uri).rstrip("/") + "/health",
                                    timeout=10):
            pass
    except urllib.error.HTTPError:
        pass
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        raise StoreUnreachable(
            f"cannot reach the MLflow tracking server at {_without_password(server_uri)} "
            f"({reason}); start one with `mlflow server --host 127.0.0.1 --port N` "
            "or check --tracking-uri / MLFLOW_TRACKING_URI"
        ) from None


class StoreUnreachable(UserError):
    """Nothing answers at a tracking server's address."""


def reopen_client(tracking_uri: str) -> MlflowClient:
    """open_client in a process of a sweep whose store answered when it started (a trial
    process): a tracking server that does not answer now is stopped or restarting, and
    is waited for (``retrying``, $VERSWEEP_STORE_WAIT_S) instead of refused at once."""
    def attempt() -> MlflowClient:
        try:
            return open_client(tracking_uri)
        except StoreUnreachable as error:
            raise MlflowException(str(error), error_code=TEMPORARILY_UNAVAILABLE) from None

    return retrying(attempt, "opening the store")


# --------------------------------------------------------------------------- the records


class SweepRecords:
    """Writes and reads one experiment's sweeps in an MLflow tracking store.

    One object per process: the driver opens and closes the sweep, each trial
    process starts, feeds and finishes its own child runs. Every method takes
    explicit run ids, so any number of objects may write to the same store.
    """

    def __init__(self, tracking_uri: str, experiment: str, reopened: bool = False):
        # ``reopened``: the store answered when the sweep started (a trial process), so a
        # server that does not answer now is waited for (reopen_client).
        self.tracking_uri = tracking_uri
        self.experiment = experiment
        self.client = reopen_client(tracking_uri) if reopened else open_client(tracking_uri)
        self._experiment_of_parent: dict[str, str] = {}
        # Per child run: step metrics waiting to be written, and what the result said.
        self._pending: dict[str, list[Metric]] = {}
        self._last_flush: dict[str, float] = {}
        self._last_step: dict[str, int] = {}
        self._result_samples: dict[str, list[float]] = {}

    def __reduce__(self):
        # Sent to another process (a Ray trial actor), it opens the store again there,
        # under the SQLite lock, instead of carrying this process's connections.
        return (SweepRecords, (self.tracking_uri, self.experiment, True))

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
        tags.update(source_tags())
        job_id = os.environ.get("VERSWEEP_JOB_ID")
        if job_id:
            # Submitted as a Ray Job by sweeps/schedule.py: its firing's record finds it by this.
            tags["versweep.job_id"] = job_id
        if sweep.description:
            tags[NOTE_TAG] = sweep.description  # the run's description in the UI
        tags = {k: truncate(v, MAX_TAG_VALUE_LENGTH) for k, v in tags.items()}
        run = self._create_run(experiment_id, f"{sweep.name} {started:%Y-%m-%d %H:%M:%S}Z",
                               None, tags, "creating the sweep's parent run")
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
        legend = metrics_legend(sweep)
        if legend:
            self._log_text(parent_run_id, json.dumps(legend, indent=1, sort_keys=True),
                           METRICS_ARTIFACT)
        if sweep.trials:
            plan = [{"key": t.key, "name": t.name, "workload": t.workload, "image": t.image,
                     "repeat": t.repeat, "config": t.config_dict} for t in sweep.trials]
            self._log_text(parent_run_id, json.dumps(plan, indent=1, sort_keys=True),
                           "trials.json")
        self._experiment_of_parent[parent_run_id] = experiment_id
        return parent_run_id

    def _describe_experiment(self, experiment_id: str, sweep: Sweep) -> None:
        """Describe the experiment for MLflow's UI: its kind, its description, the key view.

        The kind ``custom_model_development`` says it holds training runs, not GenAI
        traces. The description (``mlflow.note.content``) is set once: a user's own stays.
        The saved runs-table view (KEY_VIEW_TAG, opened by layout.experiment_url) shows
        each workload's best metric and the trials' status and versions as columns: a new
        user's table otherwise shows no metric at all. It gains the columns of a sweep's
        new workloads and keeps those it had.
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
        view = key_view(tags.get(KEY_VIEW_TAG), sweep)
        if view is not None:
            wanted[KEY_VIEW_TAG] = view
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
            raise nothing_to_resume(sweep.name, self.experiment, self.tracking_uri)
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
                    best: dict | None, *, interrupted: bool = False,
                    bests: Sequence[dict] = ()) -> None:
        """Record the counts per status and the best trials on the parent run, and finish it.

        An ``interrupted`` sweep (Ctrl-C) ends KILLED: it is not done, and
        ``--resume`` picks it up first.

        ``best`` (the sweep's one best: a search's, or a grid's language model) holds
        e.g. trial_key, run_id, name, metric, mode, value, config; each becomes a tag
        versweep.best.<field>, and the value also a metric best_<metric> so the
        experiment's run table can sort sweeps by it. ``bests`` are the best trial of
        each workload's comparison group (group, metric, value, run_id, name): tags
        versweep.best.<group>.<field>, metrics best.<group>.<metric>, and a list in the
        run's description linking each to its run.
        """
        tags = {f"versweep.summary.{status}": str(int(count))
                for status, count in summary.items()}
        run = retrying(lambda: self.client.get_run(parent_run_id), "reading the sweep's run")
        experiment_id = run.info.experiment_id
        tags[NOTE_TAG] = truncate(
            sweep_note(run.data.tags.get(NOTE_TAG, ""), summary, interrupted=interrupted,
                       bests=bests, experiment_id=experiment_id),
            MAX_TAG_VALUE_LENGTH)
        metrics = []
        if best:
            tags.update({f"versweep.best.{field}": text_value(value)
                         for field, value in best.items()})
            value = _finite(best.get("value"))
            if value is not None and best.get("metric"):
                metrics.append(Metric(_metric_name(f"best_{best['metric']}"), value,
                                      _now_ms(), 0))
        for each in bests:
            group = best_group_key(str(each.get("group", "")))
            tags.update({f"versweep.best.{group}.{field}": text_value(each.get(field))
                         for field in ("metric", "value", "run_id", "name")
                         if each.get(field) not in (None, "")})
            value = _finite(each.get("value"))
            if value is not None and each.get("metric"):
                metrics.append(Metric(_metric_name(f"best.{group}.{each['metric']}"), value,
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

    def mark_interrupted_trials(self, parent_run_id: str) -> int:
        """Mark KILLED every child run of this sweep still RUNNING; returns how many.

        Called by ``--resume`` before any trial starts: the driver that started those runs
        is gone (killed, its machine lost), so none of them will be finished by it. A grid
        runs each of their keys again (start_trial would mark them too); a search samples
        new configs instead, so without this its interrupted runs stayed RUNNING for good.
        A trial process of the old driver that still finishes later finds its run KILLED
        and leaves it so (finish_trial): the newer record stands.
        """
        experiment_id = self._parent_experiment(parent_run_id)
        stale = self._search(
            experiment_id,
            f"tags.`mlflow.parentRunId` = {quote(parent_run_id)} and "
            "attributes.status = 'RUNNING'")
        for run in stale:
            self._mark_stale(run.info.run_id, "resumed with --resume")
        return len(stale)

    def _mark_stale(self, run_id: str, what_now: str) -> None:
        self._set_tags(run_id, {"versweep.status": Status.STOPPED.value,
                                "versweep.message": "left running by a driver that "
                                                    f"stopped; {what_now}"})
        retrying(functools.partial(self.client.set_terminated, run_id, "KILLED"),
                  "marking a stale trial run KILLED")

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
            self._mark_stale(run.info.run_id, "the trial was started again")
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
        tags.update(source_tags())
        run = self._create_run(experiment_id, run_name(spec, parent_run_id), started_ms, tags,
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
            dataset = dataset_of(event)
            if dataset is not None:
                retrying(lambda: self.client.log_inputs(run_id, datasets=[dataset]),
                          "recording the trial's dataset")
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
        # A create the server took twice, the second landing late (a server that froze
        # with the request in its queue): its copy goes before the trial is decided.
        self._drop_copies(current.info.experiment_id, current.info.run_name,
                          current.info.start_time, keep=run_id)
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
        # The artifacts first: a write that fails (ArtifactStoreFull: no space left)
        # leaves a run without a status, RUNNING, that --resume marks KILLED and runs
        # again, never a decided run without its files.
        if log_text:
            self._log_text(run_id, log_text, "worker.log")
        for name, text in (artifacts or {}).items():
            self._log_text(run_id, text, name)
        if samples is None:
            samples = self._result_samples.get(run_id)
        if samples is not None:
            self._log_text(run_id, json.dumps(samples_document(samples)), "samples.json")
        tags = {"versweep.status": status}
        if message:
            tags["versweep.message"] = truncate(message, MAX_TAG_VALUE_LENGTH, keep="tail")
        tags.update({key: text_value(value) for key, value in (extra_tags or {}).items()})
        self._set_tags(run_id, tags)
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

    def runs_table_url(self, parent_run_id: str) -> str:
        """Where a person sees this sweep's runs in the MLflow UI: the experiment's runs table
        with the key view, on the UI this store is served by ("" for a Databricks store)."""
        from sweeps.records.layout import experiment_url, ui_base

        scheme = urlparse(self.tracking_uri).scheme
        if scheme.startswith("databricks") or scheme == "uc":
            return ""
        return experiment_url(ui_base(self.tracking_uri), self._parent_experiment(parent_run_id))

    def _parent_experiment(self, parent_run_id: str) -> str:
        # Children live in their parent's experiment, whatever this object was told.
        if parent_run_id not in self._experiment_of_parent:
            parent = retrying(lambda: self.client.get_run(parent_run_id),
                               "reading the sweep's parent run")
            self._experiment_of_parent[parent_run_id] = parent.info.experiment_id
        return self._experiment_of_parent[parent_run_id]

    def _create_run(self, experiment_id: str, name: str, start_ms: int | None,
                    tags: dict[str, str], what: str) -> Any:
        """``create_run``, at most once even where the store drops its answer.

        A request to create a run can reach a tracking server, be committed there, and
        its answer be lost (the server killed between its commit and its reply);
        ``retrying`` then sends it again, and a second, empty run would be left RUNNING
        (a record the fault tests count as inconsistent). So every attempt after the
        first looks for the run the earlier one may have made (same name, same start
        time to the millisecond, RUNNING, in this experiment) and takes it instead.
        """
        start_ms = _now_ms() if start_ms is None else start_ms
        attempts = 0

        def attempt() -> Any:
            nonlocal attempts
            attempts += 1
            if attempts > 1:
                made = self._made_runs(experiment_id, name, start_ms)
                if made:
                    _log.info("%s: the store had made the run before its answer was lost "
                              "(%s); taking it", what, made[0].info.run_id)
                    return made[0]
            return self.client.create_run(experiment_id, run_name=name, start_time=start_ms,
                                          tags=tags)

        run = retrying(attempt, what)
        # MLflow's HTTP client sends a request again by itself where its answer was lost
        # (its own few retries): on a tracking server, a second identical run may exist.
        self._drop_copies(experiment_id, name, start_ms, keep=run.info.run_id)
        return run

    def _made_runs(self, experiment_id: str, name: str, start_ms: int) -> list:
        """The RUNNING runs named ``name`` that started at ``start_ms`` (the same create)."""
        where = f"attributes.start_time = {int(start_ms)} and attributes.status = 'RUNNING'"
        try:
            where = f"attributes.run_name = {quote(name)} and {where}"
        except ValueError:  # a name no filter can hold: the start time alone
            pass
        return list(self.client.search_runs([experiment_id], filter_string=where,
                                            run_view_type=ViewType.ACTIVE_ONLY,
                                            max_results=50))

    def _drop_copies(self, experiment_id: str, name: str, start_ms: int, *, keep: str) -> None:
        """Delete the copies of run ``keep`` that a create sent twice left behind.

        Only a tracking server loses answers (a local store's call is atomic). A copy has
        the same name, start time and tags, and nothing else: nothing was logged to it.
        """
        if urlparse(self.tracking_uri).scheme not in ("http", "https"):
            return
        copies = retrying(lambda: self._made_runs(experiment_id, name, start_ms),
                          "looking for a run created twice")
        for copy in copies:
            if copy.info.run_id == keep or dict(copy.data.params) or dict(copy.data.metrics):
                continue
            _log.info("deleting run %s: a copy of %s made by a create sent twice",
                      copy.info.run_id, keep)
            retrying(functools.partial(self.client.delete_run, copy.info.run_id),
                     "deleting a run created twice")

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
        try:
            retrying(lambda: self.client.log_text(run_id, text, artifact_file),
                      f"logging {artifact_file}")
        except (OSError, MlflowException) as error:
            if not _no_space(error):
                raise
            where = artifact_root(self.tracking_uri) or _without_password(self.tracking_uri)
            raise ArtifactStoreFull(
                f"{ARTIFACT_STORE_FULL_PREFIX}: no space left on the device of {where} "
                f"while logging {artifact_file}; free space there, then continue with "
                "--resume") from None


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


def best_group_key(group: str) -> str:
    """A comparison group as part of a tag or metric name: 'rnn_bench 1x320-ce-short cudnn'
    -> 'rnn_bench.1x320-ce-short.cudnn' (MLflow names allow letters, digits, _ - . /)."""
    return ".".join(re.sub(r"[^A-Za-z0-9_\-]+", "_", part) for part in group.split()) or "all"


def sweep_note(note: str, summary: dict[str, int], *, interrupted: bool,
               bests: Sequence[dict] = (), experiment_id: str = "") -> str:
    """A parent run's description with the counts of each status and the best trial of each
    workload, each linked to its run in the UI (replacing earlier counts on --resume)."""
    kept = note.split("\n\n" + SWEEP_NOTE_COUNTS, 1)[0]
    kept = "" if kept.startswith(SWEEP_NOTE_COUNTS) else kept
    total = sum(int(count) for count in summary.values())
    counts = ", ".join(f"{int(count)} {status}" for status, count in summary.items())
    when = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    ending = "interrupted (resume it with --resume)" if interrupted else "finished"
    line = f"{SWEEP_NOTE_COUNTS} ({ending} {when}): {total} trials: {counts}."
    shown = [b for b in bests if b.get("run_id") and _finite(b.get("value")) is not None]
    if shown:
        line += "\n\n**Best per workload**\n"
        for each in shown:
            # A link inside the UI's own single-page app: its route, relative to the page.
            target = (f"#/experiments/{experiment_id}/runs/{each['run_id']}?{UI_SIDE}"
                      if experiment_id else "")
            name = str(each.get("name", each["run_id"])).replace("[", "(").replace("]", ")")
            shown_name = f"[{name}]({target})" if target else name
            line += (f"\n- {each.get('group', '')}: {each.get('metric')} "
                     f"{float(each['value']):.4g} ({shown_name})")
    return f"{kept}\n\n{line}" if kept else line


# The trial tags the key view shows beside the metrics: how it ended and what it ran on.
KEY_VIEW_TAGS = ("versweep.status", "versweep.torch", "versweep.cuda", "versweep.cudnn")


def _sweep_workloads(sweep: Sweep) -> list[tuple[str, str | None]]:
    named = [(t.workload, t.workload_dir) for t in sweep.trials or ()]
    if sweep.search is not None:
        named.append((sweep.search.workload, sweep.search.workload_dir))
    return list(dict.fromkeys(named))


# The runs table's own column ids (MLflow 3.17's UI): the run name, then Created and Duration.
RUN_NAME_COLUMN = "attributes.`Run Name`"
RUNS_TABLE_FIXED_COLUMNS = ("runDateAndNestInfo", "duration")
# Pixels per character of a run name in the runs table, and the width's bounds.
_NAME_PX_PER_CHAR, _NAME_MIN_PX, _NAME_MAX_PX = 7, 190, 560


def run_name_width(sweep: Sweep) -> int:
    """Pixels of a runs-table column that shows the sweep's longest run name whole (a
    search's names, known only as it samples, get the widest)."""
    if sweep.search is not None or not sweep.trials:
        return _NAME_MAX_PX
    longest = max(len(t.name) for t in sweep.trials) + len(sweep_suffix("x" * 32))
    # The indent of a child row under its sweep's row, and the colour dot.
    return max(_NAME_MIN_PX, min(_NAME_MAX_PX, _NAME_PX_PER_CHAR * longest + 60))


def key_view(current: str | None, sweep: Sweep, now_ms: int | None = None) -> str | None:
    """The experiment's key-metrics view (MLflow's saved-view envelope around the runs
    table's state) with this sweep's columns added, or None when it has them already.

    Columns: each workload's best metric (a search's own metric too), then KEY_VIEW_TAGS;
    columns an earlier sweep added stay. A view the UI cannot read is replaced.
    """
    from sweeps import workloads

    kept: list[str] = []
    kept_width = 0
    created = now_ms if now_ms is not None else _now_ms()
    try:
        envelope = json.loads(current) if current else {}
        state = json.loads(envelope.get("state") or "{}")
        kept = [str(c) for c in state.get("selectedColumns", []) if isinstance(c, str)]
        kept_width = int((state.get("columnWidths") or {}).get(RUN_NAME_COLUMN) or 0)
        created = int(envelope.get("createdAt", created))
    except (ValueError, TypeError, AttributeError):
        kept, kept_width = [], 0
    metrics = []
    for workload, directory in _sweep_workloads(sweep):
        try:
            best = workloads.get(workload, directory).best_metric
        except UserError:
            continue
        if best:
            metrics.append(best)
    if sweep.search is not None:
        metrics.append(sweep.search.metric)
    wanted = [f"metrics.`{m}`" for m in metrics] + [f"tags.`{t}`" for t in KEY_VIEW_TAGS]
    columns = list(dict.fromkeys([*kept, *wanted]))
    width = max(kept_width, run_name_width(sweep))
    if current and columns == kept and width == kept_width:
        return None
    # The run name column wide enough for the sweep's names (MLflow's default, 190 px,
    # shows 'rnn_bench 1x3...'). The UI applies widths only to the columns its state
    # orders, so the order lists every column the table shows, in the table's own order.
    state_text = json.dumps({
        "selectedColumns": columns,
        "columnOrder": [RUN_NAME_COLUMN, *RUNS_TABLE_FIXED_COLUMNS, *columns],
        "columnWidths": {RUN_NAME_COLUMN: width}})
    return json.dumps({"name": KEY_VIEW_NAME, "createdAt": created,
                       "updatedAt": now_ms if now_ms is not None else _now_ms(),
                       "state": state_text})


# The parent run's legend of its trials' metrics: unit, which way is better, what it is.
METRICS_ARTIFACT = "metrics.json"


def metrics_legend(sweep: Sweep) -> dict[str, dict[str, dict[str, Any]]]:
    """Workload -> metric -> {unit, better, per_step, description}, from the plug-ins of the
    sweep's workloads (sweeps/workloads): what each number in the runs table means."""
    from sweeps import workloads

    legend: dict[str, dict[str, dict[str, Any]]] = {}
    for workload, directory in _sweep_workloads(sweep):
        if workload in legend:
            continue
        try:
            plugin = workloads.get(workload, directory)
        except UserError:
            continue
        legend[workload] = {m.name: {"unit": m.unit, "better": m.better or "neither",
                                           "per_step": m.per_step,
                                           "description": m.description}
                                  for m in plugin.metrics}
    return legend


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
              "`versweep.torch`, ...), its metrics, `worker.log` and `environment.txt`. "
              "Metric names carry their unit (`ms_per_batch_median`: milliseconds, "
              "`words_per_second`, `epoch_seconds`; perplexities and losses have none); "
              f"`{METRICS_ARTIFACT}` of a parent run says what each one is.",
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


# The project's checkout: its git revision is every run's source (mlflow.source.*).
PROJECT_ROOT = Path(__file__).resolve().parents[2]


def _git(*args: str) -> str:
    try:
        done = subprocess.run(["git", "-C", str(PROJECT_ROOT), *args], capture_output=True,
                              text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return ""
    return done.stdout.strip() if done.returncode == 0 else ""


@functools.lru_cache(maxsize=1)
def source_tags() -> dict[str, str]:
    """MLflow's source tags for every run: the entry point, and where versweep is a git
    checkout, its commit, branch and remote (credentials taken off), and whether the
    checkout had uncommitted changes (``versweep.git_dirty``). Read once per process."""
    # The UI shows a source name's last path part: "sweeps/run.py" reads "run.py".
    tags = {"mlflow.source.type": "LOCAL", "mlflow.source.name": "sweeps/run.py"}
    if not (PROJECT_ROOT / ".git").exists():
        return tags
    commit = _git("rev-parse", "HEAD")
    if not re.fullmatch(r"[0-9a-f]{40}", commit):
        return tags
    tags["mlflow.source.git.commit"] = commit
    branch = _git("rev-parse", "--abbrev-ref", "HEAD")
    if branch and branch != "HEAD":
        tags["mlflow.source.git.branch"] = branch
    remote = _git("config", "--get", "remote.origin.url")
    if remote:
        # Any user info (a token, user:password) is taken off, not starred.
        tags["mlflow.source.git.repoURL"] = re.sub(r"//[^/@]*@", "//", remote)
    dirty = _git("status", "--porcelain", "--untracked-files=no")
    tags["versweep.git_dirty"] = "true" if dirty else "false"
    return tags


# Where the canonical PTB files come from (sweeps/datasets.py), for the dataset's profile.
PTB_NAME = "ptb"


def dataset_of(event: dict) -> Any:
    """The MLflow dataset input of an ``env`` event whose workload read a real corpus (its
    data_dir, identified by the files' git blob ids), or None (no data, synthetic data)."""
    from mlflow.entities import Dataset, DatasetInput, InputTag

    data = event.get("data")
    if not isinstance(data, dict) or data.get("synthetic") is not False:
        return None
    blobs = data.get("git_blob_sha1")
    if not isinstance(blobs, dict) or not blobs:
        return None
    source = str(data.get("source") or "")
    canonical = data.get("canonical_ptb") is True
    digest = hashlib.sha1(json.dumps(blobs, sort_keys=True).encode()).hexdigest()[:10]
    name = PTB_NAME if canonical else (Path(source).name or "corpus")
    profile = {"files": {k: {"git_blob_sha1": v} for k, v in sorted(blobs.items())},
               "canonical_ptb": canonical}
    dataset = Dataset(name=name, digest=digest, source_type="local",
                      source=json.dumps({"uri": source}), profile=json.dumps(profile))
    return DatasetInput(dataset, tags=[InputTag("mlflow.data.context", "train")])


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

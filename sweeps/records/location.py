"""Where a sweep's records are: the tracking URI a command was given (resolved and checked
once), a SQLite store's database file and the artifact folder beside it.

No mlflow here (store.py names these too): a report resolves its store and reads a local
one without importing mlflow, which alone costs about a second (docs/performance.md).
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import unquote

from sweeps import validate
from sweeps.errors import UserError

# Where a SQLite store's artifacts go: next to the database, one folder per experiment.
ARTIFACTS_DIR_NAME = "mlartifacts"

# Schemes MLflow has tracking stores for (the part before any "+dialect").
_KNOWN_SCHEMES = ("sqlite", "file", "http", "https", "postgresql", "mysql", "mssql",
                  "databricks", "databricks-uc", "uc")


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
    if not value or validate.has_control(value):
        raise UserError(f"{source} {validate.shown(value)}: give a tracking URI on one line, "
                        "e.g. sqlite:///mlflow.db or http://host:5000")
    if "://" not in value and ":" not in value.split("/", 1)[0]:
        # A bare path: a SQLite file if it looks like one, else MLflow's file store.
        path = Path(value).expanduser()
        path = path if path.is_absolute() else cwd / path
        if path.suffix in (".db", ".sqlite", ".sqlite3"):
            return _sqlite_uri(validate.store_path(path, source, file=True))
        folder = validate.store_path(path, source, file=False)
        _file_store_allowed(value, source)
        return folder.resolve().as_uri()
    scheme = value.split(":", 1)[0].lower()
    if scheme == "file":
        _file_store_allowed(value, source)
    if scheme.split("+", 1)[0] not in _KNOWN_SCHEMES:
        raise UserError(
            f"{source} {validate.shown(value)}: unknown scheme '{scheme}'; "
            "use sqlite:///path/to/mlflow.db, http://host:port of an mlflow server, "
            "or a database URI MLflow supports"
        )
    if scheme == "sqlite":
        rest = value[len("sqlite:///"):] if value.startswith("sqlite:///") else ""
        if not rest or rest == ":memory:":
            raise UserError(
                f"{source} '{value}': an in-memory SQLite store forgets every record when the "
                "process ends and trials run in other processes; name a file, "
                "e.g. sqlite:///mlflow.db"
            )
        path = Path(unquote(rest)).expanduser()  # sqlite:///~/x.db: the home's, not ./~
        return _sqlite_uri(validate.store_path(path if path.is_absolute() else cwd / path,
                                               source, file=True))
    if scheme in ("http", "https"):
        validate.url(value, source, example="http://127.0.0.1:5000")
    return value


def _file_store_allowed(value: str, source: str) -> None:
    """MLflow 3 keeps its folder store (file://, a bare folder) only behind
    MLFLOW_ALLOW_FILE_STORE, with a long notice; here one line says what to give instead."""
    if os.environ.get("MLFLOW_ALLOW_FILE_STORE", "").strip().lower() in ("1", "true", "yes"):
        return
    raise UserError(
        f"{source} {validate.shown(value)}: MLflow 3 no longer takes a folder (file://) as a "
        "tracking store; give a SQLite file ending in .db (e.g. sqlite:///mlflow.db or "
        "records.db) or an mlflow server's http://host:port")


def sqlite_path(tracking_uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI; None for any other store."""
    if not tracking_uri.startswith("sqlite:///"):
        return None
    return Path(unquote(tracking_uri[len("sqlite:///"):]))


def holds_a_store(db: Path) -> bool:
    """Whether a SQLite store's file holds a database: a missing or empty (0-byte) file
    holds no records, and reading it through MLflow would write a new store into it."""
    try:
        return db.is_file() and db.stat().st_size > 0
    except OSError:
        return False


def artifact_root(tracking_uri: str) -> Path | None:
    """Where a SQLite store's artifacts go (``<db dir>/mlartifacts``); None for other stores."""
    db = sqlite_path(tracking_uri)
    return db.parent / ARTIFACTS_DIR_NAME if db is not None else None

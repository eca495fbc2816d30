"""Reading a sweep's records back: the other half of the MLflow layout store.py writes.

Two readers with one interface (StoreReader): a SQLite store (the embedded default) is
read directly and read-only from MLflow's tables, a handful of queries for a whole
sweep and no mlflow import; every other store, and a SQLite file whose schema is not
the one expected, goes through MlflowClient, opened by store.open_client. analysis/
reads the records only through this module (and store.py for artifacts it downloads).
"""

from __future__ import annotations

import concurrent.futures
import functools
import math
import os
import re
import sqlite3
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from sweeps.errors import UserError
from sweeps.records.location import holds_a_store

# search_runs page size: MLflow's largest for SQL stores.
PAGE_SIZE = 1000
# Threads that read from a remote store at once.
DOWNLOAD_THREADS = 8


@dataclass
class RunView:
    """What both readers return for one run: MLflow's run, without MLflow's classes."""

    run_id: str
    name: str
    status: str  # MLflow's: RUNNING, FINISHED, KILLED, FAILED, SCHEDULED
    start_time: int  # ms since the epoch
    artifact_uri: str
    tags: dict[str, str] = field(default_factory=dict)
    params: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)


def sqlite_file(tracking_uri: str) -> Path | None:
    """The database of a ``sqlite:///`` URI (as records.store.sqlite_path, without mlflow)."""
    if not tracking_uri.startswith("sqlite:///"):
        return None
    return Path(unquote(tracking_uri[len("sqlite:///"):]))


def shown_uri(tracking_uri: str) -> str:
    db = sqlite_file(tracking_uri)
    return str(db) if db is not None else re.sub(r"//([^:/@]+):[^@/]*@", r"//\1:***@",
                                                  tracking_uri)


class StoreReader:
    """The few questions a report asks a store; one implementation per way of asking."""

    def experiment(self, name: str) -> tuple[str, str] | None:
        """(experiment id, lifecycle stage) of the named experiment, or None."""
        raise NotImplementedError

    def experiment_names(self) -> list[str]:
        raise NotImplementedError

    def sweep_parents(self, experiment_id: str) -> list[RunView]:
        """Active runs tagged versweep.kind=sweep, any status."""
        raise NotImplementedError

    def finished_children(self, experiment_id: str, parent_run_id: str) -> list[RunView]:
        """Active FINISHED runs whose mlflow.parentRunId is ``parent_run_id``."""
        raise NotImplementedError

    def children_of(self, experiment_id: str, parent_run_ids: Sequence[str]) -> list[RunView]:
        """The finished children of several sweeps (a report over several sweeps)."""
        return [run for parent in parent_run_ids
                for run in self.finished_children(experiment_id, parent)]

    def histories(self, run_ids: Sequence[str], key: str) -> dict[str, list]:
        """run id -> [(timestamp, step, value)] of one metric, in logging order."""
        raise NotImplementedError

    def close(self) -> None:
        pass


def open_reader(tracking_uri: str, direct_sqlite: bool = True) -> StoreReader:
    db = sqlite_file(tracking_uri)
    if db is not None and not holds_a_store(db):
        # Opening it through MLflow would create an empty database; a report only reads.
        raise UserError(f"no MLflow store at {db}: run a sweep there first "
                        "(python sweeps/run.py --grid smoke) or point --tracking-uri / "
                        "MLFLOW_TRACKING_URI at the store that holds it")
    if db is not None and direct_sqlite:
        reader = SqliteReader.open(db)
        if reader is not None:
            return reader
    return ClientReader(tracking_uri)


class SqliteReader(StoreReader):
    """Reads MLflow's SQL schema from a SQLite file, read-only (mode=ro: no lock is taken
    for writing, and a sweep still writing to the store is not disturbed)."""

    # The tables and columns read; a store without all of them goes through MLflow.
    SCHEMA = {
        "experiments": {"experiment_id", "name", "lifecycle_stage"},
        "runs": {"run_uuid", "name", "status", "start_time", "artifact_uri", "experiment_id",
                 "lifecycle_stage"},
        "tags": {"key", "value", "run_uuid"},
        "params": {"key", "value", "run_uuid"},
        "latest_metrics": {"key", "value", "is_nan", "run_uuid"},
        "metrics": {"key", "value", "timestamp", "step", "is_nan", "run_uuid"},
    }

    def __init__(self, connection: sqlite3.Connection):
        self.db = connection

    @classmethod
    def open(cls, path: Path) -> SqliteReader | None:
        try:
            connection = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True,
                                         timeout=20.0)
            for table, columns in cls.SCHEMA.items():
                found = {row[1] for row in connection.execute(f"PRAGMA table_info({table})")}
                if not columns <= found:
                    connection.close()
                    return None
        except sqlite3.Error:
            return None
        return cls(connection)

    def experiment(self, name: str) -> tuple[str, str] | None:
        rows = self.db.execute("SELECT experiment_id, lifecycle_stage FROM experiments "
                               "WHERE name = ?", (name,)).fetchall()
        if len(rows) > 1:  # the same name in several MLflow workspaces: take the default's
            rows = self.db.execute("SELECT experiment_id, lifecycle_stage FROM experiments "
                                   "WHERE name = ? AND workspace = 'default'",
                                   (name,)).fetchall()
        return (str(rows[0][0]), rows[0][1]) if rows else None

    def experiment_names(self) -> list[str]:
        return sorted(row[0] for row in self.db.execute(
            "SELECT name FROM experiments WHERE lifecycle_stage = 'active'"))

    def _runs(self, where: str, args: tuple) -> list[RunView]:
        """The runs selected by ``where`` (over runs r), with tags, params, latest metrics."""
        selected = f"SELECT r.run_uuid FROM runs r WHERE {where}"
        runs = {row[0]: RunView(row[0], row[1] or "", row[2] or "", row[3] or 0, row[4] or "")
                for row in self.db.execute(
                    "SELECT run_uuid, name, status, start_time, artifact_uri FROM runs "
                    f"WHERE run_uuid IN ({selected})", args)}
        if not runs:
            return []
        for run_id, key, value in self.db.execute(
                f"SELECT run_uuid, key, value FROM tags WHERE run_uuid IN ({selected})", args):
            runs[run_id].tags[key] = value
        for run_id, key, value in self.db.execute(
                f"SELECT run_uuid, key, value FROM params WHERE run_uuid IN ({selected})", args):
            runs[run_id].params[key] = value
        for run_id, key, value, is_nan in self.db.execute(
                "SELECT run_uuid, key, value, is_nan FROM latest_metrics "
                f"WHERE run_uuid IN ({selected})", args):
            runs[run_id].metrics[key] = math.nan if is_nan else float(value)
        return list(runs.values())

    def sweep_parents(self, experiment_id: str) -> list[RunView]:
        return self._runs(
            "r.experiment_id = ? AND r.lifecycle_stage = 'active' AND EXISTS (SELECT 1 FROM "
            "tags t WHERE t.run_uuid = r.run_uuid AND t.key = 'versweep.kind' "
            "AND t.value = 'sweep')", (int(experiment_id),))

    def finished_children(self, experiment_id: str, parent_run_id: str) -> list[RunView]:
        return self.children_of(experiment_id, [parent_run_id])

    def children_of(self, experiment_id: str, parent_run_ids: Sequence[str]) -> list[RunView]:
        # One bulk read for every chosen sweep (a sweep has at most a few hundred
        # parents' worth of ids to bind, far below SQLite's limit).
        marks = ",".join("?" * len(parent_run_ids))
        return self._runs(
            "r.experiment_id = ? AND r.lifecycle_stage = 'active' AND r.status = 'FINISHED' "
            "AND EXISTS (SELECT 1 FROM tags t WHERE t.run_uuid = r.run_uuid "
            f"AND t.key = 'mlflow.parentRunId' AND t.value IN ({marks}))",
            (int(experiment_id), *parent_run_ids))

    def histories(self, run_ids: Sequence[str], key: str) -> dict[str, list]:
        found: dict[str, list] = {run_id: [] for run_id in run_ids}
        for start in range(0, len(run_ids), 500):  # SQLite's limit on bound parameters
            chunk = list(run_ids[start:start + 500])
            marks = ",".join("?" * len(chunk))
            for run_id, stamp, step, value, is_nan in self.db.execute(
                    "SELECT run_uuid, timestamp, step, value, is_nan FROM metrics "
                    f"WHERE key = ? AND run_uuid IN ({marks}) ORDER BY timestamp, rowid",
                    (key, *chunk)):
                found[run_id].append((stamp or 0, int(step), math.nan if is_nan else value))
        return found

    def close(self) -> None:
        self.db.close()


class ClientReader(StoreReader):
    """Asks MlflowClient: any store MLflow can open (a server, PostgreSQL, ...)."""

    def __init__(self, tracking_uri: str):
        self.client = reading_client(tracking_uri)

    def experiment(self, name: str) -> tuple[str, str] | None:
        found = self.client.get_experiment_by_name(name)
        return (found.experiment_id, found.lifecycle_stage) if found is not None else None

    def experiment_names(self) -> list[str]:
        return sorted(e.name for e in self.client.search_experiments())

    def _search(self, experiment_id: str, query: str) -> list[RunView]:
        """Every run matching ``query``, page by page (search_runs returns one page)."""
        runs: list[RunView] = []
        token = None
        while True:
            page = self.client.search_runs([experiment_id], filter_string=query,
                                           max_results=PAGE_SIZE, page_token=token)
            runs.extend(RunView(run.info.run_id, run.info.run_name or "", run.info.status,
                             run.info.start_time or 0, run.info.artifact_uri or "",
                             dict(run.data.tags), dict(run.data.params),
                             dict(run.data.metrics)) for run in page)
            token = page.token
            if not token:
                return runs

    def sweep_parents(self, experiment_id: str) -> list[RunView]:
        return self._search(experiment_id, "tags.`versweep.kind` = 'sweep'")

    def finished_children(self, experiment_id: str, parent_run_id: str) -> list[RunView]:
        from sweeps.records.store import quote  # this reader imports mlflow anyway

        return self._search(experiment_id, f"tags.`mlflow.parentRunId` = {quote(parent_run_id)} "
                                           "and attributes.status = 'FINISHED'")

    def histories(self, run_ids: Sequence[str], key: str) -> dict[str, list]:
        def one(run_id: str) -> list:
            return [(m.timestamp or 0, int(m.step), float(m.value))
                    for m in self.client.get_metric_history(run_id, key)]

        with concurrent.futures.ThreadPoolExecutor(max_workers=DOWNLOAD_THREADS) as pool:
            return dict(zip(run_ids, pool.map(one, run_ids), strict=True))


@functools.lru_cache(maxsize=8)
def reading_client(tracking_uri: str) -> Any:
    """One opened MlflowClient per store and process (opening checks the store: not free)."""
    from sweeps.records.store import open_client  # imports mlflow: seconds, only when needed

    return open_client(tracking_uri)


def download_text(client: Any, run_id: str, name: str) -> str:
    with tempfile.TemporaryDirectory() as scratch:
        path = client.download_artifacts(run_id, name, scratch)
        return Path(path).read_text(errors="replace")


def local_artifact_dir(artifact_uri: str) -> Path | None:
    """The directory of a ``file:`` artifact URI (or a bare path); None for remote stores."""
    found = _local_artifact_path(artifact_uri)
    return Path(found) if found is not None else None


def local_artifact_file(artifact_uri: str, name: str) -> str | None:
    """The path of artifact ``name`` of a run whose artifacts are on this machine (see
    local_artifact_dir), as text: a report opens one per run, and a Path object per run
    costs more than the read of a small file; None for remote stores."""
    found = _local_artifact_path(artifact_uri)
    return os.path.join(found, name) if found is not None else None


def _local_artifact_path(artifact_uri: str) -> str | None:
    if not artifact_uri:
        return None
    parsed = urlparse(artifact_uri)
    if parsed.scheme == "file":
        return unquote(parsed.path)
    if parsed.scheme == "" and artifact_uri.startswith("/"):
        return artifact_uri
    return None

"""Helpers for tests that run sweeps as a user does: the command, a private Ray, MLflow reads."""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
RUN = ROOT / "sweeps" / "run.py"

BENCHMARKS = str(ROOT / "benchmarks")
if BENCHMARKS not in sys.path:
    sys.path.insert(0, BENCHMARKS)

# How a sweep is started and ended, shared with the fault benchmarks (one way, not two):
# env_grid(name, seeds), the smallest real sweep (`env` trials on the local backend, one per
# seed); sweep_env(ray_tmp), the environment without an outer store or Ray; and
# own_pids_mentioning(text), this user's processes that mention a private Ray temp dir.
from fault_sweep import end_processes_of, env_grid, own_pids_mentioning, sweep_env  # noqa: E402,F401


@pytest.fixture
def ray_tmp():
    """A short, private Ray temp dir (Unix socket paths must stay under 108 bytes).

    Afterwards, any process still running from it (a Ray cluster whose driver was
    killed) is ended by pid: only processes this test started mention this path.
    """
    path = tempfile.mkdtemp(prefix="vsray-", dir="/tmp")
    yield path
    end_processes_mentioning(path, remove=True)


def end_processes_mentioning(path: str, *, remove: bool = False) -> None:
    """SIGKILL this user's processes that mention ``path`` (a private Ray temp dir);
    with ``remove``, delete the directory too. Only processes a test started mention it."""
    end_processes_of(path)
    if remove:
        shutil.rmtree(path, ignore_errors=True)


def versweep(args: list[str], *, cwd: Path, ray_tmp: str, timeout: float = 600,
             **extra_env: str) -> subprocess.CompletedProcess:
    """Run ``python sweeps/run.py ARGS`` in ``cwd`` and wait for it."""
    return subprocess.run([sys.executable, str(RUN), *args, "--num-cpus", "2"], cwd=cwd,
                          env=sweep_env(ray_tmp, **extra_env), capture_output=True, text=True,
                          timeout=timeout)


def sweep_runs(tracking_uri: str, experiment: str):
    """(parent runs, child runs) of an experiment, read with MLflow's own client.

    The client is opened as the sweep opens it (under RECORDS' lock for SQLite), so
    reading while a driver creates a fresh database cannot corrupt it.
    """
    from sweeps.records.store import open_client

    client = open_client(tracking_uri)
    found = client.get_experiment_by_name(experiment)
    assert found is not None, f"no experiment {experiment!r} at {tracking_uri}"
    runs = client.search_runs([found.experiment_id], max_results=1000)
    parents = [r for r in runs if r.data.tags.get("versweep.kind") == "sweep"]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    return client, parents, children




def _counting():
    """benchmarks/fault_figures.py, the one place a fault's figures are counted."""
    import fault_figures

    return fault_figures


def fault_figures(tracking_uri: str, experiment: str, planned, *, result_metric: str | None,
                  expected: int | None = None) -> dict:
    """A fault's figures (finished, lost, duplicated, inconsistent, and the problems), counted
    from the store by benchmarks/fault_figures.py as the fault benchmarks count them."""
    from sweeps.records.store import open_client

    return _counting().count(open_client(tracking_uri), experiment, planned,
                         result_metric=result_metric, expected=expected)


def assert_nothing_lost(figures: dict) -> None:
    """Lost, duplicated and inconsistent are 0, and every planned trial finished."""
    problem = _counting().nothing_lost(figures)
    assert problem is None, problem


# Ports free_port() has handed out in this test run: the kernel may give a just-released
# port again, and one `ray start` takes a dozen of them before it binds any (seen: the
# dashboard and the metrics exporter both given 57111, so `ray start` refused).
_GIVEN_PORTS: set[int] = set()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now, and not given out before here."""
    for _ in range(1000):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        if port not in _GIVEN_PORTS:
            _GIVEN_PORTS.add(port)
            return port
    raise RuntimeError("no free TCP port on 127.0.0.1 that was not already handed out")


@contextlib.contextmanager
def running_mlflow_server(home: Path, db: Path | str, *, workers: int = 1,
                          env: dict[str, str] | None = None):
    """A real ``mlflow server`` on 127.0.0.1 over ``db``; yields its URL.

    ``db`` is a SQLite file, or a backend-store URI (``postgresql://...``, from
    tests/postgres.py: the deployment a cluster's trials report to). Either way the server
    proxies the artifacts (``--artifacts-destination home/artifacts``): a client anywhere
    logs them through HTTP, into that folder, and a run's artifact URI is
    ``mlflow-artifacts:/...``. Its log is ``home/server.log``. It is stopped afterwards as a
    whole process group (uvicorn runs its workers as children). ``env``: more variables
    for the server (``PGPASSFILE``). benchmarks/mlflow_server.py runs it, as it runs the
    benchmarks' servers.
    """
    from mlflow_server import MlflowServer

    with MlflowServer(home, db, port=free_port(), workers=workers, env=env) as server:
        yield server.url

"""How a fault benchmark starts its sweep and waits for the moment of its fault.

Shared by benchmarks/fault_mlflow_outage.py, fault_docker.py and fault_driver_kill.py, so
that every fault is injected into the same kind of sweep, started the same way: the real
``sweeps/run.py`` as a child process with its own local Ray (``--num-cpus 2``), its output
in ``driver.log`` (``driver-resume.log`` for ``--resume``) beside the sweep, and neither an
outer tracking URI nor an outer Ray address leaking in from the caller's environment.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RUN = ROOT / "sweeps" / "run.py"


def sweep_env(ray_tmp: str | None = None, **extra: str) -> dict:
    """This process's environment for a sweep: without MLFLOW_TRACKING_URI and RAY_ADDRESS
    (the fault's own store and Ray only), with RAY_TMPDIR where given."""
    env = dict(os.environ)
    for name in ("MLFLOW_TRACKING_URI", "RAY_ADDRESS"):
        env.pop(name, None)
    if ray_tmp is not None:
        env["RAY_TMPDIR"] = ray_tmp
    env.update(extra)
    return env


def launch(home: Path, grid: Path, experiment: str, env: dict, *extra: str,
           tracking_uri: str | None = None) -> subprocess.Popen:
    """``sweeps/run.py --grid GRID`` started in ``home`` (its store: ./mlflow.db there unless
    ``tracking_uri``); ``extra`` are further arguments (``--resume`` writes its own log)."""
    log = open(home / ("driver-resume.log" if "--resume" in extra else "driver.log"), "w")
    store = ["--tracking-uri", tracking_uri] if tracking_uri else []
    proc = subprocess.Popen(
        [sys.executable, str(RUN), "--grid", str(grid), *store, "--experiment", experiment,
         "--num-cpus", "2", *extra],
        cwd=home, env=env, stdout=log, stderr=subprocess.STDOUT)
    log.close()
    return proc


def wait_until(driver: subprocess.Popen, home: Path, reached: Callable[[], bool], what: str,
               limit_s: float = 600, poll_s: float = 0.3) -> None:
    """Wait for ``reached()``; a sweep that ends first, or a limit passed, is an error that
    quotes the driver's log."""
    deadline = time.monotonic() + limit_s
    while not reached():
        if driver.poll() is not None:
            raise RuntimeError(f"the sweep ended before {what}:\n"
                               + (home / "driver.log").read_text(errors="replace")[-3000:])
        if time.monotonic() > deadline:
            raise RuntimeError(f"no {what} in {limit_s:.0f} s")
        time.sleep(poll_s)


def planned_keys(grid: Path) -> list[str] | None:
    """The trial keys a grid plans; None for a search (it samples its keys as it runs)."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from sweeps.grid.load import load_sweep

    sweep = load_sweep(str(grid))
    return None if sweep.is_search else [trial.key for trial in sweep.trials]

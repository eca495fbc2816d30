"""How a fault benchmark starts its sweep and waits for the moment of its fault.

Shared by benchmarks/fault_mlflow_outage.py, fault_docker.py and fault_driver_kill.py, so
that every fault is injected into the same kind of sweep, started the same way: the real
``sweeps/run.py`` as a child process with its own local Ray (``--num-cpus 2``), its output
in ``driver.log`` (``driver-resume.log`` for ``--resume``) beside the sweep, and neither an
outer tracking URI nor an outer Ray address leaking in from the caller's environment.

The smallest real sweep (``env_grid``), the sweep's environment (``sweep_env``) and the
ending of a dead sweep's processes (``end_processes_of``) are also the tests' own
(tests/sweeping.py), so that a test and a benchmark start and end a sweep alike.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RUN = ROOT / "sweeps" / "run.py"


def env_grid(name: str, seeds, *, backend: str = "local", timeout_s: int = 120,
             images: list[str] | None = None, **sweep) -> str:
    """The smallest real sweep, as grid text: ``env`` trials, one per seed, one at a time,
    one torch thread. ``images`` for the docker and venv backends; ``sweep``: more keys of
    its ``[sweep]`` table (``container_memory="2g"``)."""
    table = {"name": name, "backend": backend, "device": "cpu"}
    if images is not None:
        table["images"] = list(images)
    table.update(sweep)
    table.update(trial_timeout_s=timeout_s, max_concurrent=1)
    lines = ["[sweep]", *(f"{key} = {json.dumps(value)}" for key, value in table.items()),
             "", "[[group]]", 'workload = "env"', f"axes.seed = {json.dumps(list(seeds))}",
             "config.num_threads = 1", ""]
    return "\n".join(lines)


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


def own_pids_mentioning(text: str) -> list[int]:
    """Pids of this user's processes whose command line or environment contains ``text``.

    The environment counts because Ray renames its worker processes ("ray::_trainable"),
    but they keep the RAY_TMPDIR their cluster was started with.
    """
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if entry.stat().st_uid != os.getuid():
                continue
            seen = (entry / "cmdline").read_bytes().replace(b"\0", b" ")
            seen += (entry / "environ").read_bytes()
        except OSError:
            continue
        if text.encode() in seen:
            pids.append(int(entry.name))
    return pids


def end_processes_of(text: str, timeout: float = 30) -> list[int]:
    """SIGKILL, until none is left or ``timeout`` passed, every process of this user that
    mentions ``text`` (a run's private Ray temp dir: only that run's processes do), as a
    dead machine ends them; returns those still alive (none, normally)."""
    deadline = time.monotonic() + timeout
    while (pids := own_pids_mentioning(text)) and time.monotonic() < deadline:
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.2)
    return own_pids_mentioning(text)


def planned_keys(grid: Path) -> list[str] | None:
    """The trial keys a grid plans; None for a search (it samples its keys as it runs)."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from sweeps.grid.load import load_sweep

    sweep = load_sweep(str(grid))
    return None if sweep.is_search else [trial.key for trial in sweep.trials]

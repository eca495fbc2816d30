"""Fault: the MLflow tracking server stops in the middle of a real sweep, then starts again.

The real parts: a real ``mlflow server`` on a SQLite store (a free loopback port), a real
sweep (``python sweeps/run.py``, Ray Tune, the local backend) of ``--trials`` trials of a
few seconds each. The worker is a torch-free stand-in for the ``env`` workload
($VERSWEEP_PYTHON, as tests/test_mlflow_ui.py does) that sends its env event, one metric
event a second for ``--trial-seconds`` seconds and its result, so every trial writes to the
store while it runs. Once ``--after`` trials have finished, the server is killed (its whole
process group, SIGKILL: nothing answers, connections are refused) or, with ``--mode stop``,
frozen with SIGSTOP (connections hang); ``--outage`` seconds later it is started again on
the same port and store (or sent SIGCONT), and the sweep is left to finish. If the sweep
fails instead, the same command with ``--resume`` is run once.

Then the figures, counted from the store: trials finished (keys with one FINISHED run),
lost (planned keys with no FINISHED run), duplicated (keys with more than one FINISHED
run), inconsistent records (a FINISHED trial run without versweep.status, an ok trial
without its result metric, a run left RUNNING, a parent run not FINISHED or more than one,
a child run of no planned key), with the outage's length and the sweep's wall time.

    python benchmarks/fault_mlflow_outage.py --trials 10 --outage 30
    python benchmarks/fault_mlflow_outage.py --backend postgres --trials 4 --after 1 --outage 15

``--backend postgres``: the server runs as a team's does (README, "A team's tracking
server"): on a private PostgreSQL (tests/postgres.py), which stays up while the server is
away, with the artifacts proxied by the server.

tests/test_faults.py runs ``measure`` and asserts lost, duplicated and inconsistent are 0.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import fault_figures  # noqa: E402  (benchmarks/fault_figures.py: the figures of every fault)
import fault_sweep  # noqa: E402  (how every fault starts its sweep)
from mlflow_server import MlflowServer  # noqa: E402  (one port, one store: restartable)

EXPERIMENT = "outage"
RESULT_METRIC = "device_check_value"

# The env workload's worker, without torch: env, one metric a second, the result.
STANDIN = r'''#!{python} -S
import json, sys, time
if sys.argv[1:2] == ["-c"]:
    print("2.99.0+standin")
    sys.exit(0)
workload, config = sys.argv[3], json.loads(sys.argv[5])
def send(event):
    event["v"] = 1
    sys.stdout.write(json.dumps(event) + "\n")
    sys.stdout.flush()
send({{"event": "env", "torch": "2.99.0+standin", "cuda": None, "cudnn": None,
      "python": "%d.%d.%d" % sys.version_info[:3], "device": "cpu",
      "workload": workload, "config": config}})
for step in range({seconds}):
    time.sleep(1.0)
    send({{"event": "metric", "step": step, "metrics": {{"device_check_seconds": 0.001}}}})
send({{"event": "result", "metrics": {{"device_check_seconds": 0.001,
                                     "device_check_value": 64.0}}}})
'''


def _finished_children(url: str) -> int:
    from mlflow import MlflowClient

    client = MlflowClient(url)
    found = client.get_experiment_by_name(EXPERIMENT)
    if found is None:
        return 0
    runs = client.search_runs([found.experiment_id],
                              "tags.`versweep.kind` = 'trial' and attributes.status = 'FINISHED'",
                              max_results=1000)
    return len(runs)


def count(url: str, planned: list[str], *, experiment_name: str = EXPERIMENT,
          result_metric: str | tuple[str, ...] = RESULT_METRIC) -> dict:
    """The figures, read from the store (a server's URL or any tracking URI); shared by
    every fault script (benchmarks/fault_docker.py). An ok trial must have its result
    metric (one of ``result_metric``, for a sweep of several workloads)."""
    from mlflow import MlflowClient

    return fault_figures.count(MlflowClient(url), experiment_name, planned,
                               result_metric=result_metric)


def measure(home: Path, *, trials: int = 10, trial_seconds: int = 3, after: int = 3,
            outage: float = 30.0, mode: str = "kill", ray_tmp: str | None = None,
            wait_limit_s: float | None = None, backend_uri: str | None = None,
            say=print) -> dict:
    """Run the fault once in ``home``; return the figures (see the module's docstring)."""
    home.mkdir(parents=True, exist_ok=True)
    python = home / "standin-python"
    python.write_text(STANDIN.format(python=sys.executable, seconds=trial_seconds))
    python.chmod(0o755)
    grid = home / "outage.toml"
    grid.write_text(fault_sweep.env_grid(EXPERIMENT, range(1, trials + 1), timeout_s=300))
    env = fault_sweep.sweep_env(ray_tmp, VERSWEEP_PYTHON=str(python))
    if wait_limit_s is not None:  # how long a store call waits (sweeps/records/store.py)
        env["VERSWEEP_STORE_WAIT_S"] = str(wait_limit_s)
    server = MlflowServer(home, backend_uri or home / "mlflow.db")
    server.start()
    figures: dict = {"mode": mode, "trials": trials, "trial_seconds": trial_seconds,
                     "backend": (backend_uri or "sqlite").split(":")[0]}
    try:
        started = time.monotonic()
        driver = fault_sweep.launch(home, grid, EXPERIMENT, env, tracking_uri=server.url)
        deadline = started + 600
        fault_sweep.wait_until(driver, home, lambda: _finished_children(server.url) >= after,
                               f"{after} finished trial(s) before the outage", limit_s=600,
                               poll_s=0.5)
        figures["finished_before_outage"] = _finished_children(server.url)
        say(f"{figures['finished_before_outage']} trial(s) finished; "
            f"server {'killed' if mode == 'kill' else 'frozen'} for {outage:.0f} s")
        outage_started = time.monotonic()
        if mode == "kill":
            server.kill()
        else:
            server.signal(signal.SIGSTOP)
        time.sleep(outage)
        if mode == "kill":
            server.start()  # same port, same store
        else:
            server.signal(signal.SIGCONT)
        figures["outage_s"] = round(time.monotonic() - outage_started, 1)
        say(f"server back after {figures['outage_s']} s")
        try:
            figures["exit_code"] = driver.wait(timeout=max(60, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            driver.kill()
            driver.wait()
            figures["exit_code"] = "killed after 600 s"
        figures["sweep_wall_s"] = round(time.monotonic() - started, 1)
        driver_log = (home / "driver.log").read_text(errors="replace")
        figures["driver_tail"] = driver_log.splitlines()[-3:]
        if figures["exit_code"] != 0:
            say(f"the sweep exited {figures['exit_code']}; running it again with --resume")
            resumed = fault_sweep.launch(home, grid, EXPERIMENT, env, "--resume",
                                         tracking_uri=server.url)
            figures["resume_exit_code"] = resumed.wait(timeout=600)
            figures["sweep_wall_s"] = round(time.monotonic() - started, 1)
        figures.update(count(server.url, fault_sweep.planned_keys(grid)))
    finally:
        server.stop()
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--trial-seconds", type=int, default=3)
    parser.add_argument("--after", type=int, default=3,
                        help="trials finished before the server stops")
    parser.add_argument("--outage", type=float, default=30.0, help="seconds")
    parser.add_argument("--mode", choices=("kill", "stop"), default="kill",
                        help="kill: SIGKILL, then a new server; stop: SIGSTOP, then SIGCONT")
    parser.add_argument("--wait-limit", type=float, default=None,
                        help="$VERSWEEP_STORE_WAIT_S for the sweep (default: its own, 600 s)")
    parser.add_argument("--backend", choices=("sqlite", "postgres"), default="sqlite",
                        help="the server's store: SQLite, or a private PostgreSQL "
                             "(tests/postgres.py; needs Debian's postgresql)")
    parser.add_argument("--keep", action="store_true", help="keep the working directory")
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="vsfault-"))
    ray_tmp = tempfile.mkdtemp(prefix="vsray-", dir="/tmp")
    try:
        with contextlib.ExitStack() as stack:
            backend_uri = None
            if args.backend == "postgres":
                sys.path.insert(0, str(ROOT / "tests"))
                from postgres import migrate, running_postgres

                backend_uri = stack.enter_context(running_postgres())
                migrate(backend_uri)
            figures = measure(home, trials=args.trials, trial_seconds=args.trial_seconds,
                              after=args.after, outage=args.outage, mode=args.mode,
                              ray_tmp=ray_tmp, wait_limit_s=args.wait_limit,
                              backend_uri=backend_uri)
    finally:
        if not args.keep:
            shutil.rmtree(home, ignore_errors=True)
        shutil.rmtree(ray_tmp, ignore_errors=True)
    print(json.dumps(figures, indent=1))
    if args.keep:
        print(f"kept: {home}")
    bad = figures["lost"] + figures["duplicated"] + figures["inconsistent"]
    return 0 if bad == 0 else 1


if __name__ == "__main__":
    sys.exit(main())

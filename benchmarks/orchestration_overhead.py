"""Orchestration overhead: 20 short trials through sweeps/run.py vs a plain shell loop.

    python benchmarks/orchestration_overhead.py [--trials 20] [--rounds 2]
        [--out docs/bench/orchestration_overhead.txt]

The same 20 worker commands (the `env` workload: start Python, import torch, report,
run a tiny op, exit) run alternately (loop, sweep, loop, sweep, loop):

  shell loop   `bash loop.sh`: the commands back to back, nothing else.
  sweep        `python sweeps/run.py --grid <20 env trials> --max-concurrent 1`: Ray
               Tune, one trial at a time, every trial recorded in a local MLflow store.

Reported: the ratio of wall times of the trials after Ray has started (Tuner.fit, as
run_sweep prints it) to the mean of the two shell loops around that sweep (goal: <= 1.15
on 2 cores), Ray's start time,
the whole command's wall time, and the per-trial start-up latency (worker start to its
first event) inside Ray trials (the versweep.startup_seconds tag) and without Ray
(sweeps.execute.trial.run_trial called directly). Timings on a shared machine move with the
load; the load average is printed next to each figure.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from fault_sweep import env_grid  # noqa: E402  (the smallest real sweep, as the tests run it)


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def shell_loop(commands: list[list[str]], workdir: Path) -> float:
    """Wall seconds of `bash loop.sh` running ``commands`` back to back."""
    script = workdir / "loop.sh"
    lines = ["set -e", f"cd {shlex.quote(str(ROOT))}"]
    lines += [" ".join(shlex.quote(a) for a in cmd) + " > /dev/null" for cmd in commands]
    script.write_text("\n".join(lines) + "\n")
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", PYTHONPATH=str(ROOT))
    started = time.monotonic()
    subprocess.run(["bash", str(script)], check=True, env=env)
    return time.monotonic() - started


def sweep_run(grid: Path, workdir: Path) -> dict:
    """Run the sweep in a fresh directory; its timings and per-trial start-up latencies."""
    ray_tmp = tempfile.mkdtemp(prefix="vsbench-", dir="/tmp")
    env = dict(os.environ, RAY_TMPDIR=ray_tmp)
    env.pop("MLFLOW_TRACKING_URI", None)
    started = time.monotonic()
    done = subprocess.run([sys.executable, str(ROOT / "sweeps" / "run.py"), "--grid", str(grid),
                           "--num-cpus", "2", "--max-concurrent", "1"],
                          cwd=workdir, env=env, capture_output=True, text=True)
    wall = time.monotonic() - started
    if done.returncode != 0:
        raise SystemExit(f"the sweep failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    found = re.search(r"timings: ray start ([\d.]+) s, trials ([\d.]+) s", done.stdout)
    from sweeps.records.store import SweepRecords

    records = SweepRecords(f"sqlite:///{workdir}/mlflow.db", "overhead")
    parent = records.client.search_runs(
        [records.experiment_id(create=False)], "tags.`versweep.kind` = 'sweep'")[0]
    trials = records.list_trials(parent.info.run_id, finished_only=True)
    startup = [float(t["tags"]["versweep.startup_seconds"]) for t in trials]
    return {"ray_start": float(found.group(1)), "trials": float(found.group(2)), "wall": wall,
            "startup": startup, "ok": sum(t["status"] == "ok" for t in trials)}


def bare_startup(specs, workdir: Path) -> list[float]:
    """Start-up latency of the same workers run by sweeps.execute.trial without Ray or MLflow."""
    from sweeps.execute.backends import get_backend
    from sweeps.execute.trial import run_trial

    backend = get_backend("local")
    return [run_trial(backend, spec, log_dir=workdir / "bare-logs").startup_seconds
            for spec in specs]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", type=Path, help="also write the report here")
    args = parser.parse_args()

    from sweeps.execute.backends._base import worker_args
    from sweeps.grid.load import load_sweep

    report = [f"# orchestration overhead, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
              f"# command: python benchmarks/orchestration_overhead.py --trials {args.trials} "
              f"--rounds {args.rounds}",
              f"# machine: {os.cpu_count()} CPUs, {platform.platform()}, "
              f"python {platform.python_version()}",
              f"# trials: {args.trials} x the env workload (import torch, report, tiny op), "
              "max-concurrent 1, local backend, SQLite MLflow store"]

    def say(line: str) -> None:
        print(line, flush=True)
        report.append(line)

    for line in report:
        print(line)
    with tempfile.TemporaryDirectory(prefix="vsbench-") as tmp:
        tmp = Path(tmp)
        grid = tmp / "overhead.toml"
        grid.write_text(env_grid("overhead", range(1, args.trials + 1), timeout_s=300))
        sweep = load_sweep(str(grid))
        commands = [worker_args(sys.executable, spec) for spec in sweep.trials]
        # Loops bracket every sweep (loop, sweep, loop, sweep, loop): on a shared machine
        # the load drifts, and the mean of the two loops around a sweep is its baseline.
        loops = [shell_loop(commands, tmp)]
        say(f"shell loop 1: {loops[0]:.2f} s ({loops[0] / len(commands):.2f} s per trial)"
            f"  [load {load()}]")
        ratios = []
        for round_number in range(1, args.rounds + 1):
            workdir = tmp / f"sweep{round_number}"
            workdir.mkdir()
            result = sweep_run(grid, workdir)
            say(f"sweep {round_number}: trials {result['trials']:.2f} s after Ray started "
                f"({result['trials'] / len(commands):.2f} s per trial), Ray start "
                f"{result['ray_start']:.2f} s, whole command {result['wall']:.2f} s, "
                f"{result['ok']} ok  [load {load()}]")
            say(f"sweep {round_number}: start-up latency in Ray trials: median "
                f"{statistics.median(result['startup']):.3f} s, min "
                f"{min(result['startup']):.3f} s, max {max(result['startup']):.3f} s")
            loops.append(shell_loop(commands, tmp))
            say(f"shell loop {round_number + 1}: {loops[-1]:.2f} s "
                f"({loops[-1] / len(commands):.2f} s per trial)  [load {load()}]")
            baseline = (loops[-2] + loops[-1]) / 2
            ratios.append(result["trials"] / baseline)
            say(f"round {round_number}: ratio sweep / shell loop (after Ray started) = "
                f"{ratios[-1]:.3f}")
        bare = bare_startup(sweep.trials[:5], tmp)
        say(f"start-up latency without Ray (run_trial directly, 5 trials): median "
            f"{statistics.median(bare):.3f} s, min {min(bare):.3f} s, max {max(bare):.3f} s")
        say(f"ratio (median of {len(ratios)} rounds): {statistics.median(ratios):.3f} "
            f"(goal <= 1.15)")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text("\n".join(report) + "\n")


if __name__ == "__main__":
    main()

"""What one trial costs the orchestration as the sweep grows: 100, 1,000, 5,000 trials.

    python benchmarks/orchestration_scaling.py [--trials 100 1000 5000]
        [--compare 2000 --rounds 2] [--out docs/bench/orchestration_scaling.txt]

Each size is one `python sweeps/run.py` of that many `env` trials on the local backend and
a private local Ray cluster (2 CPUs, 2 trials at a time), recorded in a fresh SQLite
MLflow store. The worker is a stand-in (``$VERSWEEP_PYTHON``, see
sweeps/execute/backends/local.py): a Python without `site` that answers the preflight
and speaks protocol v1 (an `env` event, then a `result`) in about 20 ms, so what is timed
is versweep (Ray Tune, the plan, the trial process, the MLflow records, the driver's
callbacks), not torch's import, which the real worker adds to every trial (about 1 s,
docs/performance.md "orchestration overhead").

Reported per size:
  per trial       Tuner.fit's seconds (as run_sweep prints them) / trials; goal <= 0.25 s
  by quarter      seconds per trial in each quarter of the finished trials, from the
                  store's FINISHED runs counted every second: a cost that grows with the
                  trials done shows here as later quarters slower than the first
  driver memory   RSS of the driver process (sweeps/run.py) when 25/50/75/100 % of the
                  trials had finished; goal: flat
  load            the 1-minute load average at start and end (the machine is shared)

With --compare N, N trials run again as one Tune experiment ($VERSWEEP_GRID_BATCH above N)
and in versweep's batches (the default), alternating which goes first round by round:
the ratio of their costs per trial and their driver memory at the end, side by side.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

GRID = """
[sweep]
name = "scaling"
backend = "local"
device = "cpu"
trial_timeout_s = 300

[[group]]
workload = "env"
axes.seed = {seeds}
"""

# The stand-in worker: the preflight's probe, or one env event and one result.
STANDIN = r'''#!{python} -S
import json, sys
if sys.argv[1:2] == ["-c"]:
    print("0.0+standin")
    sys.exit(0)
workload = sys.argv[3]
for event in ({{"event": "env", "torch": "0.0+standin", "cuda": None, "cudnn": None,
               "python": "%d.%d.%d" % sys.version_info[:3], "device": "cpu",
               "workload": workload, "config": json.loads(sys.argv[5])}},
              {{"event": "result", "metrics": {{"device_check_seconds": 0.0,
                                             "device_check_value": 64.0}}}}):
    event["v"] = 1
    sys.stdout.write(json.dumps(event, sort_keys=True) + "\n")
    sys.stdout.flush()
'''


def load() -> str:
    return f"{os.getloadavg()[0]:.2f}"


def rss_mib(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def finished_runs(db: Path) -> int:
    """Trial runs the store holds as FINISHED (read-only; 0 before the store exists)."""
    if not db.exists():
        return 0
    try:
        with sqlite3.connect(f"{db.as_uri()}?mode=ro", uri=True, timeout=5) as connection:
            row = connection.execute(
                "SELECT count(*) FROM runs JOIN tags ON tags.run_uuid = runs.run_uuid "
                "WHERE tags.key = 'mlflow.parentRunId' AND runs.status = 'FINISHED'"
            ).fetchone()
            return int(row[0])
    except sqlite3.Error:
        return 0


def one_size(trials: int, tmp: Path, python: Path, batch: int | None = None) -> dict:
    workdir = Path(tempfile.mkdtemp(prefix=f"n{trials}-", dir=tmp))
    grid = workdir / "scaling.toml"
    grid.write_text(GRID.format(seeds=json.dumps(list(range(trials)))))
    env = dict(os.environ, VERSWEEP_PYTHON=str(python),
               RAY_TMPDIR=tempfile.mkdtemp(prefix="vsscale-", dir="/tmp"))
    env.pop("MLFLOW_TRACKING_URI", None)
    env.pop("VERSWEEP_GRID_BATCH", None)
    if batch is not None:
        env["VERSWEEP_GRID_BATCH"] = str(batch)
    load_before = load()
    started = time.monotonic()
    driver = subprocess.Popen([sys.executable, str(ROOT / "sweeps" / "run.py"), "--grid",
                               str(grid), "--num-cpus", "2", "--max-concurrent", "2"],
                              cwd=workdir, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    samples: list[tuple[float, int, float]] = []  # (seconds, finished trials, driver RSS MiB)

    def watch() -> None:
        db = workdir / "mlflow.db"
        while driver.poll() is None:
            rss = rss_mib(driver.pid)
            if rss is not None:
                samples.append((time.monotonic() - started, finished_runs(db), rss))
            time.sleep(1.0)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    out, err = driver.communicate()
    wall = time.monotonic() - started
    watcher.join()
    if driver.returncode != 0:
        raise SystemExit(f"the {trials}-trial sweep failed (exit {driver.returncode}):\n"
                         f"{err[-3000:]}")
    found = re.search(r"timings: ray start ([\d.]+) s, trials ([\d.]+) s", out)
    counts = re.search(r"trials: (\d+) ok", out)
    assert found and counts, out[-2000:]
    quarters, memory = [], []
    previous_time = None
    for quarter in (1, 2, 3, 4):
        target = trials * quarter // 4
        reached = next(((t, rss) for t, done, rss in samples if done >= target), None)
        if reached is None:
            quarters.append(None)
            memory.append(None)
            continue
        if previous_time is not None:
            quarters.append((reached[0] - previous_time) / (trials / 4))
        else:
            quarters.append(None)  # the first quarter includes Ray's and Tune's start
        previous_time = reached[0]
        memory.append(reached[1])
    first = next((t for t, done, _ in samples if done >= 1), None)
    if first is not None and samples and samples[0][1] == 0:
        reached = next(t for t, done, _ in samples if done >= trials // 4)
        quarters[0] = (reached - first) / max(trials // 4 - 1, 1)
    return {"trials": trials, "ok": int(counts.group(1)), "ray": float(found.group(1)),
            "fit": float(found.group(2)), "wall": wall, "quarters": quarters,
            "memory": memory, "peak": max((s[2] for s in samples), default=0.0),
            "load": (load_before, load())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, nargs="+", default=[100, 1000, 5000])
    parser.add_argument("--compare", type=int, metavar="N",
                        help="also run N trials as one experiment and in batches, interleaved")
    parser.add_argument("--rounds", type=int, default=2, help="rounds of --compare")
    parser.add_argument("--out", type=Path, help="also write the report here")
    args = parser.parse_args()
    report = [f"# orchestration scaling, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
              "# command: python benchmarks/orchestration_scaling.py --trials "
              + " ".join(map(str, args.trials))
              + (f" --compare {args.compare} --rounds {args.rounds}" if args.compare else ""),
              f"# machine: {os.cpu_count()} CPUs, {platform.platform()}, "
              f"python {platform.python_version()}",
              "# trials: the env workload, stand-in worker ($VERSWEEP_PYTHON), local backend, "
              "2 at a time, fresh SQLite MLflow store per size"]

    def say(line: str) -> None:
        print(line, flush=True)
        report.append(line)

    for line in report:
        print(line)

    def seconds(value: float | None) -> str:
        return "-" if value is None else f"{value:.3f}"

    def mib(value: float | None) -> str:
        return "-" if value is None else f"{value:.0f}"

    with tempfile.TemporaryDirectory(prefix="vsscale-") as tmp:
        tmp = Path(tmp)
        python = tmp / "standin-python"
        python.write_text(STANDIN.format(python=sys.executable))
        python.chmod(0o755)
        def show(label: str, r: dict) -> None:
            trials = r["trials"]
            say(f"{label}: {r['ok']} ok; per trial {r['fit'] / trials:.3f} s "
                f"(Tuner.fit {r['fit']:.1f} s, Ray start {r['ray']:.1f} s, whole command "
                f"{r['wall']:.1f} s); s/trial by quarter "
                f"{' '.join(seconds(q) for q in r['quarters'])}; driver RSS MiB at 25/50/75/"
                f"100 % {' '.join(mib(m) for m in r['memory'])} (peak {r['peak']:.0f}); "
                f"load {r['load'][0]} -> {r['load'][1]}")

        for trials in args.trials:
            show(f"{trials} trials", one_size(trials, tmp, python))
        ratios, memory = [], []
        for round_number in range(1, (args.rounds if args.compare else 0) + 1):
            n = args.compare
            order = [("batched", None), ("one experiment", n + 1)]
            if round_number % 2 == 0:
                order.reverse()
            runs = {}
            for label, batch in order:
                runs[label] = one_size(n, tmp, python, batch)
                show(f"round {round_number}, {n} trials, {label}", runs[label])
            ratios.append(runs["batched"]["fit"] / runs["one experiment"]["fit"])
            memory.append((runs["batched"]["peak"], runs["one experiment"]["peak"]))
            say(f"round {round_number}: cost per trial batched / one experiment = "
                f"{ratios[-1]:.3f}; peak driver RSS {memory[-1][0]:.0f} vs "
                f"{memory[-1][1]:.0f} MiB")
        if ratios:
            say(f"--compare {args.compare}: ratio batched / one experiment, per round: "
                f"{' '.join(f'{r:.3f}' for r in ratios)} (median {statistics.median(ratios):.3f})")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text("\n".join(report) + "\n")


if __name__ == "__main__":
    main()

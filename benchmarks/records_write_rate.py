"""The records' write rate of a tracking server on PostgreSQL and on SQLite, 8 trials at once.

A cluster's trials report to one ``mlflow server`` (README, "A team's tracking server").
This starts two, side by side on loopback ports, the same way (``--artifacts-destination``:
artifacts proxied, ``--workers`` uvicorn workers): one on a private PostgreSQL
(tests/postgres.py: Debian's postgresql, default durability settings, fsync on), one on a
SQLite file. In each round ``--writers`` processes (default 8) each write
``--trials`` trials through the project's records module, exactly as a trial process does
(sweeps/records/store.py ``SweepRecords``): create the child run (tags, the flattened config
as params), the env event (tags), ``--steps`` metric events of 3 metrics flushed in batches
of ``--batch`` steps, the result event, then ``finish_trial``: status tags, the artifacts
worker.log (``--log-kb`` KiB) and samples.json, the run ended. The writers open their store
first and start together; a round's rate is trials written / wall time from the start to
the last writer's end (the writer processes are started once, before the first round).
Rounds alternate the two servers (ABBA), each round under a new
parent run; the 1-minute load average is recorded before every round.

    python benchmarks/records_write_rate.py --rounds 4 --out docs/bench/records_write_rate.txt

The ratio quoted is PostgreSQL's rate over SQLite's, per pair of adjacent rounds, as its
median with min and max.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from mlflow_server import MlflowServer  # noqa: E402  (the tests' and benchmarks' server)

GRID = textwrap.dedent("""
    [sweep]
    name = "{name}"
    backend = "local"
    device = "cpu"

    [[group]]
    workload = "env"
    axes.seed = {seeds}
    config.num_threads = 1
""")


def postgres_version() -> str:
    from postgres import bin_dir

    where = bin_dir()
    shown = subprocess.run([str(where / "postgres"), "--version"], capture_output=True,
                           text=True).stdout if where else ""
    found = re.search(r"\d+\.\d+", shown)
    return found.group(0) if found else "?"


def migrate(uri: str) -> None:
    subprocess.run([sys.executable, "-m", "mlflow", "db", "upgrade", uri], check=True,
                   capture_output=True, timeout=600)


def writer(tasks, ready, go, done) -> None:
    """A trial process's writes, one round at a time: ``tasks`` gives (url, experiment,
    parent, grid, first, count, steps, batch, log_kb), or None to stop. The process lives
    for the whole benchmark: its start (Python, mlflow, sweeps) is not part of any round."""
    from sweeps.grid.load import load_sweep
    from sweeps.records.store import SweepRecords

    opened: dict[str, SweepRecords] = {}
    while True:
        task = tasks.get()
        if task is None:
            return
        url, experiment, parent, grid, first, count, steps, batch, log_kb = task
        specs = load_sweep(grid).trials[first:first + count]
        if url not in opened:
            opened[url] = SweepRecords(url, experiment, reopened=True)
        records = opened[url]
        log_text = ("x" * 127 + "\n") * (log_kb * 8)
        ready.put(os.getpid())
        go.wait()
        started = time.time()
        for spec in specs:
            run_id = records.start_trial(parent, spec)
            records.log_event(run_id, {"event": "env", "torch": "2.99.0", "cuda": None,
                                       "cudnn": None, "python": "3.11.0", "device": "cpu",
                                       "workload": "env", "config": spec.config_dict})
            for step in range(steps):
                records.log_event(run_id, {"event": "metric", "step": step, "metrics": {
                    "train_loss": 1.0 / (step + 1), "valid_perplexity": 100.0 - step,
                    "words_per_second": 1000.0 + step}})
                if (step + 1) % batch == 0:
                    records.flush(run_id)
            records.log_event(run_id, {"event": "result",
                                       "metrics": {"test_perplexity": 42.0},
                                       "samples": [0.01] * 20})
            records.finish_trial(run_id, "ok", log_text=log_text)
        done.put((started, time.time()))


class Writers:
    """``n`` writer processes, started once."""

    def __init__(self, n: int):
        ctx = mp.get_context("spawn")
        self.ready, self.go, self.done = ctx.Queue(), ctx.Event(), ctx.Queue()
        self.tasks = [ctx.Queue() for _ in range(n)]
        self.procs = [ctx.Process(target=writer, args=(q, self.ready, self.go, self.done),
                                  daemon=True) for q in self.tasks]
        for proc in self.procs:
            proc.start()

    def round(self, tasks: list[tuple], settle: float) -> tuple[float, float]:
        """Give each writer its task; start them together once all are ready; returns
        (the 1-minute load average at the start, the wall time to the last writer's end)."""
        for queue, task in zip(self.tasks, tasks, strict=True):
            queue.put(task)
        for _ in self.procs:
            self.ready.get(timeout=900)
        time.sleep(settle)
        load = os.getloadavg()[0]
        start = time.time()
        self.go.set()
        ends = []
        for _ in self.procs:
            ends.append(self.done.get(timeout=1800)[1])
        self.go.clear()
        return load, max(ends) - start

    def stop(self) -> None:
        for queue in self.tasks:
            queue.put(None)
        for proc in self.procs:
            proc.join(timeout=30)
            if proc.is_alive():
                proc.kill()


def one_round(writers: Writers, url: str, name: str, rnd: int, args, home: Path) -> dict:
    from sweeps.grid.load import load_sweep
    from sweeps.records.store import SweepRecords

    total = args.writers * args.trials
    grid = home / f"{name}-{rnd}.toml"
    grid.write_text(GRID.format(name=f"rate_{name}_{rnd}", seeds=list(range(1, total + 1))))
    experiment = "write_rate"
    parent = SweepRecords(url, experiment).open_sweep(load_sweep(str(grid)), resume=False)
    load, wall = writers.round(
        [(url, experiment, parent, str(grid), i * args.trials, args.trials, args.steps,
          args.batch, args.log_kb) for i in range(args.writers)], args.settle)
    return {"backend": name, "round": rnd, "trials": total, "wall_s": round(wall, 2),
            "trials_per_s": round(total / wall, 3), "load1_before": round(load, 2),
            "load1_after": round(os.getloadavg()[0], 2)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--writers", type=int, default=8)
    parser.add_argument("--trials", type=int, default=3, help="trials per writer per round")
    parser.add_argument("--steps", type=int, default=20, help="metric steps per trial")
    parser.add_argument("--batch", type=int, default=5, help="steps per metrics batch")
    parser.add_argument("--log-kb", type=int, default=16, help="size of worker.log, KiB")
    parser.add_argument("--rounds", type=int, default=4, help="rounds per backend (ABBA)")
    parser.add_argument("--server-workers", type=int, default=2)
    parser.add_argument("--settle", type=float, default=5.0,
                        help="seconds between the last writer ready and the start")
    parser.add_argument("--out", type=Path, help="also write the report here")
    args = parser.parse_args()
    # Stopped from outside (SIGTERM, or SIGINT where a background job ignores it), it still
    # stops its servers and its database (the finally blocks below).
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, signal.default_int_handler)

    from postgres import running_postgres
    from sweeping import free_port

    home = Path(tempfile.mkdtemp(prefix="vsrate-"))
    lines: list[str] = []

    def say(line: str) -> None:
        print(line, flush=True)
        lines.append(line)

    results: list[dict] = []
    servers: dict[str, MlflowServer] = {}
    try:
        with running_postgres() as pg_uri:
            stores = {"postgres": pg_uri, "sqlite": f"sqlite:///{home / 'sqlite' / 'mlflow.db'}"}
            for name, uri in stores.items():
                (home / name).mkdir(exist_ok=True)
                migrate(uri)
                servers[name] = MlflowServer(home / name, uri, port=free_port(),
                                             workers=args.server_workers,
                                             start_limit_s=300).start()
            import mlflow
            import psycopg2
            import sqlalchemy

            say(f"# records write rate: {args.writers} writers x {args.trials} trials a round, "
                f"{args.steps} steps of 3 metrics in batches of {args.batch}, "
                f"worker.log {args.log_kb} KiB + samples.json; {args.rounds} rounds a backend, "
                "ABBA")
            say(f"# mlflow {mlflow.__version__}, sqlalchemy {sqlalchemy.__version__}, "
                f"psycopg2 {psycopg2.__version__.split()[0]}, PostgreSQL "
                f"{postgres_version()}, "
                f"SQLite {__import__('sqlite3').sqlite_version}; mlflow server --workers "
                f"{args.server_workers}; {os.cpu_count()} CPUs, {platform.platform()}")
            say("# " + " ".join(["python", "benchmarks/records_write_rate.py", *sys.argv[1:]]))
            order = ["sqlite", "postgres"]
            writers = Writers(args.writers)
            try:
                for rnd in range(args.rounds):
                    for name in (order if rnd % 2 == 0 else order[::-1]):
                        result = one_round(writers, servers[name].url, name, rnd, args, home)
                        results.append(result)
                        say(json.dumps(result))
            finally:
                writers.stop()
    finally:
        for server in servers.values():
            server.stop()
        shutil.rmtree(home, ignore_errors=True)

    rate = {name: [r["trials_per_s"] for r in results if r["backend"] == name]
            for name in ("postgres", "sqlite")}
    ratios = [p / s for p, s in zip(rate["postgres"], rate["sqlite"], strict=True)]
    loads = [r["load1_before"] for r in results]
    for name, values in rate.items():
        say(f"{name}: median {statistics.median(values):.2f} trials/s "
            f"(min {min(values):.2f}, max {max(values):.2f})")
    say(f"ratio postgres / sqlite, per round: median {statistics.median(ratios):.2f} "
        f"(min {min(ratios):.2f}, max {max(ratios):.2f}; {len(ratios)} rounds)")
    say(f"load average (1 min) before the rounds: {min(loads):.2f} .. {max(loads):.2f}")
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

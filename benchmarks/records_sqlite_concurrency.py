"""How MLflow's SQLite store behaves with several trial processes writing at once.

Two measurements, each with separate processes as Ray trial actors are:

1. Fresh database: N processes open the same new SQLite store at the same
   moment, with a plain ``MlflowClient`` and with ``sweeps.records.store.open_client``
   (which opens it under a file lock). Counts the processes that fail and the
   databases left unusable.
2. Steady state: one sweep's parent run, N writer processes, each writing
   trials through ``SweepRecords`` with one metric write per step (the worst
   case: epochs that end far apart, so nothing is batched). Reports the wall
   time, writes per second, and the latency of each write against mlflow's
   20 s SQLite busy timeout, plus any error or retry.
3. A lock held longer than that timeout (another connection in BEGIN
   EXCLUSIVE): what a plain MlflowClient write does, and what SweepRecords does.

Run from the repository root (it uses a temporary directory and removes it):

    python benchmarks/records_sqlite_concurrency.py --writers 1 2 4 8 --steps 50 \
        | tee docs/bench/records_sqlite_concurrency.txt
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def open_fresh(args: tuple[str, bool]) -> str:
    """Open a store in a new process; 'ok' or the error's first line."""
    uri, locked = args
    try:
        if locked:
            from sweeps.records.store import open_client

            open_client(uri)
        else:
            from mlflow import MlflowClient

            MlflowClient(uri).search_experiments(max_results=1)
        return "ok"
    except BaseException as error:  # we count every kind of failure
        return f"{type(error).__name__}: {str(error).splitlines()[0][:120]}"


def usable(uri: str) -> bool:
    from mlflow import MlflowClient

    try:
        MlflowClient(uri).search_experiments(max_results=1)
        return True
    except Exception:
        return False


class RetryCounter(logging.Handler):
    """Counts the 'store busy ... retrying' warnings of sweeps.records.store."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.count = 0

    def emit(self, record):
        self.count += 1


def write_trials(args: tuple[str, str, str, int, int, int]) -> dict:
    """One writer process: `trials` trials of `steps` steps, one store write per step."""
    uri, experiment, parent, writer, trials, steps = args
    from sweeps.grid.spec import TrialSpec
    from sweeps.records.store import SweepRecords

    retries = RetryCounter()
    logging.getLogger("sweeps.records.store").addHandler(retries)
    latencies, errors = [], []
    records = SweepRecords(uri, experiment)
    for trial in range(trials):
        spec = TrialSpec("env", "local", (("seed", 1000 * writer + trial),), trial, writer)
        try:
            run_id = records.start_trial(parent, spec)
            for step in range(steps):
                records.log_event(run_id, {"v": 1, "event": "metric", "step": step,
                                           "metrics": {"loss": 1.0 / (step + 1),
                                                       "words_per_second": 1000.0 + step,
                                                       "epoch_seconds": 0.5}})
                start = time.perf_counter()
                records.flush(run_id)
                latencies.append(time.perf_counter() - start)
            records.finish_trial(run_id, "ok", log_text=f"writer {writer} trial {trial}\n",
                                 samples=[0.01] * steps)
        except Exception as error:
            errors.append(f"{type(error).__name__}: {str(error).splitlines()[0][:160]}")
    return {"latencies": latencies, "errors": errors, "retries": retries.count}


def fresh_open(directory: Path, processes: int, rounds: int) -> None:
    context = multiprocessing.get_context("spawn")
    print(f"## Fresh database opened by {processes} processes at once ({rounds} rounds each)")
    for locked in (False, True):
        failed = broken = 0
        kinds: dict[str, int] = {}
        for round_index in range(rounds):
            uri = f"sqlite:///{directory}/fresh-{int(locked)}-{round_index}.db"
            with context.Pool(processes) as pool:
                outcomes = pool.map(open_fresh, [(uri, locked)] * processes)
            for outcome in outcomes:
                if outcome != "ok":
                    failed += 1
                    kinds[outcome.split(":")[0]] = kinds.get(outcome.split(":")[0], 0) + 1
            broken += not usable(uri)
        how = "sweeps.records.store.open_client (file lock)" if locked else "plain MlflowClient"
        print(f"{how:40s} failed opens {failed}/{processes * rounds}, "
              f"unusable databases afterwards {broken}/{rounds}, errors {kinds or '-'}")
    print()


def steady_state(directory: Path, writer_counts: list[int], trials: int, steps: int) -> None:
    from sweeps.grid.spec import Sweep
    from sweeps.records.store import SweepRecords, default_tracking_uri

    context = multiprocessing.get_context("spawn")
    print(f"## Steady state: writers x {trials} trials x {steps} steps, one write per step")
    print("writers  wall_s  writes  writes/s  p50_ms  p95_ms  max_ms  errors  retries")
    for writers in writer_counts:
        home = directory / f"steady-{writers}"
        home.mkdir()
        uri = default_tracking_uri(home)
        records = SweepRecords(uri, "bench")
        sweep = Sweep(name="bench", path=home / "bench.toml", text="", description="",
                      backend="local", device="cpu", trial_timeout_s=60.0, retries=0,
                      max_concurrent=None)
        parent = records.open_sweep(sweep, resume=False)
        with context.Pool(writers) as pool:
            # Import mlflow in every worker before the clock starts.
            pool.map(open_fresh, [(uri, True)] * writers)
            start = time.perf_counter()
            results = pool.map(write_trials, [(uri, "bench", parent, w, trials, steps)
                                              for w in range(writers)])
            wall = time.perf_counter() - start
        latencies = sorted(x for r in results for x in r["latencies"])
        errors = [e for r in results for e in r["errors"]]
        retries = sum(r["retries"] for r in results)
        finished = records.finished_trial_keys(parent)
        p95 = latencies[int(0.95 * (len(latencies) - 1))]
        print(f"{writers:7d}  {wall:6.1f}  {len(latencies):6d}  {len(latencies) / wall:8.1f}  "
              f"{statistics.median(latencies) * 1e3:6.1f}  {p95 * 1e3:6.1f}  "
              f"{latencies[-1] * 1e3:6.0f}  {len(errors):6d}  {retries:7d}"
              f"   (finished trials {len(finished)}/{writers * trials})")
        for error in errors[:3]:
            print("   ", error)
    print()


def lock_held_too_long(directory: Path, hold_s: float) -> None:
    """Another connection holds the database's write lock for longer than the busy timeout."""
    import sqlite3
    import threading

    from mlflow.entities import Metric

    from sweeps.grid.spec import Sweep, TrialSpec
    from sweeps.records.store import SweepRecords, default_tracking_uri

    print(f"## Another process holds the write lock for {hold_s:.0f} s (busy timeout is 20 s)")
    home = directory / "held"
    home.mkdir()
    uri = default_tracking_uri(home)
    records = SweepRecords(uri, "held")
    sweep = Sweep(name="held", path=home / "held.toml", text="", description="",
                  backend="local", device="cpu", trial_timeout_s=60.0, retries=0,
                  max_concurrent=None)
    parent = records.open_sweep(sweep, resume=False)
    run_id = records.start_trial(parent, TrialSpec("env", "local", (), 0, 0))

    def hold() -> threading.Thread:
        holder = sqlite3.connect(home / "mlflow.db", isolation_level=None,
                                 check_same_thread=False)
        holder.execute("BEGIN EXCLUSIVE")

        def release():
            time.sleep(hold_s)
            holder.execute("ROLLBACK")
            holder.close()

        thread = threading.Thread(target=release)
        thread.start()
        return thread

    for how in ("plain MlflowClient.log_batch", "SweepRecords.flush (retries)"):
        thread = hold()
        start = time.perf_counter()
        try:
            if how.startswith("plain"):
                records.client.log_batch(run_id, metrics=[Metric("loss", 1.0, 0, 0)])
            else:
                records.log_event(run_id, {"v": 1, "event": "metric", "step": 1,
                                           "metrics": {"loss": 0.5}})
                records.flush(run_id)
            outcome = "written"
        except Exception as error:
            outcome = f"{type(error).__name__}: {str(error).splitlines()[0][:100]}"
        print(f"{how:32s} after {time.perf_counter() - start:5.1f} s: {outcome}")
        thread.join()
    print()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--writers", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--trials", type=int, default=2, help="trials per writer")
    parser.add_argument("--steps", type=int, default=50, help="metric steps per trial")
    parser.add_argument("--fresh-processes", type=int, default=4)
    parser.add_argument("--fresh-rounds", type=int, default=3)
    parser.add_argument("--hold-seconds", type=float, default=25.0,
                        help="how long another connection holds the lock (0: skip)")
    args = parser.parse_args(argv)

    import mlflow
    import sqlalchemy

    print(f"mlflow {mlflow.__version__}, SQLAlchemy {sqlalchemy.__version__}, "
          f"Python {sys.version.split()[0]}, {multiprocessing.cpu_count()} CPUs")
    print(f"command: python benchmarks/records_sqlite_concurrency.py {' '.join(sys.argv[1:])}")
    print()
    with tempfile.TemporaryDirectory(prefix="versweep-sqlite-") as directory:
        fresh_open(Path(directory), args.fresh_processes, args.fresh_rounds)
        steady_state(Path(directory), args.writers, args.trials, args.steps)
        if args.hold_seconds:
            lock_held_too_long(Path(directory), args.hold_seconds)
    print("latency: one SweepRecords.flush (one log_batch round trip) per metric step;")
    print("mlflow's SQLite sessions wait up to 20000 ms (PRAGMA busy_timeout) for the lock.")


if __name__ == "__main__":
    logging.basicConfig(level=logging.ERROR)
    main()

"""How long ``python analysis/report.py`` takes as a sweep grows: 500 to 20,000 trial runs.

For each size N this fills a local MLflow store (SQLite + file artifacts, the
embedded default) with N decided trial runs, in one sweep or spread over several
(``--sweeps 4``: four parent runs, reported together with --all-sweeps), in the layout of
sweeps/records/store.py: a parent run, then child runs with the same tags, params,
metrics and artifacts a real sweep writes. The mix is that of a large version
sweep: 20 images x the four rnn_bench benchmarks x basic/fused/cudnn x several
batch sizes x 3 repeats (400 per-batch samples each, as the seed's 500 batches
less 100 warm-up), ptb_lm on every image with 3 seeds (6 epochs of learning
curves), and a few per cent unsupported / failed / diverged trials.

The child runs are written in bulk into mlflow's own tables (the rows
SqlAlchemyStore.create_run and log_batch write), a thousand runs per
transaction, rather than SweepRecords' call per event: the layout is the same,
and filling 20,000 runs takes minutes instead of hours.

Then it times the command a user runs, end to end in a fresh process (Python
start-up, imports, reading the store, statistics, figures, writing md/html/csv
and logging them as artifacts of the newest parent run), in ``--repeats``
rounds that each time every size once, in turn (a stretch of load on the shared
machine then falls on every size, not on one), with the 1-minute load average
before and after each measurement. One untimed report per size goes first: the
reports run with Python's bytecode cache on (PYTHONPYCACHEPREFIX under
--store-dir, whatever PYTHONDONTWRITEBYTECODE says), as in an installed
environment, and the store's files are then in the page cache.

    python benchmarks/report_scaling.py --sizes 5000 20000 --sweeps 4 --repeats 3 \
        | tee docs/bench/report_scaling.txt
    # before and after a change, under the same load: the older revision in a worktree
    git worktree add /tmp/versweep-before REV
    python benchmarks/report_scaling.py --sizes 5000 20000 --sweeps 4 --repeats 3 \
        --baseline-checkout /tmp/versweep-before

Stores are kept under --store-dir (default: a folder in the temp dir) and reused
by a later run with the same sizes.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

IMAGES = [f"torch-{v}-cu{c}" for v, c in [
    ("1.0.1", "100"), ("1.1.0", "100"), ("1.2.0", "100"), ("1.3.1", "101"), ("1.4.0", "101"),
    ("1.5.1", "102"), ("1.6.0", "102"), ("1.7.1", "110"), ("1.8.1", "111"), ("1.9.1", "111"),
    ("1.10.2", "113"), ("1.11.0", "113"), ("1.12.1", "116"), ("1.13.1", "117"),
    ("2.0.1", "118"), ("2.1.2", "121"), ("2.2.2", "121"), ("2.3.1", "121"), ("2.4.1", "124"),
    ("2.5.1", "124")]]
BENCHES = {"1x320-ce-short": (64, 100, 1), "1x320-ce-long": (32, 1000, 1),
           "4x320-ce-long": (32, 1000, 4), "4x320-ctc-long": (32, 1000, 4)}
IMPLS = {"basic": 3.0, "fused": 1.8, "cudnn": 1.0}
REPEATS = 3
LM_SEEDS = 3
LM_EPOCHS = 6
SAMPLES_PER_RUN = 400  # the seed's 500 batches less 100 warm-up
# What store.source_tags() puts on every run (layout 4): the checkout's git revision.
SOURCE_TAGS = {"mlflow.source.type": "LOCAL", "mlflow.source.name": "versweep (sweeps/run.py)",
               "mlflow.source.git.commit": "0" * 40, "mlflow.source.git.branch": "main",
               "versweep.git_dirty": "false"}


def fill_store(directory: Path, n_trials: int, n_sweeps: int = 1, seed: int = 0) -> str:
    """A SQLite store under ``directory`` with ``n_trials`` decided trials spread over
    ``n_sweeps`` sweeps (parent runs) of one experiment: trial i belongs to sweep
    i mod n_sweeps, so each sweep is a cross-section of the big grid and the report of
    them all (--all-sweeps) pools the same groups as one sweep of N would."""
    from mlflow import MlflowClient
    from mlflow.store.tracking.dbmodels.models import (
        SqlLatestMetric,
        SqlMetric,
        SqlParam,
        SqlRun,
        SqlTag,
    )

    from sweeps.records.layout import SCHEMA_TAG, SCHEMA_VERSION
    from sweeps.records.store import open_client, samples_document

    directory.mkdir(parents=True, exist_ok=True)
    uri = "sqlite:///" + str(directory / "mlflow.db")
    open_client(uri)  # creates the tables under the lock, as a sweep does
    client = MlflowClient(uri)
    experiment = experiment_name(n_trials, n_sweeps)
    artifact_root = directory / "mlartifacts" / experiment
    experiment_id = client.create_experiment(experiment,
                                             artifact_location=artifact_root.as_uri())
    rng = random.Random(seed)
    now = int(time.time() * 1000)
    parent_ids = []
    for number in range(n_sweeps):
        # Older sweeps first, a minute apart: the newest is the report's default.
        parent = client.create_run(
            experiment_id, start_time=now - (n_sweeps - number) * 60_000,
            run_name=f"{experiment} 2026-01-01 00:{number:02d}:00Z",
            tags={"versweep.kind": "sweep", "versweep.sweep": experiment,
                  "versweep.sweep_kind": "grid", SCHEMA_TAG: str(SCHEMA_VERSION),
                  "versweep.backend": "docker", "versweep.grid_sha256": "0", **SOURCE_TAGS})
        parent_ids.append(parent.info.run_id)
        client.log_text(parent.info.run_id, f'[sweep]\nname = "{experiment}"\n', "grid.toml")

    runs = [_trial_record(index, spec, parent_ids[index % n_sweeps], rng, now)
            for index, spec in enumerate(_trial_specs(n_trials))]
    for run in runs:
        run["tags"][SCHEMA_TAG] = str(SCHEMA_VERSION)
    # The child runs go into mlflow's own tables (the columns SqlAlchemyStore.create_run
    # and log_batch write), as bulk inserts of a thousand runs per transaction: through
    # MlflowClient each run costs three round trips and ~10 commits, ~0.1-0.3 s on this
    # machine, hours for 20,000 runs; through the ORM's objects, a quarter of an hour.
    store = client._tracking_client.store
    tables = {model: model.__table__ for model in
              (SqlRun, SqlTag, SqlParam, SqlMetric, SqlLatestMetric)}
    for first in range(0, len(runs), 1000):
        rows: dict[Any, list[dict]] = {model: [] for model in tables}
        for run in runs[first:first + 1000]:
            run_id = run["run_id"]
            artifacts = artifact_root / run_id / "artifacts"
            rows[SqlRun].append(dict(
                name=run["name"], artifact_uri=artifacts.as_uri(), run_uuid=run_id,
                experiment_id=int(experiment_id), source_type="UNKNOWN", source_name="",
                entry_point_name="", user_id="bench", status="FINISHED",
                start_time=run["start"], end_time=run["start"] + 1000, deleted_time=None,
                source_version="", lifecycle_stage="active"))
            rows[SqlTag] += [dict(key=k, value=v, run_uuid=run_id)
                             for k, v in run["tags"].items()]
            rows[SqlParam] += [dict(key=k, value=v, run_uuid=run_id)
                               for k, v in run["params"].items()]
            latest: dict[str, tuple] = {}
            for key, value, stamp, step in run["metrics"]:
                rows[SqlMetric].append(dict(key=key, value=value, timestamp=stamp, step=step,
                                            is_nan=False, run_uuid=run_id))
                if key not in latest or (step, stamp, value) >= latest[key][:3]:
                    latest[key] = (step, stamp, value)
            rows[SqlLatestMetric] += [dict(key=key, value=value, timestamp=stamp, step=step,
                                           is_nan=False, run_uuid=run_id)
                                      for key, (step, stamp, value) in latest.items()]
            if run["samples"] is not None:
                artifacts.mkdir(parents=True, exist_ok=True)
                (artifacts / "samples.json").write_text(
                    json.dumps(samples_document(run["samples"])))
        with store.ManagedSessionMaker() as session:
            for model, table in tables.items():  # runs first: the others refer to them
                if rows[model]:
                    session.execute(table.insert(), rows[model])
    for parent_id in parent_ids:
        client.set_terminated(parent_id, "FINISHED")
    return uri


def experiment_name(n_trials: int, n_sweeps: int) -> str:
    return f"scaling-{n_trials}" + (f"-{n_sweeps}sweeps" if n_sweeps > 1 else "")


def _trial_specs(n_trials: int) -> list[tuple[str, str, int, dict]]:
    """(workload, image, repeat, params) of the first ``n_trials`` trials of the big sweep.

    rnn_bench: every benchmark x implementation x image x 3 repeats at batch sizes divided
    by 1, 2, 4 ... 64 (5,040 trials); a bigger sweep repeats those variants more often
    (repeat 3, 4, ... of each in turn), as several runs of one grid pooled in a report do,
    rather than inventing ever more variants a figure could not show.
    """
    lm_trials = [(image, s) for image in IMAGES for s in range(LM_SEEDS)]
    n_bench = max(n_trials - len(lm_trials), 0)
    variants = []
    for scale in [1, 2, 4, 8, 16, 32, 64]:
        for bench, (batch, steps, layers) in BENCHES.items():
            for impl in IMPLS:
                for image in IMAGES:
                    variants.append((image, {
                        "bench": bench, "impl": impl, "cell": "lstm",
                        "batch_size": str(max(batch // scale, 1)), "seq_len": str(steps),
                        "hidden_size": "320", "num_layers": str(layers),
                        "batches": "500", "warmup_batches": "100"}))
    specs = [("rnn_bench", image, repeat, {**params, "seed": str(1234 + repeat)})
             for image, params in variants for repeat in range(REPEATS)][:n_bench]
    repeat = REPEATS
    while len(specs) < n_bench:
        specs += [("rnn_bench", image, repeat, {**params, "seed": str(1234 + repeat)})
                  for image, params in variants][:n_bench - len(specs)]
        repeat += 1
    specs += [("ptb_lm", image, s, {"preset": "medium", "max_epochs": str(LM_EPOCHS),
                                    "seed": str(1234 + s)}) for image, s in lm_trials]
    return specs[:n_trials]


def _trial_record(index: int, spec: tuple[str, str, int, dict], parent_id: str,
                  rng: random.Random, now: int) -> dict:
    """One child run as sweeps/records/store.py lays it out: tags, params, metrics, samples."""
    workload, image, repeat, params = spec
    generation = IMAGES.index(image)
    roll = rng.random()
    status = "ok"
    if workload == "rnn_bench" and params["bench"] == "4x320-ctc-long" and generation < 2:
        status = "unsupported"  # as a real sweep records an old torch without nn.CTCLoss
    elif roll < 0.02:
        status = "failed"
    elif roll < 0.03 and workload == "ptb_lm":
        status = "diverged"
    name = (f"rnn_bench {params['bench']} {params['impl']} @ {image} #{repeat}"
            if workload == "rnn_bench" else f"ptb_lm medium @ {image} #{repeat}")
    tags = {"mlflow.runName": name, "mlflow.parentRunId": parent_id,
            "versweep.kind": "trial", "versweep.trial_key": f"{index:016x}",
            "versweep.workload": workload, "versweep.image": image,
            "versweep.repeat": str(repeat), "versweep.group": "0", "versweep.status": status,
            "versweep.image_digest": f"sha256:{generation:064x}", **SOURCE_TAGS}
    if status == "unsupported":
        tags["versweep.reason"] = "nn.CTCLoss needs torch>=1.0"
    else:
        torch = image.split("-")[1]
        env = {"python": "3.8.10", "torch": torch, "cuda": image.split("-cu")[1],
               "cudnn": "8500", "device": "cuda:0", "gpu": "NVIDIA H100 80GB HBM3",
               "capability": "9.0", "driver": "550.54.15", "host": "node-1",
               "flags.tf32_matmul": "false", "flags.tf32_cudnn": "false",
               "flags.cudnn_benchmark": "false"}
        tags.update({f"versweep.env.{k}": v for k, v in env.items()})
        tags.update({"versweep.torch": torch, "versweep.gpu": env["gpu"]})
    if status == "failed":
        tags["versweep.error_kind"] = "crash"
        tags["versweep.error"] = "worker exited with code -9 (killed)"
    if status == "diverged":
        tags["versweep.error_kind"] = "diverged"
        tags["versweep.error"] = "loss is nan at epoch 3"
    metrics: list[tuple[str, float, int, int]] = []
    samples = None
    if status == "ok" and workload == "rnn_bench":
        ms = (5.0 + 40.0 * list(BENCHES).index(params["bench"])) * IMPLS[params["impl"]] \
            * (1.0 - 0.01 * generation) / float(params["batch_size"]) * 64
        samples = [ms / 1000.0 * (1.0 + rng.gauss(0, 0.02)) for _ in range(SAMPLES_PER_RUN)]
        ordered = sorted(samples)
        metrics = [("ms_per_batch_median", ordered[len(ordered) // 2] * 1000, now, 0),
                   ("ms_per_batch_mean", statistics.fmean(samples) * 1000, now, 0),
                   ("sequences_per_second", 1000.0, now, 0)]
    elif workload == "ptb_lm" and status in ("ok", "diverged"):
        epochs = LM_EPOCHS if status == "ok" else 3
        for epoch in range(1, epochs + 1):
            valid = 150.0 * 0.9 ** epoch + rng.gauss(0, 1.0)
            metrics += [("valid_perplexity", valid, now + epoch, epoch),
                        ("train_perplexity", valid * 0.8, now + epoch, epoch),
                        ("words_per_second", 20000.0 + 100 * generation, now + epoch, epoch)]
        if status == "ok":
            metrics += [("test_perplexity", 90.0 + rng.gauss(0, 0.5), now, epochs),
                        ("best_valid_perplexity", 95.0, now, epochs)]
    return {"run_id": uuid.uuid4().hex, "name": name, "start": now + index, "tags": tags,
            "params": params, "metrics": metrics, "samples": samples}


def report_env(store_base: Path) -> dict[str, str]:
    """The environment of the timed reports: this one, with Python's bytecode cache on (in
    a folder of the benchmark's own), as in an installed environment. A shell with
    PYTHONDONTWRITEBYTECODE set would otherwise have every report compile mlflow's,
    matplotlib's and numpy's sources again: seconds that a user's install never pays."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPYCACHEPREFIX"] = str(store_base / "pycache")
    return env


def time_report(uri: str, experiment: str, out: Path, all_sweeps: bool,
                env: dict[str, str], root: Path = ROOT) -> tuple[float, float, str]:
    """Wall and CPU seconds (user + system) of one ``python analysis/report.py`` in a fresh
    process, and the last line it printed. CPU time says what the report costs even when
    other work shares the machine; wall time is what a person waits."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, str(root / "analysis" / "report.py"), "--experiment", experiment,
         "--tracking-uri", uri, "--out", str(out), *(["--all-sweeps"] if all_sweeps else [])],
        capture_output=True, text=True, cwd=out.parent, env=env)
    elapsed = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise SystemExit(f"report.py failed ({proc.returncode}): {proc.stderr[-2000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return elapsed, cpu, proc.stdout.strip().splitlines()[-1]


def _revision(root: Path) -> str:
    """The git revision of a checkout ("unknown" outside git), for the output's header."""
    done = subprocess.run(["git", "-C", str(root), "log", "-1", "--format=%h %s"],
                          capture_output=True, text=True)
    return done.stdout.strip()[:72] if done.returncode == 0 else "unknown revision"


def store_dir(base: Path, size: int, n_sweeps: int) -> Path:
    return base / (f"n{size}" if n_sweeps == 1 else f"n{size}-s{n_sweeps}")


def ensure_store(base: Path, size: int, n_sweeps: int) -> tuple[str, str]:
    """(tracking URI, fill seconds or "reused") of the store of ``size`` trials."""
    directory = store_dir(base, size, n_sweeps)
    if (directory / "mlflow.db").exists():
        return "sqlite:///" + str(directory / "mlflow.db"), "reused"
    start = time.perf_counter()
    uri = fill_store(directory, size, n_sweeps)
    return uri, f"{time.perf_counter() - start:.0f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[500, 1000, 2000, 5000])
    parser.add_argument("--sweeps", type=int, default=1,
                        help="spread each size's trials over this many sweeps (parent runs) "
                             "and report them all (--all-sweeps); default 1")
    parser.add_argument("--repeats", type=int, default=3,
                        help="rounds; each round times every size once, in turn")
    parser.add_argument("--store-dir", type=Path,
                        default=Path(tempfile.gettempdir()) / "versweep-report-scaling")
    parser.add_argument("--fill-only", action="store_true",
                        help="fill the stores that are missing, time nothing")
    parser.add_argument("--baseline-checkout", type=Path, metavar="DIR",
                        help="another checkout of versweep (e.g. `git worktree add DIR REV`) "
                             "whose analysis/report.py is timed too, in the same rounds, the "
                             "two taking turns to go first: before and after under the same "
                             "load")
    args = parser.parse_args()
    if args.sweeps < 1:
        parser.error("--sweeps must be at least 1")
    if args.fill_only:
        for size in args.sizes:
            _, fill = ensure_store(args.store_dir, size, args.sweeps)
            print(f"{size} trials in {args.sweeps} sweep(s): "
                  + ("reused" if fill == "reused" else f"filled in {fill} s"), flush=True)
        return
    import matplotlib
    import mlflow
    import numpy

    print(f"mlflow {mlflow.__version__}, numpy {numpy.__version__}, matplotlib "
          f"{matplotlib.__version__}, Python {platform.python_version()}, "
          f"{os.cpu_count()} CPUs")
    codes = [("this", ROOT)]
    if args.baseline_checkout is not None:
        codes.append(("baseline", args.baseline_checkout.resolve()))
    print("command: python benchmarks/report_scaling.py --sizes "
          f"{' '.join(map(str, args.sizes))} --sweeps {args.sweeps} --repeats {args.repeats}"
          + (f" --baseline-checkout {args.baseline_checkout}" if args.baseline_checkout
             else ""))
    for code, root in codes:
        print(f"{code}: {root} ({_revision(root)})")
    stores = {}
    for size in args.sizes:
        uri, fill = ensure_store(args.store_dir, size, args.sweeps)
        megabytes = sum(p.stat().st_size for p in (
            store_dir(args.store_dir, size, args.sweeps) / "mlartifacts").rglob(
            "samples.json")) / 1e6
        stores[size] = (uri, fill, megabytes)
    env = report_env(args.store_dir)
    # One untimed report per size first: the bytecode cache is written and the store's
    # files are in the page cache, as for a person's second report of the day.
    for size in args.sizes:
        for code, root in codes:
            time_report(stores[size][0], experiment_name(size, args.sweeps),
                        store_dir(args.store_dir, size, args.sweeps) / f"out-warmup-{code}",
                        args.sweeps > 1, env, root)
    print()
    # Rounds: every size once per round, in turn, so a stretch of heavy load on the
    # shared machine falls on all sizes rather than on one.
    print(f"{'round':>5} {'code':>8} {'trials':>7} {'wall_s':>7} {'cpu_s':>6} "
          f"{'load_before':>11} {'load_after':>10}")
    runs = [(code, size) for size in args.sizes for code, _ in codes]
    walls: dict[tuple, list[float]] = {run: [] for run in runs}
    cpus: dict[tuple, list[float]] = {run: [] for run in runs}
    loads: dict[tuple, list[float]] = {run: [] for run in runs}
    last = ""
    for attempt in range(args.repeats):
        for size in args.sizes:
            # With a baseline, the two take turns to go first, round by round.
            order = codes if attempt % 2 == 0 else codes[::-1]
            for code, root in order:
                uri = stores[size][0]
                out = store_dir(args.store_dir, size, args.sweeps) / f"out{attempt}-{code}"
                load_before = os.getloadavg()[0]
                wall, cpu, line = time_report(uri, experiment_name(size, args.sweeps), out,
                                              args.sweeps > 1, env, root)
                load_after = os.getloadavg()[0]
                last = line if code == "this" else last
                walls[(code, size)].append(wall)
                cpus[(code, size)].append(cpu)
                loads[(code, size)] += [load_before, load_after]
                print(f"{attempt + 1:>5} {code:>8} {size:>7} {wall:>7.2f} {cpu:>6.2f} "
                      f"{load_before:>11.1f} {load_after:>10.1f}", flush=True)
    print()
    print(f"{'code':>8} {'trials':>7} {'sweeps':>6} {'fill_s':>7} {'samples_MB':>10} "
          f"{'wall_s (each round)':>24} {'median_wall_s':>13} {'median_cpu_s':>12} "
          f"{'load_1min':>9}")
    for code, size in runs:
        _, fill, megabytes = stores[size]
        run = (code, size)
        print(f"{code:>8} {size:>7} {args.sweeps:>6} {fill:>7} {megabytes:>10.1f} "
              f"{' '.join(f'{t:.2f}' for t in walls[run]):>24} "
              f"{statistics.median(walls[run]):>13.2f} {statistics.median(cpus[run]):>12.2f} "
              f"{min(loads[run]):>4.1f}-{max(loads[run]):<4.1f}", flush=True)
    print()
    print("wall_s: wall time of one `python analysis/report.py --experiment scaling-N... "
          "--tracking-uri ... --out ..."
          + (" --all-sweeps" if args.sweeps > 1 else "")
          + "` in a fresh process, after one untimed warm-up report per size (bytecode "
          "cache written, store files in the page cache) (imports, reading the store and "
          "the samples, statistics, figures, md/html/csv, logging them on the parent run); "
          "cpu_s: its user + system CPU time, its worker processes' included; load_1min: the "
          "machine's 1-minute load average before and after each run, lowest-highest, the "
          "report's own processes included (2 cores: above 2, other work competed for "
          "them).")
    print(f"last line of the last run: {last}")


if __name__ == "__main__":
    main()

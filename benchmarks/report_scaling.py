"""How long ``python analysis/report.py`` takes as a sweep grows: 500 to 5,000 trial runs.

For each size N this fills a local MLflow store (SQLite + file artifacts, the
embedded default) with one sweep of N decided trial runs in the layout of
sweeps/records/store.py: a parent run, then child runs with the same tags, params,
metrics and artifacts a real sweep writes. The mix is that of a large version
sweep: 20 images x the four rnn_bench benchmarks x basic/fused/cudnn x several
batch sizes x 3 repeats (400 per-batch samples each, as the seed's 500 batches
less 100 warm-up), ptb_lm on every image with 3 seeds (6 epochs of learning
curves), and a few per cent unsupported / failed / diverged trials.

The child runs are written in bulk through mlflow's own table models (the rows
SqlAlchemyStore.create_run and log_batch write), a few hundred runs per
transaction, rather than SweepRecords' call per event: the layout is the same,
and filling 8,500 runs takes a minute instead of most of an hour.

Then it times the command a user runs, end to end in a fresh process (Python
start-up, imports, reading the store, statistics, figures, writing md/html/csv
and logging them as artifacts of the parent run), ``--repeats`` times per size.

    python benchmarks/report_scaling.py --sizes 500 1000 2000 5000 --repeats 3 \
        | tee docs/bench/report_scaling.txt

Stores are kept under --store-dir (default: a folder in the temp dir) and reused
by a later run with the same sizes.
"""

from __future__ import annotations

import argparse
import json
import math
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


def fill_store(directory: Path, n_trials: int, seed: int = 0) -> str:
    """A SQLite store under ``directory`` with one sweep of ``n_trials`` decided trials."""
    from mlflow import MlflowClient
    from mlflow.store.tracking.dbmodels.models import (
        SqlLatestMetric,
        SqlMetric,
        SqlParam,
        SqlRun,
        SqlTag,
    )

    from sweeps.records.store import open_client

    directory.mkdir(parents=True, exist_ok=True)
    uri = "sqlite:///" + str(directory / "mlflow.db")
    open_client(uri)  # creates the tables under the lock, as a sweep does
    client = MlflowClient(uri)
    experiment = f"scaling-{n_trials}"
    artifact_root = directory / "mlartifacts" / experiment
    experiment_id = client.create_experiment(experiment,
                                             artifact_location=artifact_root.as_uri())
    rng = random.Random(seed)
    now = int(time.time() * 1000)
    parent = client.create_run(experiment_id, run_name=f"{experiment} 2026-01-01 00:00:00Z",
                               tags={"versweep.kind": "sweep", "versweep.sweep": experiment,
                                     "versweep.backend": "docker", "versweep.grid_sha256": "0"})
    parent_id = parent.info.run_id
    client.log_text(parent_id, f'[sweep]\nname = "{experiment}"\n', "grid.toml")

    runs = [_trial_record(index, spec, parent_id, rng, now)
            for index, spec in enumerate(_trial_specs(n_trials))]
    # The child runs go in through mlflow's own table models (what SqlAlchemyStore.create_run
    # and log_batch write), a few hundred per transaction: through MlflowClient each run
    # costs three round trips and ~10 commits, ~0.1-0.3 s on this machine, i.e. 15-45 min
    # for the four stores instead of one or two.
    store = client._tracking_client.store
    for first in range(0, len(runs), 250):
        with store.ManagedSessionMaker() as session:
            for run in runs[first:first + 250]:
                run_id = run["run_id"]
                artifacts = artifact_root / run_id / "artifacts"
                sql_run = SqlRun(
                    name=run["name"], artifact_uri=artifacts.as_uri(), run_uuid=run_id,
                    experiment_id=int(experiment_id), source_type="UNKNOWN", source_name="",
                    entry_point_name="", user_id="bench", status="FINISHED",
                    start_time=run["start"], end_time=run["start"] + 1000, deleted_time=None,
                    source_version="", lifecycle_stage="active")
                sql_run.tags = [SqlTag(key=k, value=v) for k, v in run["tags"].items()]
                sql_run.params = [SqlParam(key=k, value=v) for k, v in run["params"].items()]
                session.add(sql_run)
                latest: dict[str, tuple] = {}
                for key, value, stamp, step in run["metrics"]:
                    session.add(SqlMetric(key=key, value=value, timestamp=stamp, step=step,
                                          is_nan=False, run_uuid=run_id))
                    if key not in latest or (step, stamp, value) >= latest[key][:3]:
                        latest[key] = (step, stamp, value)
                for key, (step, stamp, value) in latest.items():
                    session.add(SqlLatestMetric(key=key, value=value, timestamp=stamp,
                                                step=step, is_nan=False, run_uuid=run_id))
                if run["samples"] is not None:
                    artifacts.mkdir(parents=True, exist_ok=True)
                    (artifacts / "samples.json").write_text(json.dumps(run["samples"]))
    client.set_terminated(parent_id, "FINISHED")
    return uri


def _trial_specs(n_trials: int) -> list[tuple[str, str, int, dict]]:
    """(workload, image, repeat, params) of the first ``n_trials`` trials of the big sweep."""
    lm_trials = [(image, s) for image in IMAGES for s in range(LM_SEEDS)]
    n_bench = max(n_trials - len(lm_trials), 0)
    per_size = len(BENCHES) * len(IMPLS) * len(IMAGES) * REPEATS
    batch_scales = [1, 2, 4, 8, 16, 32, 64][:max(1, math.ceil(n_bench / per_size))]
    specs = []
    for scale in batch_scales:
        for bench, (batch, steps, layers) in BENCHES.items():
            for impl in IMPLS:
                for image in IMAGES:
                    for repeat in range(REPEATS):
                        specs.append(("rnn_bench", image, repeat, {
                            "bench": bench, "impl": impl, "cell": "lstm",
                            "batch_size": str(max(batch // scale, 1)), "seq_len": str(steps),
                            "hidden_size": "320", "num_layers": str(layers),
                            "batches": "500", "warmup_batches": "100",
                            "seed": str(1234 + repeat)}))
    specs = specs[:n_bench]
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
            "versweep.image_digest": f"sha256:{generation:064x}"}
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


def time_report(uri: str, experiment: str, out: Path) -> tuple[float, float, str]:
    """Wall and CPU seconds (user + system) of one ``python analysis/report.py`` in a fresh
    process, and the last line it printed. CPU time says what the report costs even when
    other work shares the machine; wall time is what a person waits."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, str(ROOT / "analysis" / "report.py"), "--experiment", experiment,
         "--tracking-uri", uri, "--out", str(out)],
        capture_output=True, text=True, cwd=out.parent)
    elapsed = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise SystemExit(f"report.py failed ({proc.returncode}): {proc.stderr[-2000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return elapsed, cpu, proc.stdout.strip().splitlines()[-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[500, 1000, 2000, 5000])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--store-dir", type=Path,
                        default=Path(tempfile.gettempdir()) / "versweep-report-scaling")
    parser.add_argument("--fill-only", action="store_true",
                        help="fill the stores that are missing, time nothing")
    args = parser.parse_args()
    if args.fill_only:
        for size in args.sizes:
            if not (args.store_dir / f"n{size}" / "mlflow.db").exists():
                start = time.perf_counter()
                fill_store(args.store_dir / f"n{size}", size)
                print(f"filled {size} trials in {time.perf_counter() - start:.0f} s", flush=True)
        return
    import matplotlib
    import mlflow
    import numpy

    print(f"mlflow {mlflow.__version__}, numpy {numpy.__version__}, matplotlib "
          f"{matplotlib.__version__}, Python {platform.python_version()}, "
          f"{os.cpu_count()} CPUs")
    print("command: python benchmarks/report_scaling.py --sizes "
          f"{' '.join(map(str, args.sizes))} --repeats {args.repeats}")
    print()
    print(f"{'trials':>7} {'fill_s':>7} {'samples_MB':>10} {'wall_s (each run)':>24} "
          f"{'median_wall_s':>13} {'median_cpu_s':>12} {'load_1min':>9}")
    for size in args.sizes:
        directory = args.store_dir / f"n{size}"
        fill = "reused"
        if not (directory / "mlflow.db").exists():
            start = time.perf_counter()
            fill_store(directory, size)
            fill = f"{time.perf_counter() - start:.0f}"
        uri = "sqlite:///" + str(directory / "mlflow.db")
        megabytes = sum(p.stat().st_size for p in (directory / "mlartifacts").rglob(
            "samples.json")) / 1e6
        walls, cpus, loads = [], [], []
        last = ""
        for attempt in range(args.repeats):
            loads.append(os.getloadavg()[0])
            wall, cpu, last = time_report(uri, f"scaling-{size}", directory / f"out{attempt}")
            walls.append(wall)
            cpus.append(cpu)
        print(f"{size:>7} {fill:>7} {megabytes:>10.1f} "
              f"{' '.join(f'{t:.2f}' for t in walls):>24} {statistics.median(walls):>13.2f} "
              f"{statistics.median(cpus):>12.2f} {statistics.median(loads):>9.1f}", flush=True)
    print()
    print("wall_s: wall time of one `python analysis/report.py --experiment scaling-N "
          "--tracking-uri ... --out ...` in a fresh process (imports, reading the store and "
          "the samples, statistics, figures, md/html/csv, logging them on the parent run); "
          "cpu_s: its user + system CPU time; load_1min: the machine's load average "
          "before the run (2 cores: above 2, other work competed for them).")
    print(f"last line of the last run: {last}")


if __name__ == "__main__":
    main()

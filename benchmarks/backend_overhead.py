"""What a backend costs a trial: start-up latency, and rnn_bench throughput against `local`.

    python benchmarks/backend_overhead.py [--backend docker|venv] [--image torch-2.13.0-cpu]
                                          [--rounds 6]
                                         [--startup-trials 10] [--batches 40] [--warmup 5]
                                         [--batch-size 32] [--seq-len 50] [--hidden-size 320]
                                         [--impl cudnn] [--threads 1]

Both halves go through the real backends and sweeps.execute.trial.run_trial, as a sweep's trial
does (no Ray: Ray's share is benchmarks/orchestration_overhead.py).

1. Start-up latency: ``env`` trials, one after another, on each backend. For docker, the
   time from asking the engine to create the container to the worker's first protocol
   event (create + start + Python + ``import torch``); for venv and local, from spawning
   the child process to its first event (venv: in the entry's environment, already built
   or built before the first timed trial). Medians and ranges over --startup-trials.
2. Throughput: rnn_bench (1x320-ce-short shape at a CPU-friendly size, one thread) on the
   same host in the image's container (or environment) and in the local interpreter,
   alternating which goes first in each round, so drift on a shared machine falls on both.
   The figure is the ratio of the medians of the per-round ms_per_batch_median: backend /
   local. The goal is a backend that costs no measurable throughput (within 2%). The entry
   must hold the same torch as the host for that ratio to mean "the backend", not "another
   torch": the script refuses to compare different torch builds.

docker needs a running engine and the image ``versweep:<image>`` (python images/build.py
build torch-2.13.0-cpu, or the tests' own image); venv needs uv and the package index (or
the environment built already: versweep envs build <image>).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sweeps.execute.backends.docker import DockerBackend  # noqa: E402
from sweeps.execute.backends.local import LocalBackend  # noqa: E402
from sweeps.execute.backends.venv import VenvBackend  # noqa: E402
from sweeps.execute.trial import run_trial  # noqa: E402
from sweeps.grid.load import MATRIX_PATH  # noqa: E402
from sweeps.grid.matrix import load_matrix  # noqa: E402
from sweeps.grid.spec import LOCAL_IMAGE, TrialSpec  # noqa: E402
from workers.workloads import resolve_workload_config  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", default="docker", choices=("docker", "venv"))
    parser.add_argument("--image", default="torch-2.13.0-cpu")
    parser.add_argument("--matrix", default=str(MATRIX_PATH))
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--startup-trials", type=int, default=10)
    parser.add_argument("--batches", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seq-len", type=int, default=50)
    parser.add_argument("--hidden-size", type=int, default=320)
    parser.add_argument("--impl", default="cudnn", choices=("basic", "fused", "cudnn"))
    parser.add_argument("--threads", type=int, default=1)
    return parser.parse_args(argv)


def spec(workload: str, image: str, raw: dict) -> TrialSpec:
    config = resolve_workload_config(workload, raw)
    return TrialSpec(workload=workload, image=image, config=tuple(sorted(config.items())),
                     repeat=0, group=0)


def run(backend, trial: TrialSpec, log_dir: Path):
    outcome = run_trial(backend, trial, log_dir=log_dir, timeout_s=1800, retries=0)
    if outcome.status != "ok":
        raise SystemExit(f"{backend.name}: {trial.name} ended {outcome.status}: "
                         f"{outcome.message}")
    return outcome


def spread(values: list[float]) -> str:
    return (f"median {statistics.median(values):.3f}  min {min(values):.3f}  "
            f"max {max(values):.3f}  (n={len(values)})")


def main(argv=None) -> int:
    args = parse_args(argv)
    image = load_matrix(Path(args.matrix))[args.image]
    other = args.backend
    chosen = (DockerBackend if other == "docker" else VenvBackend)({image.name: image})
    local = LocalBackend()
    backends = {"local": (local, LOCAL_IMAGE), other: (chosen, image.name)}
    log_dir = Path(tempfile.mkdtemp(prefix=f"vs-{other}-bench-"))
    print(f"# {' '.join([Path(sys.argv[0]).name, *(argv or sys.argv[1:])])}")
    print(f"# host: {platform.node()}  {platform.platform()}  cpus={os.cpu_count()}  "
          f"python {platform.python_version()}")
    print(f"# {other}: {image.name}  (matrix: torch {image.torch}, python {image.python})")
    print(f"# load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")

    # Same torch on both sides, or the ratio would measure a version, not a container.
    envs = {name: run(b, spec("env", img, {"device": "cpu"}), log_dir).env or {}
            for name, (b, img) in backends.items()}
    torches = {name: env.get("torch") for name, env in envs.items()}
    print(f"# torch: local {torches['local']}  {other} {torches[other]}; python: local "
          f"{envs['local'].get('python')}  {other} {envs[other].get('python')}")
    if torches["local"] != torches[other]:
        raise SystemExit(f"the {other} entry's torch differs from the host's: the throughput "
                         "ratio would compare torch builds, not the backend")

    print("\n## 1. start-up latency: start of the worker to its first event (seconds)")
    startup: dict[str, list[float]] = {"local": [], other: []}
    for _ in range(args.startup_trials):
        for name, (backend, img) in backends.items():
            outcome = run(backend, spec("env", img, {"device": "cpu", "num_threads": 1}),
                          log_dir)
            startup[name].append(outcome.startup_seconds or float("nan"))
    for name, values in startup.items():
        print(f"{name:>7}: {spread(values)}")
    extra = statistics.median(startup[other]) - statistics.median(startup["local"])
    print(f"  {other} adds {extra:+.3f} s per trial (median against median)")

    print(f"\n## 2. rnn_bench throughput in {other} against local (ms per batch)")
    raw = {"bench": "1x320-ce-short", "impl": args.impl, "batch_size": args.batch_size,
           "seq_len": args.seq_len, "hidden_size": args.hidden_size, "batches": args.batches,
           "warmup_batches": args.warmup, "num_threads": args.threads, "device": "cpu",
           "chunk_batches": args.batches}
    per_round: dict[str, list[float]] = {"local": [], other: []}
    ratios = []
    for round_index in range(args.rounds):
        order = ["local", other] if round_index % 2 == 0 else [other, "local"]
        this_round = {}
        for name in order:
            backend, img = backends[name]
            started = time.monotonic()
            outcome = run(backend, spec("rnn_bench", img, raw), log_dir)
            this_round[name] = outcome.result_metrics["ms_per_batch_median"]
            per_round[name].append(this_round[name])
            print(f"  round {round_index + 1} {name:>6}: {this_round[name]:8.3f} ms/batch "
                  f"(trial wall {time.monotonic() - started:5.1f} s)")
        ratios.append(this_round[other] / this_round["local"])
    local_ms = statistics.median(per_round["local"])
    other_ms = statistics.median(per_round[other])
    print(f"\nlocal : {spread(per_round['local'])} ms/batch")
    print(f"{other}: {spread(per_round[other])} ms/batch")
    print(f"ratio {other}/local of the medians: {other_ms / local_ms:.4f}")
    print(f"# load average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"per-round ratios: median {statistics.median(ratios):.4f}  "
          f"min {min(ratios):.4f}  max {max(ratios):.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Two PyTorch versions, one benchmark, on the CPU: torch 1.13.1 against torch 2.13.0 in Docker.

    python benchmarks/two_versions.py [--rounds 5] [--batches 60] [--warmup 10]
                                      [--batch-size 16] [--seq-len 50] [--threads 1]
                                      [--impl cudnn --impl fused] [--matrix-out PATH]

What versweep does for a version comparison, end to end, without a GPU:

1. Two images, built the way the tests build theirs (tests/dockerenv.py: a debootstrap
   bookworm root filesystem, Python 3.11, torch pip-installed into it, ``docker import``),
   then ``images/build.py build NAME --base <that base>`` on images/Dockerfile:
   - ``torch-2.13.0-cpu``: the host's CPU wheel (the tests' own image);
   - ``torch-1.13.1-cu117``: PyPI's torch 1.13.1 cp311 wheel, the CUDA 11.7 build with its
     nvidia-* wheels (cuDNN 8.5.0.96). It imports and runs on a CPU.
   The second is not an entry of images/matrix.toml (the matrix's 1.13 image is the
   pytorch/pytorch cu116 tag); this script writes a small matrix holding both.
2. ``images/build.py verify`` on both: the torch, Python, CUDA and cuDNN inside are checked.
3. rnn_bench 1x320-ce-short (hidden 320, reduced batch and sequence so a CPU finishes),
   impl cudnn (nn.LSTM; on the CPU its native kernel, not cuDNN) and fused (nn.LSTMCell in
   a Python loop), ``num_threads`` 1, through the real docker backend (DockerBackend +
   run_trial, one locked-down container per trial, exactly as a sweep runs it). Rounds
   alternate which image goes first, so load drift on a shared machine falls on both.

Printed: per image and impl the median over rounds of each trial's ms_per_batch_median,
with the min and max, and the ratio 1.13.1 / 2.13.0; then the same for each trial's
ms_per_batch_min (the fastest batch), which other processes on a shared machine can only
slow down, so it is the steadier figure when the machine is busy. The raw output of the
run quoted in docs/two-versions.md is docs/bench/two_versions.txt.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import dockerenv  # noqa: E402

from sweeps.execute.backends.docker import DockerBackend  # noqa: E402
from sweeps.execute.trial import run_trial  # noqa: E402
from sweeps.grid.matrix import load_matrix  # noqa: E402
from sweeps.grid.spec import TrialSpec  # noqa: E402

NEW, OLD = dockerenv.TEST_IMAGE, "torch-1.13.1-cu117"
# The second base: like the tests' base, with PyPI's torch 1.13.1 (and the nvidia-* wheels
# it requires) instead of the host's wheel. No numpy: 1.13 was built against numpy 1.x.
OLD_RECIPE = {"suite": dockerenv.DEBIAN_SUITE, "include": "python3,ca-certificates",
              "pip": ("torch==1.13.1",)}
OLD_ENTRY = f'''
[[image]]
name = "{OLD}"
base = "python:3.11"
torch = "1.13.1"
python = "3.11"
cuda = "11.7"
cudnn = "8.5.0.96"
archs = ["sm_37", "sm_50", "sm_60", "sm_70", "sm_75", "sm_80", "sm_86"]
notes = """PyPI's torch 1.13.1 cp311 wheel: CUDA 11.7 with nvidia-cudnn-cu11 8.5.0.96 [V PyPI]. \\
Arch list of the 1.13 wheels 3.7;5.0;6.0;7.0;7.5;8.0;8.6 [V release/1.13]. Built by \\
benchmarks/two_versions.py on a debootstrap base (tests/dockerenv.py), not from this base."""
'''


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5,
                        help="rounds; each runs every (impl, image) trial once")
    parser.add_argument("--batches", type=int, default=60, help="batches per trial")
    parser.add_argument("--warmup", type=int, default=10, help="leading batches not timed")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=50)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (1: leave the other cores to the machine)")
    parser.add_argument("--impl", action="append", choices=("basic", "fused", "cudnn"),
                        help="implementations to compare (default: cudnn and fused)")
    parser.add_argument("--matrix-out", type=Path,
                        help="keep the two-image matrix here (default: a temporary file)")
    return parser.parse_args(argv)


def write_matrix(path: Path) -> Path:
    """images/matrix.toml's torch-2.13.0-cpu entry and the 1.13.1 entry, as one matrix."""
    text = (ROOT / "images" / "matrix.toml").read_text()
    start = text.index(f'name = "{NEW}"')
    start = text.rindex("[[image]]", 0, start)
    end = text.index("[[image]]", start + 1)
    path.write_text("schema = 1\n\n" + text[start:end] + OLD_ENTRY)
    return path


def build_py(*args: str) -> None:
    """images/build.py, as a user runs it; its output goes to ours."""
    print(f"$ python images/build.py {' '.join(args)}", flush=True)
    done = subprocess.run([sys.executable, str(ROOT / "images" / "build.py"), *args],
                          cwd=ROOT, text=True, capture_output=True)
    lines = done.stdout.strip().splitlines()
    keep = [line for line in lines if " Step " not in line]  # the step list is noise here
    print("\n".join(keep), flush=True)
    if done.returncode != 0:
        sys.exit(f"images/build.py {args[0]} failed ({done.returncode}):\n{done.stderr}")


def main(argv=None) -> int:
    args = parse_args(argv)
    impls = args.impl or ["cudnn", "fused"]
    started = time.monotonic()
    print(f"host: {platform.node()}, {os.cpu_count()} CPUs, Python {platform.python_version()}")
    new_base = dockerenv.make_base()
    old_base = dockerenv.make_base(OLD_RECIPE)
    print(f"bases: {new_base} (torch 2.13.0+cpu), {old_base} (torch 1.13.1 from PyPI); "
          f"{time.monotonic() - started:.0f} s", flush=True)
    with tempfile.TemporaryDirectory(prefix="versweep-two-") as work:
        matrix_path = write_matrix(args.matrix_out or Path(work) / "matrix.toml")
        build_py("build", NEW, "--base", new_base, "--matrix", str(matrix_path))
        build_py("build", OLD, "--base", old_base, "--matrix", str(matrix_path))
        build_py("verify", NEW, OLD, "--matrix", str(matrix_path))

        images = load_matrix(matrix_path)
        backend = DockerBackend(images)
        config = {"bench": "1x320-ce-short", "device": "cpu", "num_threads": args.threads,
                  "batch_size": args.batch_size, "seq_len": args.seq_len,
                  "batches": args.batches, "warmup_batches": args.warmup,
                  "chunk_batches": args.batches}
        print(f"rnn_bench {config}", flush=True)
        medians: dict[tuple[str, str], list[float]] = {}
        minima: dict[tuple[str, str], list[float]] = {}
        envs: dict[str, dict] = {}
        for round_index in range(args.rounds):
            order = [NEW, OLD] if round_index % 2 == 0 else [OLD, NEW]
            for impl in impls:
                for image in order:
                    trial_config = dict(config, impl=impl)
                    spec = TrialSpec(workload="rnn_bench", image=image,
                                     config=tuple(sorted(trial_config.items())),
                                     repeat=round_index, group=0)
                    outcome = run_trial(backend, spec, retries=0, timeout_s=1800,
                                        log_dir=Path(work) / "logs")
                    if outcome.status != "ok":
                        sys.exit(f"{image} {impl}: {outcome.status}: {outcome.message}\n"
                                 f"{outcome.log_text()[-3000:]}")
                    envs[image] = outcome.env or {}
                    value = float(outcome.result_metrics["ms_per_batch_median"])
                    fastest = float(outcome.result_metrics["ms_per_batch_min"])
                    medians.setdefault((image, impl), []).append(value)
                    minima.setdefault((image, impl), []).append(fastest)
                    print(f"round {round_index + 1} {impl:5s} {image:20s} "
                          f"ms_per_batch_median {value:8.2f}  ms_per_batch_min {fastest:8.2f}",
                          flush=True)

    print()
    for image in (NEW, OLD):
        env = envs[image]
        print(f"{image}: torch {env.get('torch')}, Python {env.get('python')}, CUDA "
              f"{env.get('cuda')}, cuDNN {env.get('cudnn')}, threads "
              f"{env.get('flags', {}).get('num_threads')}")
    for figure, table in (("ms_per_batch_median", medians), ("ms_per_batch_min", minima)):
        print(f"\nper trial {figure}, over {args.rounds} rounds:")
        print(f"{'impl':6s} {'image':20s} {'median':>9s} {'min':>9s} {'max':>9s}")
        for impl in impls:
            for image in (NEW, OLD):
                values = table[(image, impl)]
                print(f"{impl:6s} {image:20s} {statistics.median(values):9.2f} "
                      f"{min(values):9.2f} {max(values):9.2f}")
        for impl in impls:
            old, new = table[(OLD, impl)], table[(NEW, impl)]
            per_round = [o / n for o, n in zip(old, new, strict=True)]
            print(f"{impl}: torch 1.13.1 / torch 2.13.0 = "
                  f"{statistics.median(old) / statistics.median(new):.3f} (median of "
                  f"per-round ratios {statistics.median(per_round):.3f}, range "
                  f"{min(per_round):.3f}-{max(per_round):.3f}; {figure})")
    print(f"\nwall time {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

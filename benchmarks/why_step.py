"""Why a step between two torch versions: the same rnn_bench config in variants, interleaved.

    python benchmarks/why_step.py [--question mkl|cpu-capability] [--rounds 5]
        [--bench 1x320-ce-short] [--impl cudnn] [--old torch-1.13.1-py3.10]
        [--new torch-2.13.0-py3.11] [--out FILE]

Runs the worker (python -m workers rnn_bench, this checkout) in the venv backend's built
environments ($VERSWEEP_ENVS_DIR, default ~/.cache/versweep/envs), one thread, in four
variants, round by round in turning order, and prints each variant's median ms per batch
and its ratio to the new version. The variants answer one question each:

--question mkl (the default: is the step MKL's or oneDNN's?)
  old                 the old environment as it is
  old, MKL as Intel   the same with MKL_DEBUG_CPU_TYPE=5 (MKL 2020.0 and older take their
                      generic code path on AMD CPUs unless told the CPU is an Intel one)
  new                 the new environment as it is
  new, no oneDNN      the same with torch.backends.mkldnn.enabled = False, which turns off
                      oneDNN's fused LSTM kernel (aten::mkldnn_rnn_layer) on the CPU

--question cpu-capability (is the step the vectorised kernels ATen dispatches to?)
  old                 the old environment as it is
  old as AVX2         the same with ATEN_CPU_CAPABILITY=avx2
  new                 the new environment as it is
  new as AVX512       the same with ATEN_CPU_CAPABILITY=avx512 (torch picks its kernels per
                      CPU capability at start-up; the variable overrides the choice, down
                      to what the CPU has)

The size is the versions-cpu grid's (batch 16 x 50 steps, hidden 320, 24 batches of which
8 are dropped). Needs the two environments built (versweep envs build torch-1.13.1-cu116
torch-2.13.0-cpu).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# The worker, with a prelude run first (a torch flag set before the workload starts).
LAUNCH = ("import sys, torch\n{prelude}\nfrom workers.cli import main\n"
          "sys.exit(main(sys.argv[1:]))")


def run_variant(python: Path, config: dict, *, env: dict[str, str], prelude: str) -> float:
    """One worker run; its ms_per_batch_median."""
    args = [str(python), "-c", LAUNCH.format(prelude=prelude), "rnn_bench", "--config",
            json.dumps(config)]
    done = subprocess.run(args, capture_output=True, text=True, cwd=ROOT, timeout=600,
                          env={**os.environ, "PYTHONPATH": str(ROOT), "CUDA_VISIBLE_DEVICES": "",
                               **env})
    results = [json.loads(line) for line in done.stdout.splitlines()
               if line.startswith("{") and '"result"' in line]
    if done.returncode != 0 or not results:
        raise SystemExit(f"{python}: exit {done.returncode}: {done.stderr[-2000:]}")
    return float(results[-1]["metrics"]["ms_per_batch_median"])


def capability(python: Path, env: dict[str, str]) -> str:
    """The CPU capability the variant's torch dispatches to, as it reports it."""
    probe = ("import torch\n"
             "lines = [line.split(':', 1)[1].strip() for line in "
             "torch.__config__.show().splitlines() if 'CPU capability usage:' in line]\n"
             "print(lines[0] if lines else 'unknown')")
    done = subprocess.run([str(python), "-c", probe], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "CUDA_VISIBLE_DEVICES": "", **env})
    return done.stdout.strip().splitlines()[-1] if done.returncode == 0 and done.stdout.strip() \
        else f"unknown (exit {done.returncode})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--question", choices=("mkl", "cpu-capability"), default="mkl")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--bench", default="1x320-ce-short")
    parser.add_argument("--impl", default="cudnn", choices=("basic", "fused", "cudnn"))
    parser.add_argument("--old", default="torch-1.13.1-py3.10")
    parser.add_argument("--new", default="torch-2.13.0-py3.11")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    envs = Path(os.environ.get("VERSWEEP_ENVS_DIR", "~/.cache/versweep/envs")).expanduser()
    old, new = envs / args.old / "bin" / "python", envs / args.new / "bin" / "python"
    config = {"bench": args.bench, "impl": args.impl, "device": "cpu", "num_threads": 1,
              "batch_size": 16, "seq_len": 50, "batches": 24, "warmup_batches": 8,
              "chunk_batches": 8}
    if args.bench.startswith("4x"):
        config.update(batch_size=4, seq_len=20, batches=10, warmup_batches=3,
                      chunk_batches=7)
    variants = {
        "mkl": {
            "old": (old, {}, ""),
            "old, MKL as Intel": (old, {"MKL_DEBUG_CPU_TYPE": "5"}, ""),
            "new": (new, {}, ""),
            "new, no oneDNN": (new, {}, "torch.backends.mkldnn.enabled = False"),
        },
        "cpu-capability": {
            "old": (old, {}, ""),
            "old as AVX2": (old, {"ATEN_CPU_CAPABILITY": "avx2"}, ""),
            "new": (new, {}, ""),
            "new as AVX512": (new, {"ATEN_CPU_CAPABILITY": "avx512"}, ""),
        },
    }[args.question]
    capabilities = {name: capability(python, env) for name, (python, env, _) in variants.items()}
    lines = [f"# why_step, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
             f"# command: python benchmarks/why_step.py --question {args.question} "
             f"--rounds {args.rounds} --bench "
             f"{args.bench} --impl {args.impl} --old {args.old} --new {args.new}",
             f"# machine: {os.cpu_count()} CPUs, {platform.processor() or platform.machine()}, "
             f"load at start {os.getloadavg()[0]:.2f}",
             f"# config: {json.dumps(config, sort_keys=True)}",
             "# CPU capability each variant's torch reports: " + ", ".join(
                 f"{name} {value}" for name, value in capabilities.items())]
    for line in lines:
        print(line, flush=True)
    measured: dict[str, list[float]] = {name: [] for name in variants}
    names = list(variants)
    for round_number in range(args.rounds):
        order = names if round_number % 2 == 0 else names[::-1]
        for name in order:
            python, env, prelude = variants[name]
            measured[name].append(run_variant(python, config, env=env, prelude=prelude))
        line = f"round {round_number + 1}: " + ", ".join(
            f"{name} {measured[name][-1]:.2f}" for name in names) + \
            f" ms/batch  [load {os.getloadavg()[0]:.2f}]"
        print(line, flush=True)
        lines.append(line)
    base = statistics.median(measured["new"])
    for name in names:
        values = measured[name]
        ratios = [v / n for v, n in zip(values, measured["new"], strict=True)]
        line = (f"{name:18s} median {statistics.median(values):8.2f} ms/batch "
                f"(min {min(values):.2f}, max {max(values):.2f}); / new: "
                f"{statistics.median(values) / base:.2f}x (per-round {min(ratios):.2f}.."
                f"{max(ratios):.2f})")
        print(line, flush=True)
        lines.append(line)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()

"""What compiled bytecode saves each process where PYTHONDONTWRITEBYTECODE is set.

    python benchmarks/bytecode.py [--torch 2.13.0] [--rounds 5] [--out docs/bench/bytecode.txt]

On a machine that sets PYTHONDONTWRITEBYTECODE (this kind of CI runner and VM does, for
every process), Python never caches what it compiles: an environment installed without
bytecode compiles its packages' sources again in every process that imports them. This
script builds twin environments from uv's cache, one ``--compile-bytecode`` and one
without (hard links: seconds, no download when the cache holds them), and times, in
interleaved rounds (which twin goes first alternates), with the load average recorded:

1. a ``versions-cpu`` trial's worker (rnn_bench 1x320-ce-short ``basic``, the grid's size,
   one thread), run as the venv backend runs it: the time to its first protocol event
   (start-up: Python, ``import torch``) and to its exit (the whole trial, which also
   imports torch._dynamo through ``torch.optim.Adam``), and the trial's own
   ms_per_batch_median, which bytecode must not change;
2. the host side's imports (``import ray, ray.tune, mlflow``), as each Ray worker, driver
   and report process does, in twins of this project's locked environment.

Needs uv and its cache (or the index). Prints a table; ``--out`` also writes it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from sweeps.envs.store import find_uv, worker_environment  # noqa: E402

TRIAL = {"batch_size": 16, "batches": 24, "bench": "1x320-ce-short", "cell": "lstm",
         "check": True, "check_tolerance": 1e-05, "chunk_batches": 8, "classes": 10,
         "cudnn_benchmark": False, "deterministic": False, "device": "cpu",
         "hidden_size": 320, "impl": "basic", "input_size": 123, "labels_per_sample": None,
         "learning_rate": 0.001, "num_layers": 1, "num_threads": 1, "samples": True,
         "seed": 1234, "seq_len": 50, "tf32": False, "warmup_batches": 8}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--torch", default="2.13.0")
    parser.add_argument("--python", default=sys.executable,
                        help="the interpreter of the torch twins (default: this one)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", help="also write the table here")
    return parser.parse_args(argv)


def run(args: list[str], **kwargs) -> None:
    proc = subprocess.run(args, capture_output=True, text=True, **kwargs)
    if proc.returncode != 0:
        sys.exit(f"bytecode.py: {' '.join(args[:4])} ... failed: {proc.stderr.strip()[-400:]}")


def torch_twin(uv: str, root: Path, python: str, torch: str, compiled: bool) -> Path:
    path = root / f"torch-{'compiled' if compiled else 'plain'}"
    run([uv, "venv", "-q", "--no-project", "--python", python, str(path)])
    run([uv, "pip", "install", "-q", "--python", str(path / "bin" / "python"),
         "--compile-bytecode" if compiled else "--no-compile-bytecode", f"torch=={torch}"])
    return path / "bin" / "python"


def host_twin(uv: str, root: Path, compiled: bool) -> Path:
    path = root / f"host-{'compiled' if compiled else 'plain'}"
    run([uv, "sync", "-q", "--locked", "--extra", "test",
         "--compile-bytecode" if compiled else "--no-compile-bytecode"], cwd=REPO,
        env={**os.environ, "UV_PROJECT_ENVIRONMENT": str(path)})
    return path / "bin" / "python"


def time_worker(python: Path) -> dict[str, float]:
    """Start-up (first event), whole trial (exit) and the trial's own ms per batch."""
    env = worker_environment({"CUDA_VISIBLE_DEVICES": "", "PYTHONDONTWRITEBYTECODE": "1"})
    args = [str(python), "-m", "workers", "rnn_bench", "--config",
            json.dumps(TRIAL, separators=(",", ":"))]
    started = time.monotonic()
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            text=True, cwd=REPO, env=env)
    first = None
    result = {}
    for line in proc.stdout:
        first = first if first is not None else time.monotonic() - started
        event = json.loads(line)
        if event.get("event") == "result":
            result = event["metrics"]
    if proc.wait() != 0 or not result:
        sys.exit(f"bytecode.py: the worker in {python} did not finish its trial")
    return {"startup": first, "trial": time.monotonic() - started,
            "ms_per_batch": result["ms_per_batch_median"]}


def time_imports(python: Path) -> dict[str, float]:
    started = time.monotonic()
    run([str(python), "-c", "import ray, ray.tune, mlflow"],
        env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})
    return {"imports": time.monotonic() - started}


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):.3f} ({min(values):.3f}-{max(values):.3f})"


def main(argv=None) -> int:
    options = parse_args(argv)
    uv = find_uv()
    if uv is None:
        sys.exit("bytecode.py: uv is not installed: pip install uv")
    lines = [f"# python benchmarks/bytecode.py --torch {options.torch} --rounds "
             f"{options.rounds}",
             f"# {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {platform.node()}, "
             f"{os.cpu_count()} CPUs, {platform.processor() or platform.machine()}"]
    with tempfile.TemporaryDirectory(prefix="bytecode-", dir=Path.home() / ".cache") as tmp:
        root = Path(tmp)
        built = time.monotonic()
        twins = {True: {"torch": torch_twin(uv, root, options.python, options.torch, True),
                        "host": host_twin(uv, root, True)},
                 False: {"torch": torch_twin(uv, root, options.python, options.torch, False),
                         "host": host_twin(uv, root, False)}}
        lines.append(f"# twins built in {time.monotonic() - built:.1f} s")
        figures: dict[bool, dict[str, list[float]]] = {True: {}, False: {}}
        loads = []
        for number in range(options.rounds):
            order = (True, False) if number % 2 == 0 else (False, True)
            for compiled in order:
                loads.append(os.getloadavg()[0])
                taken = {**time_worker(twins[compiled]["torch"]),
                         **time_imports(twins[compiled]["host"])}
                for name, value in taken.items():
                    figures[compiled].setdefault(name, []).append(value)
        shutil.rmtree(root, ignore_errors=True)
    lines.append(f"# load average (1 min) before each measurement: median "
                 f"{statistics.median(loads):.2f}, {min(loads):.2f} to {max(loads):.2f}")
    lines.append(f"{'figure (s; ms for ms_per_batch)':36} {'no bytecode':>22} "
                 f"{'compiled':>22} {'ratio plain/compiled':>24}")
    names = {"startup": "trial start-up (first event)", "trial": "whole trial (to exit)",
             "ms_per_batch": "trial's ms_per_batch_median",
             "imports": "import ray, ray.tune, mlflow"}
    for key, name in names.items():
        plain, compiled = figures[False][key], figures[True][key]
        ratios = [p / c for p, c in zip(plain, compiled, strict=True)]
        lines.append(f"{name:36} {spread(plain):>22} {spread(compiled):>22} "
                     f"{spread(ratios):>24}")
    text = "\n".join(lines) + "\n"
    print(text, end="")
    if options.out:
        Path(options.out).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

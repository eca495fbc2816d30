"""The disk every release line's environment needs, measured from the package index.

For each matrix entry the venv backend can build here (sweeps/envs: the Python it would
use, the requirements it would install), uv resolves the environment without installing
it (``uv pip install --dry-run``), and the index's JSON API (PEP 691) gives the size of
each wheel it would download. Per line: the wheels' total; for all lines together: each
wheel counted once (environments share identical wheels through uv's hard-linked cache,
so the union is what the disk holds). Wheels are compressed: the installed size is larger,
by the ratio measured on built environments (docs/performance.md: --installed-ratio).

    python benchmarks/env_disk_plan.py --grid versions-cpu          # the grid's lines
    python benchmarks/env_disk_plan.py --all                        # every buildable line

Needs uv, the interpreters the plan names, and the index (PyPI); builds nothing.
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sweeps.envs.pythons import Interpreter  # noqa: E402
from sweeps.envs.store import EnvPlan, EnvStore, requirements  # noqa: E402
from sweeps.grid.matrix import load_matrix  # noqa: E402
from sweeps.paths import MATRIX_PATH  # noqa: E402

INDEX = "https://pypi.org/simple"
_WOULD = re.compile(r"^\s*\+\s*([A-Za-z0-9_.\-]+)==(\S+)", re.M)


def resolve(store: EnvStore, plan: EnvPlan) -> list[tuple[str, str]]:
    """(name, version) of every package the environment would hold."""
    args = [store.uv, "pip", "install", "--dry-run", "--break-system-packages",
            "--python", plan.interpreter.path, *requirements(plan.torch)]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        raise RuntimeError(f"{plan.key}: uv could not resolve it: {proc.stderr.strip()[-300:]}")
    return sorted(set(_WOULD.findall(proc.stderr + proc.stdout)))


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


_FILES: dict[str, list[dict]] = {}


def files_of(name: str) -> list[dict]:
    key = _normal(name)
    if key not in _FILES:
        request = urllib.request.Request(f"{INDEX}/{key}/",
                                         headers={"Accept": "application/vnd.pypi.simple.v1+json"})
        with urllib.request.urlopen(request, timeout=60) as response:
            _FILES[key] = json.load(response)["files"]
    return _FILES[key]


def _tag_score(filename: str, interpreter: Interpreter) -> int | None:
    """How well a wheel fits this interpreter on linux x86_64 (higher is better); None: not."""
    if not filename.endswith(".whl"):
        return None
    parts = filename[:-4].split("-")
    pythons, abis, platforms = parts[-3], parts[-2], parts[-1]
    cp = f"cp{interpreter.version[0]}{interpreter.version[1]}"
    if not any(p.startswith(("linux_x86_64", "manylinux")) and "x86_64" in p or p == "any"
               for p in platforms.split(".")):
        return None
    if cp in pythons.split(".") and (abis.startswith(cp) or abis in ("abi3", "none")):
        return 3
    if "abi3" in abis and pythons.startswith("cp3"):
        return 2
    if any(p in ("py3", "py2.py3", "py36", "py37", "py38") for p in pythons.split(".")) \
            or pythons.startswith("py3"):
        return 1
    return None


def wheel_of(name: str, version: str, interpreter: Interpreter) -> tuple[str, int]:
    """(file name, bytes) of the wheel uv would download for this interpreter."""
    candidates = []
    for entry in files_of(name):
        filename = entry["filename"]
        if f"-{version}-" not in filename and f"-{version.replace('-', '_')}-" not in filename:
            continue
        score = _tag_score(filename, interpreter)
        if score is not None:
            candidates.append((score, filename, int(entry.get("size") or 0)))
    if not candidates:
        raise RuntimeError(f"no wheel of {name}=={version} for {interpreter.minor} found")
    _, filename, size = max(candidates)
    return filename, size


def gb(size: float) -> str:
    return f"{size / 1e9:.2f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--grid", help="the lines of this grid (sweeps/grids/NAME.toml)")
    which.add_argument("--all", action="store_true", help="every matrix entry buildable here")
    parser.add_argument("--installed-ratio", type=float, default=None,
                        help="installed bytes per wheel byte, to estimate disk from downloads")
    args = parser.parse_args(argv)

    matrix = load_matrix(MATRIX_PATH)
    if args.grid:
        from sweeps.grid.load import load_sweep

        sweep = load_sweep(args.grid)
        names = list(dict.fromkeys(t.image for t in sweep.trials))
    else:
        names = list(matrix)
    store = EnvStore()
    store.uv  # found once, before the threads ask for it  # noqa: B018
    started = time.time()
    plans: dict[str, EnvPlan] = {}
    skipped = []
    for name in names:
        plan = store.plan(matrix[name])
        if isinstance(plan, str):
            skipped.append((name, plan))
        elif plan.key not in {p.key for p in plans.values()}:
            plans[name] = plan
    with ThreadPoolExecutor(max_workers=4) as pool:
        resolved = dict(zip(plans, pool.map(lambda n: resolve(store, plans[n]), plans),
                            strict=True))
    print(f"# env_disk_plan: {len(plans)} environments, index {INDEX}, "
          f"{platform.node()} {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    print("| environment | packages | wheels GB | NVIDIA wheels GB | largest |")
    print("|---|---:|---:|---:|---|")
    union: dict[str, int] = {}
    total = 0
    for name, plan in plans.items():
        wheels = [(pkg, *wheel_of(pkg, version, plan.interpreter))
                  for pkg, version in resolved[name]]
        size = sum(w[2] for w in wheels)
        nvidia = sum(w[2] for w in wheels if _normal(w[0]).startswith(("nvidia-", "triton",
                                                                      "cuda-")))
        largest = max(wheels, key=lambda w: w[2])
        total += size
        for _, filename, wheel_size in wheels:
            union[filename] = wheel_size
        print(f"| {plan.key} | {len(wheels)} | {gb(size)} | {gb(nvidia)} | "
              f"{largest[0]} {gb(largest[2])} |")
    shared = sum(union.values())
    print(f"\nsum of the environments' wheels: {gb(total)} GB; counting each wheel once: "
          f"{gb(shared)} GB ({len(union)} wheels; {shared / total:.0%} of the sum)")
    if args.installed_ratio:
        print(f"installed, at {args.installed_ratio:.2f} bytes per wheel byte: about "
              f"{gb(shared * args.installed_ratio)} GB on disk")
    for name, why in skipped:
        print(f"not buildable here: {name}: {why}")
    print(f"({time.time() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""``versweep envs``: the venv backend's environments, listed, built ahead and pruned.

    versweep envs list                      every matrix entry: its environment (path, size,
                                            last used) or why none can be built here
    versweep envs build torch-2.13.0-cpu    build (with progress lines) what these entries need
    versweep envs build --grid versions     ... what a grid's images need (as --backend venv)
    versweep envs prune                     delete leftovers and broken environments, evict
                                            the least recently used beyond the budget
    versweep envs prune --all               every environment no running trial uses

Entries are matrix names or the selectors ``all``, ``cuda``, ``cpu`` (``--matrix`` for
another matrix). Where they live and how much they may take: ``$VERSWEEP_ENVS_DIR``
(default ``~/.cache/versweep/envs``) and ``$VERSWEEP_ENVS_BUDGET`` (default 100g); how they
are built: sweeps/envs/store.py.

Exit codes: 0 done; 1 an environment could not be built (the reason is printed, the other
entries are still built); 2 bad input (a usage error, an unknown entry or grid, a budget
that is no size or too small for one environment, no uv), as one line
``versweep envs: error: ...``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from sweeps import validate
from sweeps.columns import format_columns
from sweeps.envs.build import do_build, shown_time
from sweeps.envs.store import (
    BUDGET_VAR,
    EnvStore,
    disk_usage,
    format_size,
)
from sweeps.errors import (
    EXIT_OK,
    ArgumentParser,
    UserError,
    run_command,
)
from sweeps.grid.matrix import SELECTORS, load_matrix, select_entries
from sweeps.grid.spec import Image
from sweeps.paths import MATRIX_PATH


def build_parser(prog: str) -> argparse.ArgumentParser:
    parser = ArgumentParser(prog=prog, description="The venv backend's environments: one per "
                            "torch version and Python, built with uv from its shared cache.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                     parser_class=ArgumentParser)
    listing = commands.add_parser("list", help="every matrix entry and its environment")
    listing.add_argument("names", nargs="*", metavar="NAME",
                         help="matrix entries or all / cuda / cpu (default: all)")
    build = commands.add_parser("build", help="build the environments of entries or a grid")
    build.add_argument("names", nargs="*", metavar="NAME",
                       help="matrix entries or all / cuda / cpu")
    build.add_argument("--grid", help="the images of this grid (a name of sweeps/grids or a "
                                      ".toml file), as --backend venv runs them")
    build.add_argument("--address", metavar="HEAD:6379",
                       help="build on every alive node of this Ray cluster (one task pinned "
                            "to each node), not on this machine")
    prune = commands.add_parser("prune", help="evict to the budget; --all: everything unused")
    prune.add_argument("--all", action="store_true", dest="everything",
                       help="delete every environment no running trial uses")
    for sub in (listing, build):
        sub.add_argument("--matrix", default=str(MATRIX_PATH),
                         help="the image matrix (default: images/matrix.toml)")
    return parser


def select(matrix: dict[str, Image], names: Sequence[str], matrix_path: Path) -> list[Image]:
    """The entries named (names or selectors), in matrix order; a UserError for a typo."""
    return select_entries(matrix, names, matrix_path,
                          hint=f"name entries of the matrix or one of {', '.join(SELECTORS)}")


def _grid_images(grid: str, matrix_path: Path) -> list[Image]:
    from sweeps.grid.load import load_sweep

    sweep = load_sweep(grid, ["sweep.backend=venv"], matrix_path=matrix_path)
    return list(sweep.images)


def do_list(store: EnvStore, images: list[Image], out) -> int:
    states = {s.key: s for s in store.states()}
    whole = [s for s in states.values() if s.problem is None]
    counted = sum(int((s.marker or {}).get("size_bytes", 0)) for s in whole)
    on_disk, own = disk_usage(*(s.path for s in whole)) if whole else (0, 0)
    print(f"environments in {store.root}: {len(whole)} built, {format_size(counted)} of "
          f"{BUDGET_VAR}={store.budget_text} ({format_size(on_disk)} on disk counting shared "
          f"files once, {format_size(own)} not shared with uv's cache)", file=out)
    rows = []
    used: set[str] = set()
    for image in images:
        plan = store.plan(image)
        if isinstance(plan, str):
            rows.append([image.name, image.torch, "-", "-", "-",
                         f"cannot be built here: {plan}"])
            continue
        used.add(plan.key)
        state = states.get(plan.key)
        note = f" ({plan.note})" if plan.note else ""
        if state is not None and state.problem is None:
            marker = state.marker or {}
            busy = ", in use" if state.in_use else ""
            rows.append([image.name, image.torch, marker.get("python", "-"),
                         format_size(marker.get("size_bytes")), shown_time(marker.get("last_used")),
                         f"{plan.path}{busy}{note}"])
        else:
            why = "not built" if state is None else f"not whole, rebuilt on use: {state.problem}"
            rows.append([image.name, image.torch, plan.interpreter.full, "-", "-",
                         f"{plan.path} ({why}; Python from {plan.interpreter.path}){note}"])
    print(format_columns(["IMAGE", "TORCH", "PYTHON", "SIZE", "LAST USED", "ENVIRONMENT"],
                         rows, right={"SIZE"}), file=out)
    others = [s for key, s in states.items() if key not in used]
    leftovers = store.leftovers()
    if others or leftovers:
        print("other directories (versweep envs prune deletes what no trial uses):", file=out)
        for state in others:
            what = "no entry listed uses it" if state.problem is None else \
                f"not whole: {state.problem}"
            print(f"  {state.path}: {what}" + (", in use" if state.in_use else ""), file=out)
        for path in leftovers:
            print(f"  {path}: a build or deletion in progress, or one that crashed", file=out)
    return EXIT_OK


def do_prune(store: EnvStore, everything: bool, out) -> int:
    if not everything:
        store.check_budget()  # a mistyped budget would evict every environment not in use
    # A folder never made holds nothing to delete: it is not made (nor locked) to find that.
    removed = (store.prune(everything=everything, progress=lambda line: print(line, file=out))
               if store.root.is_dir() else [])
    kept = [s for s in store.states() if s.problem is None]
    size = sum(int((s.marker or {}).get("size_bytes", 0)) for s in kept)
    busy = sum(1 for s in store.states() if s.in_use)
    print(f"deleted {len(removed)} ({format_size(sum(r[1] for r in removed))}); kept "
          f"{len(kept)} environment(s), {format_size(size)} of {BUDGET_VAR}="
          f"{store.budget_text}" + (f", {busy} in use" if busy else ""), file=out)
    return EXIT_OK


def run(argv: Sequence[str] | None, prog: str, out=None) -> int:
    out = out if out is not None else sys.stdout
    args = build_parser(prog).parse_args(list(sys.argv[1:] if argv is None else argv))
    if getattr(args, "address", None) is not None:  # before the store or a build
        args.address = validate.ray_address(args.address, "--address")
    store = EnvStore()
    if args.command == "prune":
        return do_prune(store, args.everything, out)
    matrix_path = Path(args.matrix)
    matrix = load_matrix(matrix_path)
    if args.command == "list":
        return do_list(store, select(matrix, args.names or ["all"], matrix_path), out)
    images = select(matrix, args.names, matrix_path)
    if args.grid:
        extra = {i.name for i in _grid_images(args.grid, matrix_path)}
        images = [i for i in matrix.values() if i.name in extra or i in images]
    if args.address is not None:
        if not images:
            raise UserError("nothing to build: name matrix entries, all / cuda / cpu, or "
                            "--grid")
        from sweeps.cluster.envbuild import build_on_cluster

        return build_on_cluster(args.address, images, out)
    return do_build(store, images, out)


def main(argv: Sequence[str] | None = None, prog: str = "versweep envs") -> int:
    """``versweep envs``: run, one line per user error."""
    return run_command(prog, lambda: run(argv, prog))

"""Building environments ahead, with a report a person reads: one node's half of
``versweep envs build`` (sweeps/cluster/envbuild.py runs it on every node of a cluster).
"""

from __future__ import annotations

import time

from sweeps.envs.store import BudgetError, BuildError, EnvStore, format_size
from sweeps.errors import EXIT_FAILED, EXIT_OK, UserError
from sweeps.grid.spec import Image


def shown_time(stamp: object) -> str:
    """A marker's ISO time as a person reads it: "2026-12-04 08:47:37 UTC"."""
    return str(stamp).replace("T", " ").replace("Z", " UTC") if stamp else "-"


def do_build(store: EnvStore, images: list[Image], out) -> int:
    if not images:
        raise UserError("nothing to build: name matrix entries, all / cuda / cpu, or --grid")
    _ = store.uv  # one line at once where uv is missing
    store.check_writable()
    counts = {"built": 0, "there": 0, "cannot": 0, "failed": 0}
    done: dict[str, str] = {}
    started = time.monotonic()
    for number, image in enumerate(images, 1):
        head = f"[{number}/{len(images)}] {image.name}"
        plan = store.plan(image)
        if isinstance(plan, str):
            counts["cannot"] += 1
            print(f"{head}: cannot be built here: {plan}", file=out, flush=True)
            continue
        if plan.key in done:
            print(f"{head}: shares {plan.key} ({done[plan.key]})", file=out, flush=True)
            continue
        print(f"{head}: {plan.key}, Python {plan.interpreter.full} ({plan.interpreter.path})"
              + (f"; {plan.note}" if plan.note else ""), file=out, flush=True)
        try:
            env = store.ensure(plan, progress=lambda line: _progress(line, out))
        except BudgetError:
            raise
        except BuildError as exc:
            counts["failed"] += 1
            done[plan.key] = "failed"
            print(f"{head}: failed: {exc}", file=out, flush=True)
            continue
        size = format_size(env.marker.get("size_bytes"))
        if env.built:
            counts["built"] += 1
            done[plan.key] = "built now"
            print(f"{head}: built {plan.key} in {env.marker.get('build_seconds')} s, {size}, "
                  f"torch {env.marker.get('torch_reported')}", file=out, flush=True)
        else:
            counts["there"] += 1
            done[plan.key] = "already built"
            print(f"{head}: {plan.key} is already built ({size}, built "
                  f"{shown_time(env.marker.get('built_at'))})", file=out, flush=True)
    print(f"done in {time.monotonic() - started:.1f} s: {counts['built']} built, "
          f"{counts['there']} already built, {counts['cannot']} cannot be built here, "
          f"{counts['failed']} failed", file=out)
    return EXIT_FAILED if counts["cannot"] or counts["failed"] else EXIT_OK


def _progress(line: str, out) -> None:
    said = line.split(": ", 1)[-1].strip()
    if said.startswith(("+ ", "- ", "Downloading ", "Downloaded ")):
        return  # uv's lines per package: the marker's freeze has them
    print(f"    {line}", file=out, flush=True)



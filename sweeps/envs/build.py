"""Building environments ahead, with a report a person reads: one node's half of
``versweep envs build`` (sweeps/cluster/envbuild.py runs it on every node of a cluster).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from types import TracebackType

from sweeps.envs.store import BudgetError, BuildError, EnvStore, format_size
from sweeps.errors import EXIT_FAILED, EXIT_OK, UserError
from sweeps.grid.spec import Image
from sweeps.progress import Progress, Say, heartbeat

# uv's lines per package ("+ torch==2.1.0", "Downloading torch (766.2MiB)"): the marker's
# freeze lists the packages; the last of them still shows in a heartbeat.
_PER_PACKAGE = ("+ ", "- ", "Downloading ", "Downloaded ")


class BuildProgress:
    """An EnvStore ``progress`` callback for a console, with a heartbeat while it is used.

    The store's own lines (building, waiting for another process's build, verifying,
    built, evicted ...) are said at once; its build tools' output lines (uv's, pip's)
    are kept as the last words of a heartbeat that speaks when the build has said
    nothing for a while::

        torch-1.4.0-py3.6: still building, 45 s (last: Downloading torch (766.2MiB))

    With ``tools``, the tools' lines are said there too, uv's per-package ones left out
    (``versweep envs build``'s report); a sweep's console gets the store's lines and the
    heartbeat only. An environment that is already built says nothing at all.

        with BuildProgress(plan.key, print) as progress:
            store.ensure(plan, progress=progress)
    """

    def __init__(self, key: str, say: Say, *, tools: Say | None = None,
                 every: float | None = None, clock: Callable[[], float] = time.monotonic):
        self.progress = Progress(key, say, doing="building", every=every, clock=clock)
        self.tools = tools
        self._beat = heartbeat(self.progress)

    def __call__(self, line: str) -> None:
        key, _, said = line.partition(": ")
        if key != self.progress.label:  # not of this environment's build: an eviction
            self.progress.say_line(line)
            return
        if said.startswith("  "):  # a tool's output line (store._stream indents them)
            text = said.strip()
            self.progress.note(text)
            if self.tools is not None and not text.startswith(_PER_PACKAGE):
                self.progress.say(said.rstrip(), to=self.tools)
            return
        if said.startswith("waiting"):  # for another process: "still waiting, 40 s"
            self.progress.note("", doing="waiting")
        else:
            self.progress.note(said, doing="building")
        self.progress.say(said)

    def __enter__(self) -> BuildProgress:
        self._beat.__enter__()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self._beat.__exit__(kind, error, trace)


def shown_time(stamp: object) -> str:
    """A marker's ISO time as a person reads it: "2026-12-04 08:47:37 UTC"."""
    return str(stamp).replace("T", " ").replace("Z", " UTC") if stamp else "-"


def do_build(store: EnvStore, images: list[Image], out, live: Say | None = None) -> int:
    """Build what ``images`` need in ``store``, reporting on ``out``; the exit code.

    ``live`` also gets each build's own lines and heartbeats as they happen (a cluster
    node's, relayed to the driver while the node's report waits for its end).
    """
    if not images:
        raise UserError("nothing to build: name matrix entries, all / cuda / cpu, or --grid")
    store.check_budget()  # before anything is planned, printed or made
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
        def report(line: str) -> None:
            _print(f"    {line}", out)

        def said(line: str) -> None:
            report(line)
            if live is not None:
                live(line)

        try:
            with BuildProgress(plan.key, said, tools=report) as progress:
                env = store.ensure(plan, progress=progress)
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


def _print(line: str, out) -> None:
    print(line, file=out, flush=True)



"""The report's worker processes: figures and per-variant statistics computed in forked
processes while the report goes on.

    with pool.report_pool():                                # analysis/command.py build_report
        png = pool.later(plots.grouped_bars, title, ...)   # bytes, or a Pending to wait for
        results = pool.map_each(statistics_of, groups)     # in the workers, in order

A report over thousands of runs spends most of its time in two kinds of work that need
nothing but plain data: each benchmark variant's bootstrap intervals and comparisons, and
a dozen matplotlib figures (a quarter of a second each). On a machine with two or more
CPUs the workers do them while this process reads and writes the rest. The workers are
forked when the pool opens and run the same functions on the same data, so the report is
the same to the last byte (tests/test_report.py compares it with one computed in the
process). Outside a pool, with one CPU, or off Linux (forking shares the report's imports
for free, but is not safe on macOS and absent on Windows), everything runs in the calling
process, as before.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import multiprocessing
import os
import signal
import sys
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

T = TypeVar("T")
R = TypeVar("R")

# The pool of this report (report_pool); None: everything runs in this process.
_POOL: concurrent.futures.ProcessPoolExecutor | None = None
_WORKERS = 0


def usable_cpus() -> int:
    """The CPUs this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


@contextlib.contextmanager
def report_pool(workers: int | None = None) -> Iterator[None]:
    """Run later() and map_each() work in ``workers`` forked processes while open (default:
    as many as the usable CPUs, at most four; by the time the figures are asked for, this
    process has little left to do but wait for them). Every piece of work asked for is done
    when it closes; on an error, what has not started is dropped."""
    global _POOL, _WORKERS
    if workers is None:
        cpus = usable_cpus()
        workers = min(cpus, 4) if cpus > 1 else 0
    if workers < 1 or _POOL is not None or not sys.platform.startswith("linux"):
        yield
        return
    executor = concurrent.futures.ProcessPoolExecutor(
        max_workers=workers, mp_context=multiprocessing.get_context("fork"),
        initializer=_leave_interrupts_to_the_report)
    executor.submit(int).result()  # fork the workers now, before the report's data grow
    _POOL, _WORKERS = executor, workers
    try:
        yield
    except BaseException:
        executor.shutdown(wait=True, cancel_futures=True)
        raise
    finally:
        _POOL, _WORKERS = None, 0
        executor.shutdown(wait=True)


def _leave_interrupts_to_the_report() -> None:
    """A worker ignores Ctrl-C: the report's process stops, drops the work not started and
    lets the workers finish theirs, rather than every worker printing a traceback."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


class Pending:
    """Work running in the pool; ``result()`` waits for it (and does it here if a worker
    died)."""

    def __init__(self, future: concurrent.futures.Future, function: Callable[..., Any],
                 args: tuple, kwargs: dict):
        self._future, self._call = future, (function, args, kwargs)

    def result(self) -> Any:
        try:
            return self._future.result()
        except concurrent.futures.BrokenExecutor:
            function, args, kwargs = self._call
            return function(*args, **kwargs)


def later(function: Callable[..., R], *args: Any, **kwargs: Any) -> R | Pending:
    """``function(*args, **kwargs)`` (a module-level function of plain data) in the pool
    when one is open, as a Pending; else its result now."""
    if _POOL is None:
        return function(*args, **kwargs)
    return Pending(_POOL.submit(function, *args, **kwargs), function, args, kwargs)


def map_each(function: Callable[[T], R], items: Iterable[T]) -> list[R]:
    """[function(item) for item in items], spread over the pool's workers when one is open
    (in chunks, in order); waits for all of them."""
    items = list(items)
    if _POOL is None or len(items) < 2:
        return [function(item) for item in items]
    chunk = max(1, len(items) // (_WORKERS * 4))
    try:
        return list(_POOL.map(function, items, chunksize=chunk))
    except concurrent.futures.BrokenExecutor:
        return [function(item) for item in items]

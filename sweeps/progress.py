"""Progress of long steps as plain console lines: downloads, image pulls, environment builds.

    progress = Progress("ptb.train.txt", say=print)
    progress.update(2_100_000, 5_100_000)   # says a line only if EVERY_S have passed
    ...                                     # "ptb.train.txt: 2.1 MB of 5.1 MB (41%), 1.3 MB/s"
    progress.finish("ptb.train.txt: downloaded")

    build = Progress("torch-1.4.0-py3.6", say=print, doing="building")
    with heartbeat(build):                  # a silent phase still gets a line every HEARTBEAT_S
        for line in uv_output:
            build.note(line)                # kept for the heartbeat, not said
    # "torch-1.4.0-py3.6: still building, 45 s (last: Installed 12 packages)"

Lines are whole lines, said through ``say`` (a function of one line: ``print``, a log's
writer, a relay to the driver of a Ray cluster): no carriage returns and no terminal
codes, so a log, a CI job or Ray's output reads the same as a terminal. They are rate
limited: a byte count at most every EVERY_S seconds (none at all for a step that ends
sooner: its final line says it all), a heartbeat after HEARTBEAT_S seconds of silence.
``VERSWEEP_PROGRESS_EVERY_S`` sets EVERY_S (the heartbeat follows at three times it).

Standard library only; never imports torch.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator

Say = Callable[[str], None]

EVERY_S_VAR = "VERSWEEP_PROGRESS_EVERY_S"
# A byte count at most this often (seconds).
EVERY_S = 5.0
# How many EVERY_S of silence before a heartbeat line ("still building, 45 s").
HEARTBEAT_FACTOR = 3


def every_s() -> float:
    """EVERY_S, or $VERSWEEP_PROGRESS_EVERY_S (a number of seconds, 0 or more); anything
    else set there is one line (UserError), checked before a command starts anything."""
    text = os.environ.get(EVERY_S_VAR, "").strip()
    if not text:
        return EVERY_S
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value < float("inf"):
        from sweeps.errors import UserError

        raise UserError(f"{EVERY_S_VAR}={text!r} is not a number of seconds (0 or more); set "
                        f"it to e.g. {EVERY_S:g}, or unset it")
    return value


def print_line(line: str) -> None:
    """The default ``say``: one line on stdout, flushed (a pipe must not hold it back)."""
    print(line, file=sys.stdout, flush=True)


def format_bytes(size: int | float | None) -> str:
    """1.2 GB, 310 MB, 2.1 MB, 64 kB, 512 B (powers of 1024, as `du -h` counts)."""
    if size is None:
        return "?"
    for unit, scale in (("TB", 2**40), ("GB", 2**30), ("MB", 2**20), ("kB", 2**10)):
        if size >= scale:
            value = size / scale
            return f"{value:.1f} {unit}" if value < 100 else f"{value:.0f} {unit}"
    return f"{int(size)} B"


def format_rate(bytes_per_s: float) -> str:
    return f"{format_bytes(max(bytes_per_s, 0))}/s"


def format_seconds(seconds: float) -> str:
    """45 s, 3 min 20 s, 1 h 05 min."""
    seconds = int(round(max(seconds, 0)))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


def format_transfer(done: int, total: int | None) -> str:
    """'2.1 MB of 5.1 MB (41%)', or '2.1 MB' when the total is not known."""
    if not total:
        return format_bytes(done)
    percent = min(100, int(100 * done / total)) if total > 0 else 0
    return f"{format_bytes(done)} of {format_bytes(total)} ({percent}%)"


class Progress:
    """One long step, said as rate-limited lines ``<label>: ...``; thread-safe.

    ``update`` (bytes so far, and the total where known) says the byte count when EVERY_S
    have passed since the last count (other lines meanwhile do not delay it); ``note``
    keeps what the step last said about itself; ``tick`` (a heartbeat thread calls it)
    says "still <doing>" when the step has said nothing for the heartbeat interval;
    ``say`` says a line now (a change of state worth a line of its own); ``finish``
    says the final line.
    """

    def __init__(self, label: str, say: Say = print_line, *, doing: str = "",
                 every: float | None = None, heartbeat_s: float | None = None,
                 clock: Callable[[], float] = time.monotonic):
        self.label = label
        self.doing = doing  # "pulling", "building" ...: the verb of its lines
        self._say = say
        self.every = every_s() if every is None else every
        self.heartbeat_s = (HEARTBEAT_FACTOR * self.every if heartbeat_s is None
                            else heartbeat_s)
        self.clock = clock
        self.started = clock()
        self.last_said = self.started  # when any line was said (for the heartbeat)
        self.last_count = self.started  # ... a byte count: the first comes EVERY_S in
        self.done: int | None = None
        self.total: int | None = None
        self.detail = ""  # said after the byte count: "3 of 7 layers"
        self.last_note = ""
        self.lines = 0  # how many lines this step has said (the final one included)
        self._window = (self.started, 0)  # (time, bytes) when the last byte count was said
        self._lock = threading.RLock()

    # ---------------------------------------------------------------- what the step tells

    def update(self, done: int, total: int | None = None, detail: str | None = None) -> None:
        """Bytes moved so far (and of how many); a line if one is due."""
        with self._lock:
            self.done, self.total = int(done), (int(total) if total else None)
            if detail is not None:
                self.detail = detail
            if self.clock() - self.last_count >= self.every:
                self._say_bytes()

    def note(self, text: str, doing: str | None = None) -> None:
        """What the step said about itself last (a tool's output line): kept, not said."""
        with self._lock:
            text = text.strip()
            if text:
                self.last_note = text
            if doing is not None:
                self.doing = doing

    def say(self, text: str, to: Say | None = None) -> None:
        """``<label>: <text>`` now, whatever the rate (a change worth its own line); to
        ``to`` instead of the step's own ``say`` where given (a more detailed sink)."""
        with self._lock:
            self._emit(f"{self.label}: {text}", to)

    def say_line(self, line: str) -> None:
        """``line`` as it is, now (a line of the step that names something else)."""
        with self._lock:
            self._emit(line)

    def tick(self) -> None:
        """The heartbeat: a line when the step has been silent too long.

        Only once the step has begun (said or noted something, or counted bytes): an
        environment that is already built, say, never gets a "still building" line.
        """
        with self._lock:
            now = self.clock()
            if not (self.lines or self.last_note or self.done is not None):
                return
            if self.done is not None and now - self.last_count >= self.every:
                self._say_bytes()  # a stalled transfer says its count, its rate 0
            elif now - self.last_said >= self.heartbeat_s:
                last = f" (last: {self.last_note})" if self.last_note else ""
                doing = f"still {self.doing}" if self.doing else "still at it"
                self._emit(f"{self.label}: {doing}, {format_seconds(now - self.started)}"
                           f"{last}")

    def finish(self, text: str | None = None) -> None:
        """The final line: ``text`` (whole, label included), or where a byte count was
        said before, '<label>: <doing> done, 5.1 MB in 3 s (1.3 MB/s)'."""
        with self._lock:
            if text is not None:
                self._emit(text)
            elif self.lines:
                self._emit(f"{self.label}: {self.doing + ' ' if self.doing else ''}done"
                           + (f", {self.summary()}" if self.done is not None else
                              f" in {format_seconds(self.elapsed())}"))

    # ---------------------------------------------------------------- what it says

    def elapsed(self) -> float:
        return self.clock() - self.started

    def summary(self) -> str:
        """'5.1 MB in 4 s (1.3 MB/s)': the bytes moved, the time, the mean rate."""
        seconds = self.elapsed()
        done = self.done or 0
        rate = f" ({format_rate(done / seconds)})" if seconds > 0 else ""
        return f"{format_bytes(done)} in {format_seconds(seconds)}{rate}"

    def bytes_line(self) -> str:
        """'<label>: [doing, ]2.1 MB of 5.1 MB (41%), 1.3 MB/s[, detail]' (rate since the
        last byte count; none once all is there)."""
        now = self.clock()
        done = self.done or 0
        parts = [format_transfer(done, self.total)]
        if self.doing:
            parts.insert(0, self.doing)
        if self.total is None or done < self.total:
            since, then = self._window
            if now > since:
                parts.append(format_rate((done - then) / (now - since)))
        if self.detail:
            parts.append(self.detail)
        return f"{self.label}: {', '.join(parts)}"

    def _say_bytes(self) -> None:
        self._emit(self.bytes_line())
        self.last_count = self.clock()
        self._window = (self.last_count, self.done or 0)

    def _emit(self, line: str, to: Say | None = None) -> None:
        self.last_said = self.clock()
        self.lines += 1
        try:
            (to or self._say)(line)
        except Exception:  # noqa: BLE001 - a progress line must never fail the step
            pass


@contextlib.contextmanager
def heartbeat(progress: Progress, interval: float | None = None) -> Iterator[Progress]:
    """Call ``progress.tick()`` every ``interval`` seconds (default: a quarter of its
    line interval, at most 1 s) on a daemon thread while the block runs: a step that
    prints nothing for long (a big download uv does not count out) still says it is
    alive."""
    if interval is None:
        interval = min(1.0, max(progress.every / 4, 0.05))
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(interval):
            progress.tick()

    thread = threading.Thread(target=beat, name=f"heartbeat {progress.label}", daemon=True)
    thread.start()
    try:
        yield progress
    finally:
        stop.set()
        thread.join(timeout=5)


# ---------------------------------------------------------------- lines from other nodes


class LineRelay:
    """Progress lines said on any node of a Ray cluster, kept until the driver prints them.

    The driver makes it a Ray actor (``ray.remote(num_cpus=0)(LineRelay).remote()``: no
    CPU slot, so a busy node or a head started with --num-cpus 0 holds it too), hands
    ``Relayed(actor, prefix)`` to its tasks or trials as their ``say``, and now and then
    prints what ``actor.take`` returns. Ray keeps the order of one caller's calls, so each
    task's lines arrive in the order it said them.
    """

    def __init__(self) -> None:
        self._lines: list[str] = []

    def say(self, line: str) -> None:
        self._lines.append(line)

    def take(self) -> list[str]:
        lines, self._lines = self._lines, []
        return lines

    def ping(self) -> None:
        """Nothing; a caller that waits for it knows its earlier lines have arrived."""


class Relayed:
    """A ``say`` that sends each line, prefixed, to a LineRelay actor (never waits)."""

    def __init__(self, actor, prefix: str = ""):
        self.actor = actor
        self.prefix = prefix

    def __call__(self, line: str) -> None:
        try:
            self.actor.say.remote(self.prefix + line)
        except Exception:  # noqa: BLE001 - the driver went away: the step goes on
            pass

"""The shared progress lines (sweeps/progress.py): what they say, and how often, on a fake clock."""

from __future__ import annotations

import threading
import time

import pytest

from sweeps import progress
from sweeps.errors import UserError
from sweeps.progress import Progress, format_bytes, format_seconds, format_transfer, heartbeat

MB = 2**20


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> Clock:
    return Clock()


def test_sizes_durations_and_transfers_read_as_a_person_writes_them():
    assert [format_bytes(n) for n in (512, 64 * 2**10, int(2.1 * MB), 310 * MB,
                                      int(1.2 * 2**30))] == [
        "512 B", "64.0 kB", "2.1 MB", "310 MB", "1.2 GB"]
    assert format_bytes(None) == "?"
    assert [format_seconds(s) for s in (0.4, 45, 200, 3900)] == [
        "0 s", "45 s", "3 min 20 s", "1 h 05 min"]
    assert format_transfer(int(2.1 * MB), int(5.1 * MB)) == "2.1 MB of 5.1 MB (41%)"
    assert format_transfer(int(2.1 * MB), None) == "2.1 MB"


def test_byte_counts_come_at_most_once_per_interval_with_the_rate_since_the_last(clock):
    lines: list[str] = []
    step = Progress("ptb.train.txt", lines.append, every=5, clock=clock)
    total = int(5.1 * MB)
    for half in range(1, 23):  # 0.5 MB a second, an update every 0.5 s
        clock.advance(0.5)
        step.update(min(int(half * 0.25 * MB), total), total)

    assert lines == [
        "ptb.train.txt: 2.5 MB of 5.1 MB (49%), 512 kB/s",  # at 5 s, not before
        "ptb.train.txt: 5.0 MB of 5.1 MB (98%), 512 kB/s",  # at 10 s
    ]
    assert len(lines) == 2  # 5.1 MB at 10.5 s and 11 s: the last line was under 5 s ago
    step.finish()
    assert lines[-1] == "ptb.train.txt: done, 5.1 MB in 11 s (475 kB/s)"


def test_a_step_that_ends_before_the_interval_says_only_its_final_line(clock):
    lines: list[str] = []
    step = Progress("ptb.valid.txt", lines.append, every=5, clock=clock)
    clock.advance(1)
    step.update(MB, MB)
    step.finish()  # nothing said before: the caller's own line is the only one wanted
    assert lines == []
    step.finish("ptb.valid.txt: downloaded")
    assert lines == ["ptb.valid.txt: downloaded"]


def test_the_verb_and_detail_of_a_pull_and_an_unknown_total(clock):
    lines: list[str] = []
    pull = Progress("versweep:torch-2.13.0-cpu", lines.append, doing="pulling", every=5,
                    clock=clock)
    clock.advance(10)
    pull.update(310 * MB, int(1.2 * 2**30), detail="2 of 7 layers")
    assert lines == ["versweep:torch-2.13.0-cpu: pulling, 310 MB of 1.2 GB (25%), 31.0 MB/s, "
                     "2 of 7 layers"]
    stream = Progress("corpus", lines.append, every=5, clock=clock)
    clock.advance(5)
    stream.update(10 * MB)  # no Content-Length: no total, no percentage
    assert lines[-1] == "corpus: 10.0 MB, 2.0 MB/s"


def test_a_silent_step_gets_a_heartbeat_with_its_elapsed_time_and_last_words(clock):
    lines: list[str] = []
    build = Progress("torch-1.4.0-py3.6", lines.append, doing="building", every=5,
                     clock=clock)
    clock.advance(30)
    build.tick()
    assert lines == []  # not begun yet: nothing to report (an environment already built)

    build.say("building torch 1.4.0 with Python 3.6.15")
    build.note("Resolved 12 packages in 2.1s")
    clock.advance(14)
    build.tick()
    assert len(lines) == 1  # 14 s of silence: under the heartbeat interval (3 x 5 s)
    build.note("Installed 12 packages in 0.3s")
    clock.advance(1)
    build.tick()
    assert lines[-1] == ("torch-1.4.0-py3.6: still building, 45 s "
                         "(last: Installed 12 packages in 0.3s)")
    clock.advance(1)
    build.tick()
    assert len(lines) == 2  # the heartbeat itself restarts the silence
    build.note("waiting for another build", doing="waiting")
    clock.advance(15)
    build.tick()
    assert lines[-1] == "torch-1.4.0-py3.6: still waiting, 1 min 01 s (last: waiting for " \
                        "another build)"


def test_a_stalled_transfer_says_its_count_with_a_zero_rate(clock):
    lines: list[str] = []
    step = Progress("ptb.test.txt", lines.append, every=5, clock=clock)
    clock.advance(5)
    step.update(MB, 4 * MB)
    clock.advance(5)
    step.tick()  # no byte arrived since the last line
    assert lines[-1] == "ptb.test.txt: 1.0 MB of 4.0 MB (25%), 0 B/s"


def test_lines_are_plain_lines_and_a_failing_say_never_fails_the_step(clock):
    said: list[str] = []
    step = Progress("x", said.append, every=0, clock=clock)
    clock.advance(1)
    step.update(MB, 2 * MB)
    assert said and not any("\r" in line or "\033" in line or "\n" in line for line in said)

    def broken(line: str) -> None:
        raise BrokenPipeError(line)

    quiet = Progress("y", broken, every=0, clock=clock)
    clock.advance(1)
    quiet.update(MB, 2 * MB)  # no exception
    quiet.finish("y: done")


def test_the_interval_comes_from_the_environment(monkeypatch):
    monkeypatch.setenv(progress.EVERY_S_VAR, "0.5")
    assert Progress("x").every == 0.5 and Progress("x").heartbeat_s == 1.5
    # A pace that is no number of seconds is one line, not passed over for the default
    # (the run checks it before anything starts: tests/test_bad_input.py).
    for bad in ("soon", "-1", "nan"):
        monkeypatch.setenv(progress.EVERY_S_VAR, bad)
        with pytest.raises(UserError, match=f"^{progress.EVERY_S_VAR}='{bad}' is not a "
                                            r"number of seconds \(0 or more\)"):
            Progress("x")
    monkeypatch.setenv(progress.EVERY_S_VAR, " ")
    assert Progress("x").every == progress.EVERY_S
    monkeypatch.delenv(progress.EVERY_S_VAR)
    assert Progress("x").every == progress.EVERY_S


def test_the_heartbeat_thread_ticks_while_the_block_runs_and_stops_after():
    lines: list[str] = []
    ticked = threading.Event()
    step = Progress("uv", lines.append, doing="downloading", every=0.01, heartbeat_s=0.05)
    step.say("started")
    original = step.tick

    def tick() -> None:
        original()
        if len(lines) >= 2:
            ticked.set()

    step.tick = tick  # type: ignore[method-assign]
    with heartbeat(step, interval=0.01):
        assert ticked.wait(5), lines
    after = len(lines)
    time.sleep(0.2)
    assert len(lines) == after  # stopped with the block
    assert lines[1].startswith("uv: still downloading, 0 s")

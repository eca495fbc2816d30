"""One trial, start to decision, without Ray: start the worker, stream it, map how it ended.

    outcome = run_trial(backend, spec, gpu_ids=[], timeout_s=600, retries=1,
                        on_event=print, log_dir=Path("logs"))
    outcome.status   # "ok", "unsupported", "diverged", "failed" or "stopped"

How it ends becomes a status by the rules of sweeps/status.py (the only place that
decides one): a result is ok, unsupported and diverged are results too, a crash is
retried ``retries`` times and then failed with its stderr tail, a timeout kills the
worker's process group and fails, a stop request kills it and stops; a reason from
backend.check makes it unsupported before any worker starts, and a backend that cannot
check or start it fails it with the backend's words (never an exception out of the
trial, which Ray Tune would take for a lost node).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from sweeps import status as rules
from sweeps.errors import UserError
from sweeps.execute.backends import Backend
from sweeps.grid.spec import TrialSpec
from sweeps.status import Decision, Status

# How many stderr lines a failed trial's message keeps.
STDERR_TAIL_IN_MESSAGE = 15
# How many times a trial whose worker's engine went away under it (a Docker engine
# restarted) is started again, besides the ``retries`` of a crash; each start first
# waits for the engine (sweeps/execute/backends/docker.py, $VERSWEEP_ENGINE_WAIT_S).
ENGINE_RETRIES = 3


@dataclass
class Outcome:
    """How a trial ended, and what the host needs to record it.

    After a retry, everything an attempt produced (env, metrics, start-up, tags) is that
    of the last attempt, the one that decided the trial; the log keeps every attempt.
    """

    status: Status
    message: str = ""  # why it is not "ok": the reason, the error, the stderr tail
    decided: bool = True  # False: interrupted, --resume runs it again (sweeps/status.py)
    exit_code: int | None = None
    attempts: int = 0
    env: dict | None = None  # the env event of the last attempt
    result_metrics: dict[str, float] = field(default_factory=dict)
    last_metrics: dict[str, float] = field(default_factory=dict)  # its last metric event's
    last_step: int | None = None
    samples: list[float] | None = None
    startup_seconds: float | None = None  # worker start to its first event (last attempt)
    wall_seconds: float = 0.0
    log_path: Path | None = None
    tags: dict[str, str] = field(default_factory=dict)  # where it ran (image digest ...)
    artifacts: dict[str, str] = field(default_factory=dict)  # file name -> text (backend's)
    decided_before_start: bool = False  # unsupported by backend.check: no worker ran

    def take(self, decision: Decision) -> None:
        self.status, self.message, self.decided = (decision.status, decision.message,
                                                   decision.decided)

    def log_text(self) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        return self.log_path.read_text(encoding="utf-8", errors="replace")


class _Attempt:
    """What one run of the worker produced, before it is judged."""

    def __init__(self):
        self.env: dict | None = None
        self.terminal: dict | None = None  # the result / unsupported / error event
        self.violation = ""  # a protocol violation, if any
        self.metrics: dict[str, float] = {}
        self.step: int | None = None
        self.diverged: str | None = None  # the host found a figure past the workload's bound


def run_trial(backend: Backend, spec: TrialSpec, *, gpu_ids: Sequence[str] = (),
              timeout_s: float | None = None, retries: int = 1,
              on_event: Callable[[dict], None] | None = None, log_dir: Path,
              stop: threading.Event | None = None,
              log_name: str | None = None) -> Outcome:
    """Run ``spec`` on ``backend`` until it reaches a decision; return the Outcome.

    on_event is called with every protocol event as it arrives (in this thread); if it
    raises, the worker's process group is killed and the exception propagates. Setting
    ``stop`` (from any thread) kills the worker and ends the trial as "stopped".
    The worker's log (command, non-protocol stdout, stderr, every attempt) goes to
    ``log_dir/<key>.log``.
    """
    log_path = Path(log_dir) / (log_name or f"{spec.key}.log")
    stop = stop if stop is not None else threading.Event()
    started = time.monotonic()
    outcome = Outcome(status=Status.FAILED, log_path=log_path)
    try:
        reason = backend.check(spec, gpu_ids=list(gpu_ids))
    except UserError as exc:
        # The backend cannot even judge the trial here (the venv backend without uv on
        # this node).
        outcome.take(rules.backend_refused("the backend could not check the trial", exc))
        _log_line(log_path, outcome.message)
        outcome.wall_seconds = time.monotonic() - started
        return outcome
    if reason is not None:
        _log_line(log_path, f"not started: unsupported on this node: {reason}")
        outcome.take(rules.unsupported_here(reason))
        outcome.decided_before_start = True
        outcome.wall_seconds = time.monotonic() - started
        return outcome
    crashes = engine_losses = 0
    attempt_number = 0
    while True:
        attempt_number += 1
        outcome.attempts = attempt_number
        load = MachineLoad.now()
        retry, outcome = _run_attempt(backend, spec, gpu_ids, timeout_s, on_event, stop,
                                      log_path, outcome, attempt_number)
        outcome.tags.update(load.tags())  # the attempt that decided the trial
        if not retry or stop.is_set():
            break
        if not outcome.decided:
            # Its engine went away under it (sweeps/status.py): not a crash of the
            # worker, so not one of its ``retries``. Past ENGINE_RETRIES the trial stays
            # interrupted, and --resume runs it again.
            engine_losses += 1
            if engine_losses > ENGINE_RETRIES:
                break
            continue
        crashes += 1
        if crashes > retries:
            break
    outcome.wall_seconds = time.monotonic() - started
    return outcome


class MachineLoad:
    """How busy this node was before and during a trial (Linux; elsewhere nothing).

    A timing measured while other work competed for the CPUs is not comparable with one
    measured on a quiet machine: the trial records the 1-minute load average when its
    worker started, and how many CPUs were busy on average while it ran (from
    /proc/stat, everything on the node: the worker, versweep, and anything else). A
    report compares the second with the CPUs the trial itself uses.
    """

    def __init__(self):
        self.load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
        self.cpu = _cpu_jiffies()

    @classmethod
    def now(cls) -> MachineLoad:
        return cls()

    def tags(self) -> dict[str, str]:
        found = {}
        if self.load is not None:
            found["versweep.load_before"] = f"{self.load:.2f}"
        end = _cpu_jiffies()
        if self.cpu is not None and end is not None and end[1] > self.cpu[1]:
            busy = (end[0] - self.cpu[0]) / (end[1] - self.cpu[1])
            found["versweep.busy_cpus"] = f"{busy * (os.cpu_count() or 1):.2f}"
            found["versweep.cpus"] = str(os.cpu_count() or 1)
        return found


def _cpu_jiffies() -> tuple[int, int] | None:
    """(busy, total) CPU time of the whole node so far, in clock ticks; None off Linux."""
    try:
        with open("/proc/stat", encoding="ascii") as stat:
            fields = [int(value) for value in stat.readline().split()[1:9]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + fields[4]  # idle + iowait
    return sum(fields) - idle, sum(fields)


def _run_attempt(backend, spec, gpu_ids, timeout_s, on_event, stop, log_path, outcome,
                 attempt_number):
    """One worker run; returns (should_retry, outcome)."""
    if attempt_number > 1:
        with open(log_path, "a", encoding="utf-8") as log:
            log.write(f"\n--- attempt {attempt_number} ---\n")
    try:
        handle = backend.start(spec, gpu_ids=list(gpu_ids), log_path=log_path)
    except UserError as exc:
        # The backend cannot start a worker here (an image gone since the preflight).
        outcome.take(rules.backend_refused("the worker did not start", exc))
        _log_line(log_path, outcome.message)
        outcome.exit_code = None
        outcome.env, outcome.tags, outcome.startup_seconds = None, {}, None
        outcome.artifacts = {}
        outcome.last_metrics, outcome.last_step = {}, None
        return False, outcome
    timed_out = threading.Event()
    finished = threading.Event()

    def watchdog():
        # Wakes on a stop request or the timeout, whichever comes first; the
        # worker's stdout then closes and the event loop below ends.
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while not finished.is_set():
            if stop.is_set():
                handle.kill()
                return
            if deadline is not None and time.monotonic() >= deadline:
                timed_out.set()
                handle.kill()
                return
            stop.wait(0.05)

    guard = threading.Thread(target=watchdog, daemon=True)
    guard.start()
    attempt = _Attempt()
    diverged_reason = spec.plugin.diverged_reason
    try:
        for event in handle.events():
            _take_event(attempt, event)
            if on_event is not None:
                on_event(event)
            if attempt.violation:
                handle.kill()
                break
            if event.get("event") in ("metric", "result") and attempt.diverged is None:
                attempt.diverged = diverged_reason(event.get("metrics") or {},
                                                   spec.config_dict)
                if attempt.diverged is not None:
                    if event.get("event") == "metric":
                        attempt.diverged += f" (at step {event.get('step')}; stopped there)"
                        handle.kill()
                        break
        exit_code = handle.wait()
    finally:
        finished.set()
        handle.close()  # kills the group if on_event raised (early stop, Ctrl-C)
        guard.join(1)

    # Everything below is this attempt's alone: a retry's outcome must not keep the env,
    # the metrics or the container of the attempt that crashed before it.
    outcome.exit_code = exit_code
    outcome.env = attempt.env
    outcome.tags = dict(handle.tags)
    outcome.artifacts = dict(handle.artifacts)
    outcome.startup_seconds = handle.startup_seconds
    outcome.last_metrics, outcome.last_step = attempt.metrics, attempt.step
    decision = rules.worker_end(
        terminal=attempt.terminal, exit_code=exit_code, stop_requested=stop.is_set(),
        timed_out=timed_out.is_set(), killed=handle.killed, timeout_s=timeout_s,
        violation=attempt.violation,
        stderr_tail=list(handle.stderr_tail)[-STDERR_TAIL_IN_MESSAGE:],
        diverged=attempt.diverged, out_of_memory=handle.out_of_memory,
        engine_lost=handle.engine_lost, engine_gave_up=handle.engine_gave_up)
    outcome.take(decision)
    if decision.status == Status.OK:
        terminal = attempt.terminal or {}
        outcome.result_metrics = {k: v for k, v in (terminal.get("metrics") or {}).items()
                                  if isinstance(v, (int, float)) and not isinstance(v, bool)}
        outcome.samples = terminal.get("samples")
    return decision.retry, outcome


def _log_line(log_path: Path, line: str) -> None:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "a", encoding="utf-8") as log:
        log.write(line + "\n")


def _take_event(attempt: _Attempt, event: dict) -> None:
    """Check one event against protocol v1 and keep what the outcome needs."""
    kind = event.get("event")
    if event.get("v") != 1:
        attempt.violation = f"protocol version {event.get('v')!r}, expected 1"
    elif attempt.env is None and kind != "env":
        attempt.violation = f"the first event was '{kind}', not 'env'"
    elif kind == "env":
        attempt.env = event
    elif kind == "metric":
        metrics = event.get("metrics") or {}
        attempt.metrics = {k: v for k, v in metrics.items()
                           if isinstance(v, (int, float)) and not isinstance(v, bool)}
        attempt.step = event.get("step")
    elif kind in ("result", "unsupported", "error"):
        if attempt.terminal is None:
            attempt.terminal = event
    else:
        attempt.violation = f"unknown event '{kind}'"

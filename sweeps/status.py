"""How a trial ended: the five statuses, and every rule that decides one.

A trial's status is decided here and nowhere else; the trial process (sweeps/execute/
trial.py) and the driver (sweeps/execute/tune.py, for trials that could not decide
themselves) call these rules, and the records (sweeps/records/), the summary and the
reports only carry the status they were given.

    status        a decision?  what it means
    ok            yes          the worker sent its result and exited 0
    unsupported   yes          this torch / image / GPU cannot run the config (a result:
                               reports show it, it is not retried, not a failure)
    diverged      yes          the loss became NaN or inf, or a figure passed the workload's
                               bound (ptb_lm: perplexity > 10 x vocabulary): a result
                               about the config
    failed        yes          a crash (retried first), a bad config, a timeout, a
                               protocol violation, a backend that could not start it
    stopped       ASHA: yes    stopped early by ASHA (a decision: the search moved on);
                  Ctrl-C: no   interrupted (not a decision: --resume runs it again)

The rules, in the order they are tried:

    worker end (worker_end)
      stop requested and the worker was killed     -> stopped, not decided
      the host found a figure past the workload's bound (a metric event: the worker is
        killed; or the result)                     -> diverged
      the timeout passed and the worker was killed -> failed "timed out after N s"
      the engine that ran it went away (a Docker engine stopped or restarted under the
        container)                                 -> stopped, not decided, run again
                                                      (trial.py: up to ENGINE_RETRIES
                                                      times, then --resume)
      the kernel's OOM killer ended it at its container's memory limit
                                                   -> failed, not retried (one line: the
                                                      limit, and what to raise)
      result          + exit 0                     -> ok
      unsupported     + exit 3                     -> unsupported
      error diverged  + exit 4                     -> diverged
      error           + exit 2 (bad config, data)  -> failed, not retried
      error           + exit 5 (implementations disagree) -> failed, not retried
      anything else (a crash, a protocol violation) -> failed, retried
    before the worker (before_start)
      backend.check gives a reason                 -> unsupported, no worker starts
      backend.check or backend.start raises        -> failed with its words, not retried
    a trial that never sent its final report (unreported, on the driver)
      ASHA stopped it                              -> stopped, decided
      its records store gave up waiting for the tracking server ($VERSWEEP_STORE_WAIT_S),
        or its artifact store had no space left    -> stopped, not decided
      its trial process raised (a bug, a lost node) -> failed, decided
      otherwise (Ctrl-C, a driver that stopped)    -> stopped, not decided
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass

# The worker's exit codes (workers/protocol.py).
EXIT_OK, EXIT_BAD_CONFIG, EXIT_UNSUPPORTED, EXIT_DIVERGED, EXIT_MISMATCH = 0, 2, 3, 4, 5


class Status(enum.StrEnum):
    """A trial's status; a str, so it is its own MLflow tag value and compares to one."""

    OK = "ok"
    UNSUPPORTED = "unsupported"
    FAILED = "failed"
    DIVERGED = "diverged"
    STOPPED = "stopped"

    @classmethod
    def parse(cls, text: str | None, *, default: Status | None = None) -> Status:
        """The status a record names; ValueError naming the valid ones for anything else."""
        if text is None and default is not None:
            return default
        try:
            return cls(str(text))
        except ValueError:
            raise ValueError(f"status {text!r} is not one of {', '.join(STATUSES)}") from None

    @property
    def has_figures(self) -> bool:
        """Whether its metrics may rank it: an ok trial, or one ASHA stopped part way."""
        return self in (Status.OK, Status.STOPPED)

    @property
    def has_curve(self) -> bool:
        """Whether it logged steps worth plotting (it trained, whether or not to the end)."""
        return self in (Status.OK, Status.DIVERGED, Status.STOPPED)


# Every status, in the order summaries and reports list them.
STATUSES: tuple[str, ...] = tuple(status.value for status in Status)


@dataclass(frozen=True)
class Decision:
    """A status with why, and what to do next."""

    status: Status
    message: str = ""
    retry: bool = False  # a crash: start the worker again if attempts are left
    decided: bool = True  # False: the record is not a decision, --resume runs the trial again


def worker_end(*, terminal: dict | None, exit_code: int | None, stop_requested: bool,
               timed_out: bool, killed: bool, timeout_s: float | None = None,
               violation: str = "", stderr_tail: Sequence[str] = (),
               diverged: str | None = None, out_of_memory: str | None = None,
               engine_lost: str | None = None, engine_gave_up: bool = False) -> Decision:
    """The decision for one run of the worker, from its last event and its exit code.

    ``terminal`` is its result / unsupported / error event (None: it sent none);
    ``killed`` whether the host killed it (a worker that finished first, at the moment of
    a stop or the deadline, keeps its own ending); ``diverged`` why the host found its
    figures past the workload's bound (Workload.diverged_reason), or None;
    ``out_of_memory`` / ``engine_lost`` the backend's line when the worker was ended from
    outside by the OOM killer or by its engine going away (WorkerHandle), else None;
    ``engine_gave_up`` whether the engine stayed away past the wait (not run again here).
    """
    if stop_requested and killed:
        # In a trial process a stop comes from Tune shutting it down (Ctrl-C): not a
        # decision. ASHA's stops are recorded as decisions by the driver (``unreported``).
        return Decision(Status.STOPPED, "stopped before it finished", decided=False)
    if diverged and not violation:
        return Decision(Status.DIVERGED, diverged)
    if timed_out and killed:
        return Decision(Status.FAILED, f"timed out after {timeout_s:g} s")
    terminal = terminal or {}
    kind = terminal.get("event")
    finished_itself = kind == "result" and exit_code == EXIT_OK
    if engine_lost and not finished_itself:
        # Not the trial's doing: nothing is known about the config. Run it again.
        return Decision(Status.STOPPED, f"interrupted: {engine_lost}",
                        retry=not engine_gave_up, decided=False)
    if out_of_memory and not finished_itself:
        # The same config in the same limit is killed the same way: no retry.
        return Decision(Status.FAILED, out_of_memory)
    if not violation:
        if kind == "result" and exit_code == EXIT_OK:
            return Decision(Status.OK)
        if kind == "unsupported" and exit_code == EXIT_UNSUPPORTED:
            return Decision(Status.UNSUPPORTED, str(terminal.get("reason", "")))
        if (kind == "error" and terminal.get("kind") == "diverged"
                and exit_code == EXIT_DIVERGED):
            return Decision(Status.DIVERGED, str(terminal.get("message", "")))
        if kind == "error" and exit_code in (EXIT_BAD_CONFIG, EXIT_MISMATCH):
            # bad_config / data, or implementations that disagree (the correctness gate):
            # the same config fails the same way again, so no retry.
            return Decision(Status.FAILED,
                            f"{terminal.get('kind', 'error')}: {terminal.get('message', '')}")
    # A crash: anything else. Keep what explains it.
    if violation:
        why = f"protocol violation: {violation}"
    elif kind == "error":
        why = f"{terminal.get('kind')}: {terminal.get('message', '')} (exit {exit_code})"
    elif kind is None:
        why = f"the worker exited with code {exit_code} without a final event"
    else:
        why = f"the worker sent '{kind}' but exited with code {exit_code}"
    tail = "\n".join(stderr_tail)
    return Decision(Status.FAILED, why + (f"\nstderr tail:\n{tail}" if tail else ""),
                    retry=True)


def unsupported_here(reason: str) -> Decision:
    """backend.check found a reason (an image without kernels for this GPU): no worker runs."""
    return Decision(Status.UNSUPPORTED, reason)


def backend_refused(what: str, error: Exception) -> Decision:
    """backend.check or backend.start raised a UserError: starting again would fail alike.

    A decision with the backend's words, never an exception out of the trial process,
    which Ray Tune would take for a lost node and retry.
    """
    return Decision(Status.FAILED, f"{what}: {error}")


# The start of the one line a records store call gives up with (sweeps/records/store.py).
STORE_UNAVAILABLE_PREFIX = "the MLflow store was unavailable"
# The start of the line of an artifact write that found no space (sweeps/records/store.py).
ARTIFACT_STORE_FULL_PREFIX = "the MLflow artifact store is full"
# A trial process that raised one of these could not write its records: not its doing.
RECORDS_NOT_WRITTEN = (STORE_UNAVAILABLE_PREFIX, ARTIFACT_STORE_FULL_PREFIX)


def records_not_written(error: str | None) -> bool:
    """Whether a trial process's error says its records could not be written."""
    return error is not None and any(prefix in error for prefix in RECORDS_NOT_WRITTEN)


def unreported(*, asha_step: float | None = None, process_error: str | None = None,
               started: bool = True) -> Decision:
    """The decision for a trial that never sent its final report (decided by the driver)."""
    if asha_step is not None:
        return Decision(Status.STOPPED, f"stopped early by ASHA at step {asha_step}")
    if records_not_written(process_error):
        # Not the trial's doing: its records could not be written (the store gave up
        # waiting for a tracking server, or its artifact store has no space left).
        # Interrupted, so --resume runs it again.
        return Decision(Status.STOPPED, f"interrupted: {process_error}", decided=False)
    if process_error is not None:
        return Decision(Status.FAILED, f"the trial process failed: {process_error}")
    when = "finished" if started else "started"
    return Decision(Status.STOPPED, f"interrupted before it {when}", decided=False)


__all__ = ["Decision", "STATUSES", "Status", "backend_refused", "unreported",
           "unsupported_here", "worker_end"]

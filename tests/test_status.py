"""The status rules (sweeps/status.py): every row of the table, and that no one else decides.

The end-to-end behaviour (real workers ending each way, through every backend) is in
test_backends.py; this suite pins the table itself, row by row.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from sweeps import status as rules
from sweeps.status import STATUSES, Status

ROOT = Path(__file__).resolve().parent.parent


def end(terminal=None, exit_code=0, *, stop=False, timeout=False, killed=False,
        violation="", tail=()):
    return rules.worker_end(terminal=terminal, exit_code=exit_code, stop_requested=stop,
                            timed_out=timeout, killed=killed, timeout_s=30,
                            violation=violation, stderr_tail=tail)


RESULT = {"event": "result", "metrics": {"x": 1}}
UNSUPPORTED = {"event": "unsupported", "reason": "CTC needs torch >= 1.0"}
DIVERGED = {"event": "error", "kind": "diverged", "message": "loss is nan at step 3"}
BAD_CONFIG = {"event": "error", "kind": "bad_config", "message": "hidden_size must be > 0"}
MISMATCH = {"event": "error", "kind": "mismatch", "message": "cudnn and cell disagree"}


@pytest.mark.parametrize("terminal, exit_code, status, message, retry", [
    (RESULT, 0, "ok", "", False),
    (UNSUPPORTED, 3, "unsupported", "CTC needs torch >= 1.0", False),
    (DIVERGED, 4, "diverged", "loss is nan at step 3", False),
    (BAD_CONFIG, 2, "failed", "bad_config: hidden_size must be > 0", False),
    (MISMATCH, 5, "failed", "mismatch: cudnn and cell disagree", False),
    # The event and the exit code must agree; anything else is a crash, retried.
    (RESULT, 1, "failed", "the worker sent 'result' but exited with code 1", True),
    (UNSUPPORTED, 0, "failed", "the worker sent 'unsupported' but exited with code 0", True),
    (DIVERGED, 1, "failed", "diverged: loss is nan at step 3 (exit 1)", True),
    (None, -11, "failed", "the worker exited with code -11 without a final event", True),
])
def test_how_the_worker_ended_decides_the_status(terminal, exit_code, status, message, retry):
    decision = end(terminal, exit_code)
    assert (decision.status, decision.message, decision.retry, decision.decided) == (
        status, message, retry, True)


def test_a_crash_keeps_the_stderr_tail_and_a_violation_is_a_crash_whatever_came_before():
    crash = end(None, 1, tail=["Traceback (most recent call last):", "MemoryError"])
    assert crash.message.endswith("stderr tail:\nTraceback (most recent call last):\n"
                                  "MemoryError")
    violation = end(RESULT, 0, violation="unknown event 'progress'", killed=True)
    assert (violation.status, violation.retry) == ("failed", True)
    assert violation.message == "protocol violation: unknown event 'progress'"


def test_a_stop_or_a_timeout_decides_only_when_the_host_killed_the_worker():
    assert end(RESULT, 0, stop=True, killed=False).status == "ok"  # it finished first
    stopped = end(None, -9, stop=True, killed=True)
    assert (stopped.status, stopped.decided) == ("stopped", False)  # --resume reruns it
    assert end(RESULT, 0, timeout=True, killed=False).status == "ok"
    timed_out = end(None, -9, timeout=True, killed=True)
    assert (timed_out.status, timed_out.message, timed_out.retry) == (
        "failed", "timed out after 30 s", False)


def test_what_the_driver_decides_for_a_trial_without_a_final_report():
    asha = rules.unreported(asha_step=4)
    assert (asha.status, asha.message, asha.decided) == (
        "stopped", "stopped early by ASHA at step 4", True)
    lost = rules.unreported(process_error="node died")
    assert (lost.status, lost.message, lost.decided) == (
        "failed", "the trial process failed: node died", True)
    interrupted = rules.unreported()
    assert (interrupted.status, interrupted.decided) == ("stopped", False)
    assert rules.unreported(started=False).message == "interrupted before it started"


def test_before_the_worker_the_backend_decides_with_its_own_words():
    assert rules.unsupported_here("no kernels for sm_90").status == "unsupported"
    refused = rules.backend_refused("the worker did not start", ValueError("image gone"))
    assert (refused.status, refused.message, refused.retry) == (
        "failed", "the worker did not start: image gone", False)


def test_a_status_is_its_own_tag_value_and_an_unknown_one_names_the_valid_ones():
    assert STATUSES == ("ok", "unsupported", "failed", "diverged", "stopped")
    assert Status.OK == "ok" and f"{Status.DIVERGED}" == "diverged"
    assert Status.parse(None, default=Status.OK) is Status.OK
    with pytest.raises(ValueError, match="status 'done' is not one of ok, unsupported, "
                                         "failed, diverged, stopped"):
        Status.parse("done")
    assert [s.value for s in Status if s.has_figures] == ["ok", "stopped"]
    assert [s.value for s in Status if s.has_curve] == ["ok", "diverged", "stopped"]


def test_no_module_but_the_rules_assigns_a_status_literal():
    """A status is decided in sweeps/status.py: elsewhere no code sets one from a literal."""
    offenders = []
    for path in sorted((ROOT / "sweeps").rglob("*.py")) + sorted((ROOT / "analysis").rglob("*.py")):
        if path.name != "status.py":
            offenders += [f"{path.relative_to(ROOT)}:{line}"
                          for line in status_literals(path.read_text())]
    assert offenders == []


def status_literals(source: str) -> list[int]:
    """Lines that set a `status` (a name, attribute or keyword) to a status literal."""
    def name(target) -> str:
        return getattr(target, "attr", getattr(target, "id", ""))

    found = []
    for node in ast.walk(ast.parse(source)):
        pairs = []
        if isinstance(node, ast.Assign):
            for target in node.targets:
                if isinstance(target, ast.Tuple) and isinstance(node.value, ast.Tuple):
                    pairs += list(zip(target.elts, node.value.elts, strict=False))
                else:
                    pairs.append((target, node.value))
            pairs = [(name(t), v) for t, v in pairs]
        elif isinstance(node, ast.keyword):
            pairs = [(node.arg or "", node.value)]
        if any(n == "status" and isinstance(v, ast.Constant) and v.value in STATUSES
               for n, v in pairs):
            found.append(node.lineno)
    return found


def test_the_literal_check_finds_the_ways_a_status_was_once_set():
    old = ('outcome.status, outcome.message = "ok", ""\n'
           'status = "stopped"\n'
           'TrialRecord(key=k, status="failed")\n'
           'outcome.status = decision.status\n')
    assert status_literals(old) == [1, 2, 3]

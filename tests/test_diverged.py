"""A trial whose figures pass its workload's bound is diverged, decided on the host too.

The ptb_lm worker checks its own bound (tests/test_ptb_lm.py); these tests check the host's
half: a worker that sends a perplexity past the bound (one that does not check, like a
user's own or an older worker) is stopped at that metric event, or judged at its result,
and recorded as diverged with the bound in the message, never as ok. The worker here is a
stand-in interpreter for the local backend (it speaks the protocol, without torch).
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

import pytest

from sweeps.execute.backends.local import LocalBackend
from sweeps.execute.trial import run_trial
from sweeps.grid.spec import LOCAL_IMAGE, TrialSpec
from sweeps.status import Status
from sweeps.workloads import get

CONFIG = {"preset": "small", "hidden_size": 16, "max_epochs": 3, "seed": 1234}

# Sends env, then the events in EVENTS (a JSON list in the script), then sleeps: a worker
# that would go on for a minute unless the host stops it.
STANDIN = r'''#!{python} -S
import json, sys, time
if sys.argv[1:2] == ["-c"]:
    print("0.0+standin")
    sys.exit(0)
events = [{{"event": "env", "torch": "0.0+standin", "cuda": None, "cudnn": None,
           "python": "%d.%d.%d" % sys.version_info[:3], "device": "cpu",
           "workload": sys.argv[3], "config": json.loads(sys.argv[5])}}] + {events}
for event in events:
    event["v"] = 1
    sys.stdout.write(json.dumps(event) + "\n")
    sys.stdout.flush()
    time.sleep(0.05)
time.sleep({linger})
'''


def standin(tmp_path: Path, events: list[dict], linger: float = 0.0) -> str:
    path = tmp_path / "standin-python"
    path.write_text(STANDIN.format(python=sys.executable, events=json.dumps(events),
                                   linger=linger))
    path.chmod(0o755)
    return str(path)


def ptb_spec() -> TrialSpec:
    return TrialSpec("ptb_lm", LOCAL_IMAGE, tuple(sorted(CONFIG.items())), 0, 0)


def epoch(step: int, perplexity: float, bound: float | None = 1000.0) -> dict:
    metrics = {"train_perplexity": perplexity, "valid_perplexity": 90.0,
               "words_per_second": 1000.0}
    if bound is not None:
        metrics["perplexity_bound"] = bound
    return {"event": "metric", "step": step, "metrics": metrics}


def test_a_metric_event_past_the_bound_stops_the_worker_as_diverged(tmp_path):
    python = standin(tmp_path, [epoch(1, 420.0), epoch(2, 1.47e18)], linger=60)
    started = time.monotonic()
    outcome = run_trial(LocalBackend(python=python), ptb_spec(), retries=2,
                        log_dir=tmp_path / "logs")
    assert time.monotonic() - started < 30, "the host did not stop the worker"
    assert outcome.status == Status.DIVERGED and outcome.attempts == 1
    assert outcome.message == ("train_perplexity 1.47e+18 is beyond the bound 1000 (10 x the "
                               "vocabulary: worse than guessing) (at step 2; stopped there)")
    assert outcome.last_step == 2


def test_a_result_past_the_bound_is_diverged_not_ok(tmp_path):
    result = {"event": "result", "metrics": {"test_perplexity": 3.0e7, "vocab_size": 10000,
                                             "train_perplexity": 150.0}}
    outcome = run_trial(LocalBackend(python=standin(tmp_path, [epoch(1, 300.0, None),
                                                               result])),
                        ptb_spec(), retries=2, log_dir=tmp_path / "logs")
    assert outcome.status == Status.DIVERGED and outcome.attempts == 1
    # No bound sent: the host's own, ten times the vocabulary the result names.
    assert outcome.message.startswith("test_perplexity 3e+07 is beyond the bound 1e+05")


def test_a_result_within_the_bound_stays_ok(tmp_path):
    result = {"event": "result", "metrics": {"test_perplexity": 120.0, "vocab_size": 10000,
                                             "perplexity_bound": 100000.0}}
    outcome = run_trial(LocalBackend(python=standin(tmp_path, [epoch(1, 9999.0, 1e5), result])),
                        ptb_spec(), retries=2, log_dir=tmp_path / "logs")
    assert outcome.status == Status.OK, outcome.message
    assert outcome.result_metrics["test_perplexity"] == 120.0


@pytest.mark.parametrize("metrics, reason", [
    ({"train_perplexity": 50.0, "perplexity_bound": 1000.0}, None),
    ({"train_perplexity": 1000.0, "perplexity_bound": 1000.0}, None),  # at the bound: not past
    ({"train_perplexity": 1000.5, "perplexity_bound": 1000.0},
     "train_perplexity 1000 is beyond the bound 1000"),
    ({"valid_perplexity": math.inf}, "valid_perplexity is inf"),
    ({"test_perplexity": math.nan, "vocab_size": 10}, "test_perplexity is nan"),
    ({"best_valid_perplexity": 101.0, "vocab_size": 10}, "best_valid_perplexity 101 is beyond "
                                                         "the bound 100"),
    ({"test_perplexity": 1e30}, None),  # no bound and no vocabulary: only non-finite counts
    ({"words_per_second": 1e30, "perplexity_bound": 10.0}, None),  # not a perplexity
    ({"train_perplexity": True, "perplexity_bound": 0.5}, None),  # not a number
])
def test_ptb_lm_bound_rule(metrics, reason):
    found = get("ptb_lm").diverged_reason(metrics, CONFIG)
    if reason is None:
        assert found is None
    else:
        assert found is not None and found.startswith(reason), found


def test_other_workloads_never_diverge_on_the_host():
    for name in ("env", "rnn_bench"):
        assert get(name).diverged_reason({"train_perplexity": math.inf}, {}) is None

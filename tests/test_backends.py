"""The backend contract, run against every backend that can run here, plus how trials end.

Each test starts real workers (``python -m workers ...``) through a backend, as a sweep
does, and checks what a user of the sweep relies on: events in order, exit codes, a kill
that leaves no process behind, the GPUs Ray gave the trial reaching the worker, and the
status each way of ending maps to. The ``backend`` fixture is parametrised over backend
names so that ``docker`` joins the same suite when it arrives.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from sweeps.backends import BACKENDS, get_backend
from sweeps.backends.local import LocalBackend
from sweeps.errors import UserError
from sweeps.spec import LOCAL_IMAGE, Sweep, TrialSpec
from sweeps.trial import run_trial
from workers.workloads import resolve_workload_config

ROOT = Path(__file__).resolve().parent.parent

# A ptb_lm small enough for seconds on a CPU: 3 epochs of 5 steps on a synthetic corpus.
TINY_LM = {"device": "cpu", "hidden_size": 16, "num_layers": 1, "num_steps": 5,
           "batch_size": 4, "epochs": 3, "max_steps_per_epoch": 5, "max_eval_steps": 3,
           "synthetic_words": 3000, "synthetic_vocab": 50, "test_batch_size": 1,
           "test_num_steps": 5}
# The same model for ~forever: for kill, timeout and stop.
ENDLESS_LM = dict(TINY_LM, epochs=100000, max_steps_per_epoch=None)


def spec_of(workload: str, raw: dict, repeat: int = 0) -> TrialSpec:
    """A TrialSpec as a grid makes it: the config resolved with the worker's own rules."""
    config = resolve_workload_config(workload, raw) if workload in ("env", "ptb_lm") else raw
    return TrialSpec(workload=workload, image=LOCAL_IMAGE, config=tuple(sorted(config.items())),
                     repeat=repeat, group=0)


def runnable_backends() -> list[str]:
    """Backends this machine can run a trial on (docker: once it exists and a daemon runs)."""
    names = []
    for name, backend_class in BACKENDS.items():
        if backend_class is not None:
            names.append(name)
    return names


@pytest.fixture(params=runnable_backends())
def backend(request):
    return get_backend(request.param)


def wait_for_exit(pid: int, timeout: float = 10.0) -> bool:
    """True once no process ``pid`` exists (or only a zombie is left of it)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat") as handle:
                if handle.read().split(")")[-1].split()[0] == "Z":
                    return True
        except FileNotFoundError:
            return True
        time.sleep(0.05)
    return False


def group_is_gone(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return True
    return False


# ----------------------------------------------------------------- the backend contract


def test_events_arrive_in_order_and_a_result_exits_zero(backend, tmp_path):
    handle = backend.start(spec_of("ptb_lm", TINY_LM), gpu_ids=[], log_path=tmp_path / "w.log")
    events = list(handle.events())
    assert handle.wait() == 0
    handle.close()
    assert [e["event"] for e in events] == ["env", "metric", "metric", "metric", "result"]
    assert [e["step"] for e in events if e["event"] == "metric"] == [1, 2, 3]
    assert events[0]["config"]["hidden_size"] == 16
    assert events[-1]["metrics"]["test_perplexity"] > 1
    assert handle.startup_seconds is not None and handle.startup_seconds > 0
    assert "-m workers ptb_lm --config" in (tmp_path / "w.log").read_text()


def test_bad_config_exits_two_with_an_error_event_and_the_stderr_line_in_the_log(backend,
                                                                                 tmp_path):
    spec = TrialSpec("ptb_lm", LOCAL_IMAGE, (("hiden_size", 16),), 0, 0)
    handle = backend.start(spec, gpu_ids=[], log_path=tmp_path / "bad.log")
    events = list(handle.events())
    assert handle.wait() == 2
    handle.close()
    assert [e["event"] for e in events] == ["env", "error"]
    assert events[1]["kind"] == "bad_config"
    assert "did you mean 'hidden_size'" in events[1]["message"]
    log = (tmp_path / "bad.log").read_text()
    assert "worker: bad config: config key 'hiden_size' is unknown" in log
    assert '"event": "error"' not in log  # protocol lines are events, not log lines


def test_kill_ends_the_whole_process_group(backend, tmp_path):
    handle = backend.start(spec_of("ptb_lm", ENDLESS_LM), gpu_ids=[],
                           log_path=tmp_path / "w.log")
    events = handle.events()
    assert next(events)["event"] == "env"
    assert next(events)["event"] == "metric"  # it is training now
    assert not group_is_gone(handle.pgid)
    handle.kill(grace_s=2)
    assert group_is_gone(handle.pgid)
    assert handle.returncode != 0
    handle.close()


@pytest.mark.parametrize("gpu_ids, expected", [(["3"], "3"), (["0", "2"], "0,2"), ([], "")])
def test_the_gpus_ray_gave_the_trial_reach_the_worker(backend, tmp_path, gpu_ids, expected):
    handle = backend.start(spec_of("ptb_lm", ENDLESS_LM), gpu_ids=gpu_ids,
                           log_path=tmp_path / "w.log")
    try:
        assert next(handle.events())["event"] == "env"
        with open(f"/proc/{handle.pid}/environ", "rb") as environ:
            variables = dict(item.split(b"=", 1) for item in environ.read().split(b"\0")
                             if b"=" in item)
        assert variables[b"CUDA_VISIBLE_DEVICES"].decode() == expected
    finally:
        handle.close()


def test_a_worker_dies_with_the_trial_process_that_started_it(backend, tmp_path):
    """A Ray trial process killed with SIGKILL gets no chance to clean up; its worker must
    not live on (kill -9 of a trial actor, of a driver's whole local cluster)."""
    script = tmp_path / "trial_process.py"
    script.write_text(textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {str(ROOT)!r})
        from pathlib import Path
        from sweeps.backends import get_backend
        from sweeps.spec import TrialSpec
        spec = TrialSpec("ptb_lm", "local", tuple(sorted({ENDLESS_LM!r}.items())), 0, 0)
        handle = get_backend({backend.name!r}).start(spec, gpu_ids=[],
                                                     log_path=Path({str(tmp_path)!r}) / "w.log")
        print(handle.pid, flush=True)
        for event in handle.events():
            pass
    """))
    trial_process = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE,
                                     text=True)
    worker_pid = int(trial_process.stdout.readline())
    assert not wait_for_exit(worker_pid, timeout=1.0)  # the worker runs
    trial_process.kill()
    trial_process.wait()
    assert wait_for_exit(worker_pid, timeout=10.0)


# ----------------------------------------------------------------- choosing a backend


def test_backends_are_chosen_by_name_and_a_typo_lists_the_valid_names():
    assert isinstance(get_backend("local"), LocalBackend)
    with pytest.raises(UserError, match=r"backend 'lokal' is unknown; did you mean 'local'\? "
                                        r"valid backends: docker, local"):
        get_backend("lokal")


def test_the_docker_backend_is_known_but_says_it_is_not_here_yet():
    with pytest.raises(UserError, match="docker backend arrives with the images issue.*"
                                        "use --backend local"):
        get_backend("docker")


def _sweep(trials, **changes) -> Sweep:
    fields = dict(name="t", path=Path("t.toml"), text="", description="", backend="local",
                  device="cpu", trial_timeout_s=60.0, retries=1, max_concurrent=None,
                  trials=tuple(trials))
    fields.update(changes)
    return Sweep(**fields)


def test_local_preflight_needs_torch_in_the_interpreter_it_runs():
    sweep = _sweep([spec_of("env", {})])
    LocalBackend().preflight(sweep)  # this interpreter has torch
    without_torch = "/usr/bin/python3"
    probe = subprocess.run([without_torch, "-c", "import torch"], capture_output=True) \
        if Path(without_torch).exists() else None
    if probe is None or probe.returncode == 0:
        pytest.skip("no interpreter without torch on this machine")
    with pytest.raises(UserError, match=r"the local backend needs torch in /usr/bin/python3 "
                                        r"\(ModuleNotFoundError: No module named 'torch'\)"):
        LocalBackend(python=without_torch).preflight(sweep)


def test_local_preflight_refuses_docker_images():
    spec = TrialSpec("env", "torch-1.13.1-cu117", (("device", "cpu"),), 0, 0)
    with pytest.raises(UserError, match="names image.* torch-1.13.1-cu117; use --backend docker"):
        LocalBackend().preflight(_sweep([spec]))


# ----------------------------------------------------------------- how a trial ends


def test_a_result_is_ok_with_its_metrics_and_start_up_latency(backend, tmp_path):
    seen = []
    outcome = run_trial(backend, spec_of("ptb_lm", TINY_LM), log_dir=tmp_path,
                        on_event=lambda e: seen.append(e["event"]))
    assert outcome.status == "ok" and outcome.exit_code == 0 and outcome.attempts == 1
    assert seen == ["env", "metric", "metric", "metric", "result"]
    assert outcome.result_metrics["test_perplexity"] > 1
    assert outcome.last_step == 3 and "valid_perplexity" in outcome.last_metrics
    assert 0 < outcome.startup_seconds < outcome.wall_seconds


def test_a_bad_config_fails_once_without_retry(backend, tmp_path):
    spec = TrialSpec("env", LOCAL_IMAGE, (("devise", "cpu"),), 0, 0)
    outcome = run_trial(backend, spec, retries=3, log_dir=tmp_path)
    assert outcome.status == "failed" and outcome.attempts == 1 and outcome.exit_code == 2
    assert outcome.message.startswith("bad_config: config key 'devise' is unknown")


def test_divergence_is_a_result_not_a_failure(backend, tmp_path):
    spec = spec_of("ptb_lm", dict(TINY_LM, learning_rate=1e30, clip_norm=1e30))
    outcome = run_trial(backend, spec, retries=2, log_dir=tmp_path)
    assert outcome.status == "diverged" and outcome.exit_code == 4 and outcome.attempts == 1
    assert "perplexity overflows" in outcome.message


def test_a_correctness_gate_mismatch_fails_once_without_retry(backend, tmp_path):
    # A 1e-12 tolerance makes the float32 implementations disagree for real.
    spec = spec_of("rnn_bench", {"bench": "1x320-ce-short", "impl": "fused", "batch_size": 2,
                                 "seq_len": 4, "hidden_size": 8, "batches": 3,
                                 "warmup_batches": 1, "check_tolerance": 1e-12,
                                 "num_threads": 1})
    outcome = run_trial(backend, spec, retries=2, log_dir=tmp_path)
    assert outcome.status == "failed" and outcome.exit_code == 5 and outcome.attempts == 1
    assert outcome.message.startswith("mismatch: implementations disagree")


class _RecordingBackend(LocalBackend):
    """The local backend, keeping its handles so a test can kill a worker like the OOM killer."""

    def __init__(self):
        super().__init__()
        self.handles = []

    def start(self, spec, *, gpu_ids, log_path):
        self.handles.append(super().start(spec, gpu_ids=gpu_ids, log_path=log_path))
        return self.handles[-1]


def test_a_crashed_worker_is_retried_and_the_retry_can_succeed(tmp_path):
    backend = _RecordingBackend()

    # Killed at its env event, a second before its first epoch ends.
    def crash_the_first_attempt(event):
        if event["event"] == "env" and len(backend.handles) == 1:
            os.kill(backend.handles[0].pid, signal.SIGKILL)

    outcome = run_trial(backend, spec_of("ptb_lm", TINY_LM), retries=1,
                        on_event=crash_the_first_attempt, log_dir=tmp_path)
    assert outcome.status == "ok" and outcome.attempts == 2
    assert "--- attempt 2 ---" in outcome.log_text()


def test_a_crash_without_retries_left_fails_with_the_exit_code_and_stderr_tail(tmp_path):
    backend = _RecordingBackend()

    def crash(event):
        if event["event"] == "env":
            os.kill(backend.handles[-1].pid, signal.SIGKILL)

    outcome = run_trial(backend, spec_of("ptb_lm", TINY_LM), retries=1,
                        on_event=crash, log_dir=tmp_path)
    assert outcome.status == "failed" and outcome.attempts == 2
    assert outcome.message.startswith("the worker exited with code -9 without a final event")


def test_a_timeout_kills_the_worker_and_fails_the_trial(tmp_path):
    backend = _RecordingBackend()
    outcome = run_trial(backend, spec_of("ptb_lm", ENDLESS_LM), timeout_s=4, retries=1,
                        log_dir=tmp_path)
    assert outcome.status == "failed" and outcome.attempts == 1  # a timeout is not retried
    assert outcome.message == "timed out after 4 s"
    assert group_is_gone(backend.handles[0].pgid)


def test_a_stop_request_kills_the_worker_and_the_trial_is_stopped(tmp_path):
    backend = _RecordingBackend()
    stop = threading.Event()

    def stop_after_two_epochs(event):
        if event["event"] == "metric" and event["step"] == 2:
            stop.set()  # what ASHA or Ctrl-C does, from another thread

    outcome = run_trial(backend, spec_of("ptb_lm", ENDLESS_LM), stop=stop,
                        on_event=stop_after_two_epochs, log_dir=tmp_path)
    assert outcome.status == "stopped" and outcome.attempts == 1
    assert outcome.last_step in (2, 3)
    assert group_is_gone(backend.handles[0].pgid)


# A worker of an old torch, played by a script that speaks protocol v1: the host's torch
# supports every combination, so "unsupported" cannot happen here for real.
_OLD_TORCH_WORKER = textwrap.dedent("""
    import json, sys
    def emit(**event):
        print(json.dumps(dict(v=1, **event)), flush=True)
    mode = sys.argv[1]
    print("a library's banner on stdout", flush=True)
    if mode == "unsupported":
        emit(event="env", torch="0.4.1", workload="rnn_bench")
        emit(event="unsupported", reason="torch.compile needs torch>=2.0")
        sys.exit(3)
    if mode == "no_env":
        emit(event="result", metrics={})
        sys.exit(0)
""")


class _ScriptBackend(LocalBackend):
    name = "script"

    def __init__(self, script: Path, mode: str):
        super().__init__()
        self.script, self.mode = script, mode

    def start(self, spec, *, gpu_ids, log_path):
        from sweeps.backends._base import WorkerHandle, worker_env

        return WorkerHandle([self.python, str(self.script), self.mode],
                            env=worker_env(spec, gpu_ids), cwd=None, log_path=log_path)


def test_unsupported_is_a_result_and_other_stdout_goes_to_the_log(tmp_path):
    script = tmp_path / "old_torch_worker.py"
    script.write_text(_OLD_TORCH_WORKER)
    outcome = run_trial(_ScriptBackend(script, "unsupported"), spec_of("env", {}),
                        retries=2, log_dir=tmp_path)
    assert outcome.status == "unsupported" and outcome.exit_code == 3
    assert outcome.attempts == 1
    assert outcome.message == "torch.compile needs torch>=2.0"
    assert "a library's banner on stdout" in outcome.log_text()


def test_a_protocol_violation_is_a_crash(tmp_path):
    script = tmp_path / "old_torch_worker.py"
    script.write_text(_OLD_TORCH_WORKER)
    outcome = run_trial(_ScriptBackend(script, "no_env"), spec_of("env", {}), retries=1,
                        log_dir=tmp_path)
    assert outcome.status == "failed" and outcome.attempts == 2
    assert outcome.message.startswith("protocol violation: the first event was 'result'")


def test_the_worker_command_is_an_argument_list_with_the_resolved_config(backend, tmp_path):
    spec = spec_of("env", {"device": "cpu", "seed": 7})
    handle = backend.start(spec, gpu_ids=[], log_path=tmp_path / "w.log")
    env = next(handle.events())
    handle.wait()
    handle.close()
    assert handle.args[-2] == "--config"
    assert json.loads(handle.args[-1]) == spec.config_dict
    assert env["config"]["seed"] == 7

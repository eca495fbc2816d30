"""The backend contract, run against every backend that can run here, plus how trials end.

Each test starts real workers (``python -m workers ...``) through a backend, as a sweep
does, and checks what a user of the sweep relies on: events in order, exit codes, a kill
that leaves no process behind, the GPUs Ray gave the trial reaching the worker, and the
status each way of ending maps to. The ``backend`` fixture is parametrised over the
backends: ``local`` (a child process), ``docker`` (a container of the tests' own
image, on the real engine; see tests/dockerenv.py) and ``venv`` (a child process in the
environment of torch 2.13.0's CUDA entry, built once per run; see tests/venvenv.py), so
all pass one contract suite.
What only a container promises (a read-only mount, no network, no privileges) is
checked from inside a running container at the end.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from pathlib import Path

import pytest
from dockerenv import TEST_IMAGE, require_engine
from venvenv import VENV_CUDA_IMAGE, venv_backend

from sweeps.errors import UserError
from sweeps.execute.backends import BACKENDS, get_backend
from sweeps.execute.backends.docker import DockerBackend
from sweeps.execute.backends.local import LocalBackend
from sweeps.execute.backends.venv import VenvBackend
from sweeps.execute.trial import run_trial
from sweeps.grid.load import MATRIX_PATH
from sweeps.grid.matrix import load_matrix
from sweeps.grid.spec import LOCAL_IMAGE, Sweep, TrialSpec
from workers.ptb_lm_config import MAX_EPOCHS
from workers.workloads import resolve_workload_config

ROOT = Path(__file__).resolve().parent.parent

# A ptb_lm small enough for seconds on a CPU: 3 epochs of 5 steps on a synthetic corpus.
TINY_LM = {"device": "cpu", "hidden_size": 16, "num_layers": 1, "num_steps": 5,
           "batch_size": 4, "epochs": 3, "max_steps_per_epoch": 5, "max_eval_steps": 3,
           "synthetic_words": 3000, "synthetic_vocab": 50, "test_batch_size": 1,
           "test_num_steps": 5}
# The same model for ~forever: for kill, timeout and stop.
ENDLESS_LM = dict(TINY_LM, epochs=MAX_EPOCHS, max_steps_per_epoch=None)  # runs until stopped


def spec_of(workload: str, raw: dict, repeat: int = 0, image: str = LOCAL_IMAGE) -> TrialSpec:
    """A TrialSpec as a grid makes it: the config resolved with the worker's own rules."""
    config = resolve_workload_config(workload, raw) if workload in ("env", "ptb_lm") else raw
    return TrialSpec(workload=workload, image=image, config=tuple(sorted(config.items())),
                     repeat=repeat, group=0)


def docker_backend(**options) -> DockerBackend:
    """The docker backend with the matrix entry of the tests' image (2 GiB per container)."""
    image = load_matrix(MATRIX_PATH)[TEST_IMAGE]
    return DockerBackend({image.name: image}, memory=options.pop("memory", "2g"), **options)


class Recording:
    """A backend that keeps its handles, so a test can kill a worker like the OOM killer."""

    def __init__(self, inner):
        self.inner = inner
        self.name = inner.name
        self.image = inner.image
        self.handles = []

    def check(self, spec, *, gpu_ids):
        return self.inner.check(spec, gpu_ids=gpu_ids)

    def start(self, spec, *, gpu_ids, log_path):
        self.handles.append(self.inner.start(spec, gpu_ids=gpu_ids, log_path=log_path))
        return self.handles[-1]


@pytest.fixture(params=sorted(BACKENDS))
def backend(request):
    """Each backend, with ``image``: the image its trials name."""
    if request.param == "docker":
        require_engine()
        request.getfixturevalue("docker_image")
        chosen = docker_backend()
        chosen.image = TEST_IMAGE
    elif request.param == "venv":
        # The CUDA entry, so that the GPUs Ray gives a trial reach its worker (a CPU-only
        # entry gets none, as in its image); it shares the CPU entry's environment.
        chosen = venv_backend(request.getfixturevalue("venv_store"), VENV_CUDA_IMAGE)
        chosen.image = VENV_CUDA_IMAGE
    else:
        chosen = LocalBackend()
        chosen.image = LOCAL_IMAGE
    return chosen


def spec_for(backend, workload: str, raw: dict, repeat: int = 0) -> TrialSpec:
    return spec_of(workload, raw, repeat, image=backend.image)


def is_gone(handle) -> bool:
    """Nothing of the worker runs any more: its process group, or its container."""
    if not wait_for_exit(handle.pid, timeout=10.0):
        return False
    if hasattr(handle, "pgid"):
        return group_is_gone(handle.pgid)
    import docker.errors

    try:
        handle.container.reload()
    except docker.errors.NotFound:
        return True  # removed, after it was killed
    return handle.container.status in ("exited", "dead")


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
    handle = backend.start(spec_for(backend, "ptb_lm", TINY_LM), gpu_ids=[],
                           log_path=tmp_path / "w.log")
    events = list(handle.events())
    assert handle.wait() == 0
    handle.close()
    assert [e["event"] for e in events] == ["env", "metric", "metric", "metric", "result"]
    assert [e["step"] for e in events if e["event"] == "metric"] == [1, 2, 3]
    assert events[0]["config"]["hidden_size"] == 16
    assert events[-1]["metrics"]["test_perplexity"] > 1
    assert handle.startup_seconds is not None and handle.startup_seconds > 0
    # The log is everything the worker printed: after the command (and what the backend
    # says of where it runs), every event line in order.
    log = (tmp_path / "w.log").read_text().splitlines()
    command = next(i for i, line in enumerate(log) if "-m workers ptb_lm --config" in line)
    assert [json.loads(line)["event"] for line in log[command + 1:] if line.startswith("{")] \
        == ["env", "metric", "metric", "metric", "result"]


def test_bad_config_exits_two_with_an_error_event_and_the_stderr_line_in_the_log(backend,
                                                                                 tmp_path):
    spec = TrialSpec("ptb_lm", backend.image, (("hiden_size", 16),), 0, 0)
    handle = backend.start(spec, gpu_ids=[], log_path=tmp_path / "bad.log")
    events = list(handle.events())
    assert handle.wait() == 2
    handle.close()
    assert [e["event"] for e in events] == ["env", "error"]
    assert events[1]["kind"] == "bad_config"
    assert "did you mean 'hidden_size'" in events[1]["message"]
    log = (tmp_path / "bad.log").read_text()
    assert "worker: bad config: config key 'hiden_size' is unknown" in log
    assert '"event": "error"' in log  # the log holds the events too, in the order printed


def test_kill_ends_the_whole_process_group(backend, tmp_path):
    handle = backend.start(spec_for(backend, "ptb_lm", ENDLESS_LM), gpu_ids=[],
                           log_path=tmp_path / "w.log")
    events = handle.events()
    assert next(events)["event"] == "env"
    assert next(events)["event"] == "metric"  # it is training now
    assert not wait_for_exit(handle.pid, timeout=0.5)
    handle.kill(grace_s=2)
    assert is_gone(handle)
    assert handle.returncode != 0
    handle.close()


@pytest.mark.parametrize("gpu_ids, expected", [(["3"], "3"), (["0", "2"], "0,2"), ([], "")])
def test_the_gpus_ray_gave_the_trial_reach_the_worker(backend, tmp_path, gpu_ids, expected):
    spec = spec_for(backend, "ptb_lm", ENDLESS_LM)
    if isinstance(backend, DockerBackend):
        # A container gets exactly those GPUs as its device request (inside, they are
        # numbered from 0). Created, not started: this machine has no GPU to start it on.
        # The tests' image is CPU-only and gets no GPU at all, so the request is checked on
        # a CUDA entry made for this test, whose tag names the same local image.
        import dataclasses

        import docker

        cuda_entry = dataclasses.replace(load_matrix(MATRIX_PATH)[TEST_IMAGE],
                                         name="torch-2.13.0-cu130-devicerequest", cuda="13.0",
                                         cudnn="9.20.0.48", archs=("sm_90",))
        client = docker.from_env()
        client.images.get(f"versweep:{TEST_IMAGE}").tag("versweep", cuda_entry.name)
        cuda_backend = DockerBackend({cuda_entry.name: cuda_entry}, memory="2g")
        container = cuda_backend.create(dataclasses.replace(spec, image=cuda_entry.name),
                                        gpu_ids)
        try:
            requests = container.attrs["HostConfig"].get("DeviceRequests") or []
            environment = container.attrs["Config"]["Env"]
        finally:
            container.remove(force=True)
            client.images.remove(f"versweep:{cuda_entry.name}")
        given = [",".join(r["DeviceIDs"]) for r in requests if ["gpu"] in r["Capabilities"]]
        assert given == ([expected] if gpu_ids else [])
        assert ("NVIDIA_VISIBLE_DEVICES=void" in environment) == (not gpu_ids)
        # And the CPU-only image itself is given no GPU, whatever Ray handed the trial.
        cpu_container = backend.create(spec, gpu_ids)
        try:
            assert not cpu_container.attrs["HostConfig"].get("DeviceRequests")
        finally:
            cpu_container.remove(force=True)
        return
    handle = backend.start(spec, gpu_ids=gpu_ids, log_path=tmp_path / "w.log")
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
    venv_root = str(backend.store.root) if isinstance(backend, VenvBackend) else ""
    script.write_text(textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {str(ROOT)!r})
        from pathlib import Path
        from sweeps.execute.backends.docker import DockerBackend
        from sweeps.execute.backends.local import LocalBackend
        from sweeps.execute.backends.venv import VenvBackend
        from sweeps.envs.store import EnvStore
        from sweeps.grid.load import MATRIX_PATH
        from sweeps.grid.matrix import load_matrix
        from sweeps.grid.spec import TrialSpec
        image = {backend.image!r}
        if image == "local":
            chosen = LocalBackend()
        elif {backend.name!r} == "venv":
            chosen = VenvBackend({{image: load_matrix(MATRIX_PATH)[image]}},
                                 store=EnvStore({venv_root!r}))
        else:
            chosen = DockerBackend({{image: load_matrix(MATRIX_PATH)[image]}}, memory="2g")
        spec = TrialSpec("ptb_lm", image, tuple(sorted({ENDLESS_LM!r}.items())), 0, 0)
        handle = chosen.start(spec, gpu_ids=[], log_path=Path({str(tmp_path)!r}) / "w.log")
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
    assert wait_for_exit(worker_pid, timeout=20.0)
    if backend.name == "docker":  # and the reaper removed its container
        import docker

        def left():
            # The low-level list: no inspect per container, which a removal in between
            # would turn into NotFound.
            found = docker.from_env().api.containers(
                all=True, filters={"label": "io.versweep.owner"})
            return [c["Id"] for c in found
                    if c["Labels"]["io.versweep.owner"].endswith(f":{trial_process.pid}")]

        deadline = time.monotonic() + 20  # the reaper kills first, then removes
        while left() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert left() == []


# ----------------------------------------------------------------- choosing a backend


def test_backends_are_chosen_by_name_and_a_typo_lists_the_valid_names():
    assert isinstance(get_backend("local"), LocalBackend)
    with pytest.raises(UserError, match=r"backend 'lokal' is unknown; did you mean 'local'\? "
                                        r"valid backends: docker, local, venv"):
        get_backend("lokal")


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


def test_versweep_python_names_the_local_backends_interpreter(monkeypatch, tmp_path):
    sweep = _sweep([spec_of("env", {})])
    monkeypatch.setenv("VERSWEEP_PYTHON", sys.executable)
    assert LocalBackend().python == sys.executable
    LocalBackend().preflight(sweep)
    missing = str(tmp_path / "no-such-python")
    monkeypatch.setenv("VERSWEEP_PYTHON", missing)
    assert LocalBackend().python == missing
    with pytest.raises(UserError, match=r"^\$VERSWEEP_PYTHON is .*no-such-python, which is not "
                                        r"an executable file; point it at a Python that has "
                                        r"torch, or unset VERSWEEP_PYTHON$"):
        LocalBackend().preflight(sweep)
    # An explicit interpreter wins over the variable.
    assert LocalBackend(python=sys.executable).python == sys.executable


def test_local_preflight_refuses_docker_images():
    spec = TrialSpec("env", "torch-1.13.1-cu117", (("device", "cpu"),), 0, 0)
    with pytest.raises(UserError, match="names image.* torch-1.13.1-cu117; use --backend docker"):
        LocalBackend().preflight(_sweep([spec]))


# ----------------------------------------------------------------- how a trial ends


def test_a_result_is_ok_with_its_metrics_and_start_up_latency(backend, tmp_path):
    seen = []
    outcome = run_trial(backend, spec_for(backend, "ptb_lm", TINY_LM), log_dir=tmp_path,
                        on_event=lambda e: seen.append(e["event"]))
    assert outcome.status == "ok" and outcome.exit_code == 0 and outcome.attempts == 1
    assert seen == ["env", "metric", "metric", "metric", "result"]
    assert outcome.result_metrics["test_perplexity"] > 1
    assert outcome.last_step == 3 and "valid_perplexity" in outcome.last_metrics
    assert 0 < outcome.startup_seconds < outcome.wall_seconds
    # How busy the machine was: the load when it started, the CPUs busy while it ran (the
    # worker's own thread at least, never more than the machine has).
    cpus = int(outcome.tags["versweep.cpus"])
    assert cpus == os.cpu_count() and float(outcome.tags["versweep.load_before"]) >= 0
    assert 0.2 < float(outcome.tags["versweep.busy_cpus"]) <= cpus


def test_a_bad_config_fails_once_without_retry(backend, tmp_path):
    spec = TrialSpec("env", backend.image, (("devise", "cpu"),), 0, 0)
    outcome = run_trial(backend, spec, retries=3, log_dir=tmp_path)
    assert outcome.status == "failed" and outcome.attempts == 1 and outcome.exit_code == 2
    assert outcome.message.startswith("bad_config: config key 'devise' is unknown")


def test_divergence_is_a_result_not_a_failure(backend, tmp_path):
    spec = spec_for(backend, "ptb_lm", dict(TINY_LM, learning_rate=1e30, clip_norm=1e30))
    outcome = run_trial(backend, spec, retries=2, log_dir=tmp_path)
    assert outcome.status == "diverged" and outcome.exit_code == 4 and outcome.attempts == 1
    assert "is beyond the bound 480 (10 x the vocabulary" in outcome.message


def test_a_correctness_gate_mismatch_fails_once_without_retry(backend, tmp_path):
    # A 1e-12 tolerance makes the float32 implementations disagree for real.
    spec = spec_for(backend, "rnn_bench", {"bench": "1x320-ce-short", "impl": "fused",
                                           "batch_size": 2,
                                 "seq_len": 4, "hidden_size": 8, "batches": 3,
                                 "warmup_batches": 1, "check_tolerance": 1e-12,
                                 "num_threads": 1})
    outcome = run_trial(backend, spec, retries=2, log_dir=tmp_path)
    assert outcome.status == "failed" and outcome.exit_code == 5 and outcome.attempts == 1
    assert outcome.message.startswith("mismatch: implementations disagree")


def test_a_crashed_worker_is_retried_and_the_retry_can_succeed(backend, tmp_path):
    recording = Recording(backend)

    # Killed at its env event, a second before its first epoch ends.
    def crash_the_first_attempt(event):
        if event["event"] == "env" and len(recording.handles) == 1:
            os.kill(recording.handles[0].pid, signal.SIGKILL)

    outcome = run_trial(recording, spec_for(backend, "ptb_lm", TINY_LM), retries=1,
                        on_event=crash_the_first_attempt, log_dir=tmp_path)
    assert outcome.status == "ok" and outcome.attempts == 2
    assert "--- attempt 2 ---" in outcome.log_text()


def test_after_a_retry_the_outcome_is_only_the_deciding_attempts(backend, tmp_path):
    # The first attempt sends env and an epoch's metrics, then crashes; the retry is
    # killed as it starts, before any event: it decides the trial, and it saw nothing.
    class KilledAtStart(Recording):
        def start(self, spec, *, gpu_ids, log_path):
            handle = super().start(spec, gpu_ids=gpu_ids, log_path=log_path)
            if len(self.handles) == 2:
                os.kill(handle.pid, signal.SIGKILL)
            return handle

    recording = KilledAtStart(backend)

    def crash_after_the_first_epoch(event):
        if event["event"] == "metric" and len(recording.handles) == 1:
            os.kill(recording.handles[0].pid, signal.SIGKILL)

    outcome = run_trial(recording, spec_for(backend, "ptb_lm", TINY_LM), retries=1,
                        on_event=crash_after_the_first_epoch, log_dir=tmp_path)
    assert outcome.status == "failed" and outcome.attempts == 2
    assert outcome.message.startswith("the worker exited with code ")
    assert outcome.env is None  # not the first attempt's
    assert outcome.last_metrics == {} and outcome.last_step is None
    assert outcome.startup_seconds is None


def test_a_crash_without_retries_left_fails_with_the_exit_code_and_stderr_tail(backend,
                                                                              tmp_path):
    recording = Recording(backend)

    def crash(event):
        if event["event"] == "env":
            os.kill(recording.handles[-1].pid, signal.SIGKILL)

    outcome = run_trial(recording, spec_for(backend, "ptb_lm", TINY_LM), retries=1,
                        on_event=crash, log_dir=tmp_path)
    assert outcome.status == "failed" and outcome.attempts == 2
    # A killed child process exits -9; a container whose init was killed, 137 (128 + 9).
    code = 137 if backend.name == "docker" else -9
    assert outcome.message.startswith(f"the worker exited with code {code} without a final "
                                      "event")


def test_a_timeout_kills_the_worker_and_fails_the_trial(backend, tmp_path):
    recording = Recording(backend)
    outcome = run_trial(recording, spec_for(backend, "ptb_lm", ENDLESS_LM), timeout_s=6,
                        retries=1, log_dir=tmp_path)
    assert outcome.status == "failed" and outcome.attempts == 1  # a timeout is not retried
    assert outcome.message == "timed out after 6 s"
    assert is_gone(recording.handles[0])


def test_a_stop_request_kills_the_worker_and_the_trial_is_stopped(backend, tmp_path):
    recording = Recording(backend)
    stop = threading.Event()

    def stop_after_two_epochs(event):
        if event["event"] == "metric" and event["step"] == 2:
            stop.set()  # what ASHA or Ctrl-C does, from another thread

    outcome = run_trial(recording, spec_for(backend, "ptb_lm", ENDLESS_LM), stop=stop,
                        on_event=stop_after_two_epochs, log_dir=tmp_path)
    assert outcome.status == "stopped" and outcome.attempts == 1
    assert outcome.last_step in (2, 3)
    assert is_gone(recording.handles[0])


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
        from sweeps.execute.backends._base import ProcessHandle, worker_env

        return ProcessHandle([self.python, str(self.script), self.mode],
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
    spec = spec_for(backend, "env", {"device": "cpu", "seed": 7})
    handle = backend.start(spec, gpu_ids=[], log_path=tmp_path / "w.log")
    env = next(handle.events())
    handle.wait()
    handle.close()
    assert handle.args[-2] == "--config"
    assert json.loads(handle.args[-1]) == spec.config_dict
    assert env["config"]["seed"] == 7


# ----------------------------------------------------------------- what only a container promises


_INSIDE = textwrap.dedent("""
    import json, os, socket
    facts = {"uid": os.getuid(), "gid": os.getgid(), "hostname": socket.gethostname(),
             "nvidia": os.environ.get("NVIDIA_VISIBLE_DEVICES")}
    try:
        open("/opt/versweep/workers/written-by-a-trial", "w")
        facts["workers_writable"] = True
    except OSError as exc:
        facts["workers_writable"] = exc.strerror
    try:
        open("/usr/written-by-a-trial", "w")
        facts["root_writable"] = True
    except OSError as exc:
        facts["root_writable"] = exc.strerror
    open("/tmp/scratch", "w").write("tmp is private and writable")
    facts["interfaces"] = sorted(line.split(":")[0].strip()
                                 for line in open("/proc/net/dev").readlines()[2:])
    try:
        socket.create_connection(("1.1.1.1", 53), timeout=3)
        facts["network"] = "reached 1.1.1.1"
    except OSError as exc:
        facts["network"] = str(exc)
    status = dict(line.split(":", 1) for line in open("/proc/self/status") if ":" in line)
    facts["cap_eff"] = status["CapEff"].strip()
    facts["no_new_privs"] = status["NoNewPrivs"].strip()
    print(json.dumps(facts))
""")


def test_a_container_is_locked_down(docker_image, tmp_path):
    backend = docker_backend()
    handle = backend.start(spec_of("ptb_lm", ENDLESS_LM, image=docker_image), gpu_ids=[],
                           log_path=tmp_path / "w.log")
    try:
        assert next(handle.events())["event"] == "env"
        done = handle.container.exec_run(["python", "-c", _INSIDE])
        facts = json.loads(done.output.decode().strip().splitlines()[-1])
        config = handle.container.attrs["HostConfig"]
    finally:
        handle.close()
    assert (facts["uid"], facts["gid"]) == (10001, 10001)  # not root
    assert facts["workers_writable"] == "Read-only file system"
    assert facts["root_writable"] == "Read-only file system"
    assert facts["interfaces"] == ["lo"]  # no network at all
    assert facts["network"] != "reached 1.1.1.1"
    assert int(facts["cap_eff"], 16) == 0  # every capability dropped
    assert facts["no_new_privs"] == "1"
    assert config["Memory"] == 2 * 1024 ** 3
    assert config["NetworkMode"] == "none"
    assert facts["hostname"] == socket.gethostname()  # the node's name in the records
    assert facts["nvidia"] == "void"  # a trial given no GPU sees none, whatever the runtime


def test_a_container_the_engine_refuses_is_a_failed_attempt_with_the_engines_words(
        docker_image, tmp_path):
    raw = {k: v for k, v in TINY_LM.items() if not k.startswith("synthetic")}
    spec = spec_of("ptb_lm", dict(raw, data_dir=str(tmp_path / "no-such-dir")),
                   image=docker_image)
    outcome = run_trial(docker_backend(), spec, retries=1, log_dir=tmp_path)
    assert outcome.status == "failed" and outcome.attempts == 2
    assert outcome.exit_code == 125
    assert "docker: the engine did not create the container" in outcome.message
    assert "no-such-dir" in outcome.message


def test_an_image_gone_since_the_preflight_fails_the_trial_once_with_the_pull_command(
        tmp_path):
    # The matrix names it and the preflight saw it, but no versweep:<name> is on the node
    # when the trial starts: one failed trial saying so, not an exception out of the
    # trial process (Ray Tune would take it for a lost node and run it again, 3 times).
    require_engine()
    image = load_matrix(MATRIX_PATH)[TEST_IMAGE]
    gone = dataclasses.replace(image, name=f"{TEST_IMAGE}-gone{uuid.uuid4().hex[:8]}")
    outcome = run_trial(DockerBackend({gone.name: gone}, memory="2g"),
                        spec_of("env", {"device": "cpu"}, image=gone.name), retries=1,
                        log_dir=tmp_path)
    assert outcome.status == "failed" and outcome.attempts == 1
    assert outcome.message == (f"the worker did not start: image versweep:{gone.name} is not "
                               f"on this node; run: python images/build.py pull {gone.name}")
    assert outcome.env is None and outcome.exit_code is None
    assert outcome.message in outcome.log_text()


def test_a_worker_the_backend_cannot_start_fails_the_trial_once_with_the_reason(
        monkeypatch, tmp_path):
    # Needs no engine: the engine stopped answering after the preflight. backend.start
    # raises a UserError; the trial ends failed with it instead of raising it.
    # The preflight saw it answer, so it is taken for an engine stopped or restarting:
    # waited for ($VERSWEEP_ENGINE_WAIT_S), then the trial is interrupted, not failed, and
    # not run again here (it would wait as long again): --resume runs it.
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")
    monkeypatch.setenv("VERSWEEP_ENGINE_WAIT_S", "2")
    started = time.monotonic()
    outcome = run_trial(docker_backend(), spec_of("env", {"device": "cpu"}, image=TEST_IMAGE),
                        retries=1, log_dir=tmp_path)
    assert time.monotonic() - started < 60
    assert outcome.status == "stopped" and not outcome.decided and outcome.attempts == 1
    assert outcome.message.startswith("interrupted: the Docker engine at "
                                      "unix:///nonexistent/docker.sock did not answer for 2 s")
    assert "continue with --resume" in outcome.message
    assert "does not answer (stopped or restarting); retrying in" in outcome.log_text()


def test_a_backend_that_cannot_check_the_trial_fails_it_once_with_the_reason(tmp_path):
    # backend.check raising a UserError (the venv backend on a node without uv) is a
    # failed trial with its words, never an exception Tune would retry as a lost node.
    from sweeps.errors import UserError
    from sweeps.execute.backends.local import LocalBackend

    class NoUv(LocalBackend):
        def check(self, spec, *, gpu_ids):
            raise UserError("uv is not installed on this node")

    outcome = run_trial(NoUv(), spec_of("env", {"device": "cpu"}), retries=1, log_dir=tmp_path)
    assert outcome.status == "failed" and outcome.attempts == 0
    assert outcome.message == ("the backend could not check the trial: uv is not installed on "
                               "this node")
    assert outcome.message in outcome.log_text()


def test_the_data_directory_is_mounted_read_only_and_the_trial_reads_it(docker_image, tmp_path):
    data = tmp_path / "ptb"
    data.mkdir()
    words = "the cat sat on the mat and the dog ate the cat food <unk> a b c d e".split()
    for split, repeat in (("train", 40), ("valid", 8), ("test", 8)):
        lines = [" ".join(words[(i % 5):] + words[:(i % 5)]) for i in range(repeat)]
        (data / f"ptb.{split}.txt").write_text("\n".join(lines) + "\n")
    raw = {k: v for k, v in TINY_LM.items() if not k.startswith("synthetic")}
    spec = spec_of("ptb_lm", dict(raw, data_dir=str(data)), image=docker_image)
    outcome = run_trial(docker_backend(), spec, log_dir=tmp_path)
    assert outcome.status == "ok", outcome.message
    assert outcome.env["config"]["data_dir"] == "/opt/versweep/data"
    assert outcome.env["data"]["synthetic"] is False
    assert outcome.env["data"]["source"] == "/opt/versweep/data"
    assert outcome.result_metrics["test_perplexity"] > 1


def test_the_image_digest_and_container_are_in_the_outcome_and_the_container_is_removed(
        docker_image, tmp_path):
    import docker

    client = docker.from_env()
    outcome = run_trial(docker_backend(), spec_of("env", {"device": "cpu"}, image=docker_image),
                        log_dir=tmp_path)
    assert outcome.status == "ok"
    image = client.images.get(f"versweep:{docker_image}")
    assert outcome.tags["versweep.image_id"] == image.id
    assert outcome.tags["versweep.image_digest"] in (image.attrs.get("RepoDigests") or [image.id])
    with pytest.raises(docker.errors.NotFound):
        client.containers.get(outcome.tags["versweep.container_id"])


def _docker_sweep(images, **changes) -> Sweep:
    matrix = load_matrix(MATRIX_PATH)
    trials = [spec_of("env", {"device": "cpu"}, image=name) for name in images]
    return _sweep(trials, backend="docker", images=tuple(matrix[n] for n in images
                                                         if n in matrix), **changes)


def test_docker_preflight_names_each_missing_image_and_the_command_that_gets_it(docker_image):
    sweep = _docker_sweep([docker_image, "torch-1.13.1-cu116", "torch-0.4.1-cu90"])
    backend = DockerBackend(sweep.images)
    with pytest.raises(UserError) as caught:
        backend.preflight(sweep)
    message = str(caught.value)
    assert "versweep:torch-0.4.1-cu90, versweep:torch-1.13.1-cu116 not on this node" in message
    assert "python images/build.py pull torch-0.4.1-cu90 torch-1.13.1-cu116" in message
    assert "\n" not in message
    backend.preflight(_docker_sweep([docker_image]))  # present: no error


def test_docker_preflight_says_when_the_daemon_does_not_answer(monkeypatch):
    # Needs no engine: the point is one that does not answer.
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")
    sweep = _docker_sweep([TEST_IMAGE])
    with pytest.raises(UserError, match=r"^the Docker daemon does not answer at "
                                        r"unix:///nonexistent/docker\.sock .*start it"):
        DockerBackend(sweep.images).preflight(sweep)


def test_docker_preflight_refuses_the_hosts_own_torch():
    sweep = _sweep([spec_of("env", {})], backend="docker")
    with pytest.raises(UserError, match="names local; name matrix images .*--backend local"):
        DockerBackend().preflight(sweep)

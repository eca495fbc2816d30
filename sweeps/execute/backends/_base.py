"""The backend contract: how a trial's worker process is started, streamed and killed.

A backend is one small class (asv's "environments"): ``preflight`` says whether it can
run a sweep at all, ``start`` launches ``python -m workers <workload> --config <json>``
somewhere (the host's interpreter, a container) and returns a ``WorkerHandle``. The
handle is the same for every backend: it reads protocol v1 lines from the worker's
stdout as they arrive, writes every line the worker printed (its events, any other
stdout, its stderr) to the trial's log file, and kills the worker's whole process group
when asked. Nothing here imports Ray, MLflow or torch.
"""

from __future__ import annotations

import abc
import collections
import ctypes
import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

from sweeps.errors import UserError
from sweeps.grid.spec import Image, Sweep, TrialSpec

# prctl(2) option: the kernel sends a signal to the child when its parent thread dies.
_PR_SET_PDEATHSIG = 1
# How many stderr lines a handle keeps in memory for the "failed" message.
_STDERR_TAIL_LINES = 40


def _die_with_parent_hook():
    """A preexec_fn that makes the worker receive SIGKILL when the thread that started it dies.

    This is what keeps a worker from outliving its trial when the Ray trial process is
    killed outright (SIGKILL leaves no chance to clean up). Linux only; elsewhere None.
    """
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        prctl = libc.prctl
    except (OSError, AttributeError):
        return None

    def hook():
        prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)

    return hook


class WorkerHandle:
    """A running worker: its protocol events as they arrive, its log, its exit code.

    The part every backend shares: protocol lines from the worker's stdout become
    events, every line it printed (stdout and stderr) goes to the trial's log, the last
    stderr lines are kept for a failure message. Subclasses say how lines arrive and
    how the worker is waited for and killed (a child process, a container).

    ``pid`` is the worker's process id as this host sees it (a container's main
    process has one too), so "is it gone?" has one answer for every backend. ``tags``
    are facts about where it ran (an image digest) for the trial's MLflow run, and
    ``artifacts`` texts to keep with it, by file name (an environment's package list).
    """

    pid: int | None = None

    def __init__(self, args: Sequence[str], *, log_path: Path):
        self.args = list(args)
        self.log_path = Path(log_path)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "a", encoding="utf-8")
        self._log_lock = threading.Lock()
        self.stderr_tail: collections.deque[str] = collections.deque(maxlen=_STDERR_TAIL_LINES)
        self.started_at = time.monotonic()
        self.first_event_at: float | None = None
        self.killed = False
        # Set by a backend that knows why the worker was ended from outside (one line):
        # the kernel's OOM killer at the container's memory limit, or the engine that
        # ran it gone (stopped, restarted) under it. sweeps/status.py decides from them.
        self.out_of_memory: str | None = None
        self.engine_lost: str | None = None
        # The engine did not come back within $VERSWEEP_ENGINE_WAIT_S: running the trial
        # again here would wait as long again, so it stays interrupted for --resume.
        self.engine_gave_up = False
        self.tags: dict[str, str] = {}
        self.artifacts: dict[str, str] = {}
        self._write_log(f"$ {' '.join(self.args)}\n")

    def _write_log(self, text: str) -> None:
        with self._log_lock:
            if not self._log.closed:
                self._log.write(text)
                self._log.flush()

    def _stderr_line(self, line: str) -> None:
        """Keep one stderr line: in the log, and in the tail for a failure message."""
        self.stderr_tail.append(line.rstrip("\n"))
        self._write_log(line if line.endswith("\n") else line + "\n")

    def _stdout_lines(self) -> Iterator[str]:
        """The worker's stdout, line by line, until it closes."""
        raise NotImplementedError

    def events(self) -> Iterator[dict]:
        """Yield the worker's protocol events in order until its stdout closes.

        A line is an event when it is a JSON object with ``"v"`` and ``"event"``. Every
        line goes to the log, events too: the log is everything the worker printed.
        """
        for line in self._stdout_lines():
            self._write_log(line if line.endswith("\n") else line + "\n")
            event = _parse_event(line)
            if event is None:
                continue
            if self.first_event_at is None:
                self.first_event_at = time.monotonic()
            yield event

    @property
    def startup_seconds(self) -> float | None:
        """Seconds from starting the worker to its first protocol event (None: no event)."""
        if self.first_event_at is None:
            return None
        return self.first_event_at - self.started_at

    def poll(self) -> int | None:
        """The exit code, or None while the worker runs."""
        raise NotImplementedError

    def wait(self, timeout: float | None = None) -> int:
        """Wait for the worker to exit and for its stderr to be logged; return the exit code."""
        raise NotImplementedError

    @property
    def returncode(self) -> int | None:
        raise NotImplementedError

    def kill(self, grace_s: float = 3.0) -> None:
        """End the worker and everything it started: SIGTERM, then SIGKILL after ``grace_s``."""
        raise NotImplementedError

    def close(self) -> None:
        """Kill the worker if it still runs, release what it held, close the log."""
        raise NotImplementedError

    def _close_log(self) -> None:
        with self._log_lock:
            self._log.close()


class ProcessHandle(WorkerHandle):
    """A worker in a child process of this host.

    The worker runs in its own session (``start_new_session=True``), so its process id
    is also its process group id, and ``kill`` reaches every process it started.
    """

    def __init__(self, args: Sequence[str], *, env: dict[str, str], cwd: Path | None,
                 log_path: Path):
        super().__init__(args, log_path=log_path)
        self.process = subprocess.Popen(
            self.args, cwd=cwd, env=env, stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True, encoding="utf-8", errors="replace", bufsize=1,
            start_new_session=True, preexec_fn=_die_with_parent_hook())
        self.pid = self.process.pid
        self.pgid = self.pid  # a new session makes the worker its own group leader
        self._stderr_thread = threading.Thread(target=self._pump_stderr, daemon=True)
        self._stderr_thread.start()

    def _pump_stderr(self) -> None:
        stderr = self.process.stderr
        assert stderr is not None, "the worker is started with stderr=PIPE"
        for line in stderr:
            self._stderr_line(line)

    def _stdout_lines(self) -> Iterator[str]:
        stdout = self.process.stdout
        assert stdout is not None, "the worker is started with stdout=PIPE"
        yield from stdout

    def poll(self) -> int | None:
        return self.process.poll()

    def wait(self, timeout: float | None = None) -> int:
        code = self.process.wait(timeout)
        self._stderr_thread.join(5)
        return code

    @property
    def returncode(self) -> int | None:
        return self.process.returncode

    def kill(self, grace_s: float = 3.0) -> None:
        """Kill the worker's whole process group: SIGTERM, then SIGKILL after ``grace_s``."""
        if self.process.poll() is None:
            self.killed = True  # only a worker that was still running counts as killed
            _signal_group(self.pgid, signal.SIGTERM)
            try:
                self.process.wait(grace_s)
            except subprocess.TimeoutExpired:
                pass
        # Children the worker started may outlive the leader; the group id still names them.
        _signal_group(self.pgid, signal.SIGKILL)
        self.process.wait()

    def close(self) -> None:
        """Reap the worker and every process left in its group, then close the log."""
        if self.process.poll() is None:
            self.kill()
        else:
            _signal_group(self.pgid, signal.SIGKILL)
        self._stderr_thread.join(5)
        for stream in (self.process.stdout, self.process.stderr):
            if stream is not None:
                stream.close()
        self._close_log()


def _signal_group(pgid: int, signum: int) -> None:
    try:
        os.killpg(pgid, signum)
    except (ProcessLookupError, PermissionError):
        pass


def _parse_event(line: str) -> dict | None:
    text = line.strip()
    if not text.startswith("{"):
        return None
    try:
        event = json.loads(text)
    except ValueError:
        return None
    if isinstance(event, dict) and "v" in event and "event" in event:
        return event
    return None


def worker_env(spec: TrialSpec, gpu_ids: Sequence[str]) -> dict[str, str]:
    """The environment a worker runs with: the host's, plus the GPUs Ray gave the trial.

    A trial without GPUs gets CUDA_VISIBLE_DEVICES="" so that it cannot touch a GPU
    that Ray handed to a timing trial (timing trials never share a GPU).
    """
    env = dict(os.environ)
    env["CUDA_VISIBLE_DEVICES"] = ",".join(str(g) for g in gpu_ids)
    env["PYTHONUNBUFFERED"] = "1"  # events must arrive as they happen, not at exit
    return env


def worker_args(python: str, spec: TrialSpec, *, config: dict | None = None,
                workload_dir: str | None = None) -> list[str]:
    """The worker's command line as an argument list (never a shell string).

    ``config`` and ``workload_dir``: where the worker sees them differently (a container's
    mounts); by default the trial's own config and its workload's directory, if a user's.
    """
    text = json.dumps(spec.config_dict if config is None else config, sort_keys=True,
                      separators=(",", ":"))
    args = [python, "-m", "workers", spec.workload, "--config", text]
    directory = workload_dir if workload_dir is not None else spec.workload_dir
    if directory is not None:
        args += ["--workload-dir", directory]
    return args


def image_of(images: Mapping[str, Image], spec: TrialSpec) -> Image:
    """The matrix entry a docker or venv trial runs; a UserError for one not in the sweep."""
    try:
        return images[spec.image]
    except KeyError:
        raise UserError(f"image '{spec.image}' of trial '{spec.name}' is not in the image "
                        "matrix of this sweep; name an image of images/matrix.toml") from None


class Backend(abc.ABC):
    """Where a trial's worker runs: set ``name``, implement ``preflight`` and ``start``.

    ``check`` may be overridden where the backend knows before a worker starts that a
    trial cannot run (the docker backend: the image's kernels for the node's GPU).
    """

    name = ""
    # Where a long step of ``check`` or ``start`` (the venv backend's environment build)
    # says what it is doing, a line at a time: the sweep's console, relayed from the
    # trial's process by sweeps/execute/tune.py. None: nowhere but the trial's log.
    console: Callable[[str], None] | None = None

    @abc.abstractmethod
    def preflight(self, sweep: Sweep, *, on_this_node: bool = True) -> None:
        """Raise UserError (one line, what to do) if this backend cannot run ``sweep``.

        ``on_this_node=False``: the trials run on a cluster's other nodes; check only what
        does not depend on the node this driver runs on.
        """

    def check(self, spec: TrialSpec, *, gpu_ids: Sequence[str]) -> str | None:
        """Why ``spec`` cannot run on the GPUs ``gpu_ids`` of this node, or None if it can.

        Decided before any worker starts; a reason makes the trial an ``unsupported``
        result. The base backend knows nothing in advance: the worker decides.
        """
        return None

    @abc.abstractmethod
    def start(self, spec: TrialSpec, *, gpu_ids: Sequence[str], log_path: Path) -> WorkerHandle:
        """Start the worker for ``spec`` and return its handle."""

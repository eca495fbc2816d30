"""The `docker` backend: each trial's worker runs in a fresh container of its matrix image.

    backend = DockerBackend(images={"torch-1.13.1-cu117": Image(...)})
    backend.preflight(sweep)       # the engine answers, every image is on this node
    backend.check(spec, gpu_ids=["2"])   # "unsupported" reasons, before any container
    handle = backend.start(spec, gpu_ids=["2"], log_path=Path("trial.log"))

The container (docker SDK, never a shell) gets the GPUs Ray gave the trial as its device
request and nothing else: workers/ and the data directory mounted read-only, no network,
no new privileges, every capability dropped, a non-root user, a read-only root with a
private /tmp, a memory and a process limit. It is removed when the trial ends, killed on
early stop or timeout, and removed by a small reaper process if the trial process itself
dies (kill -9 leaves it no time to clean up). The image's digest goes into the trial's
tags. See DESIGN.md, "Images".
"""

from __future__ import annotations

import os
import queue
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from sweeps.errors import UserError
from sweeps.execute.backends._base import Backend, WorkerHandle, image_of, worker_args
from sweeps.grid.spec import Image, Sweep, TrialSpec, memory_size_problem
from sweeps.images.docker import docker_client, engine_address, image_digest, local_tag
from sweeps.paths import REPO_ROOT
from sweeps.plan import compat

# Where things are inside the container.
WORKERS_MOUNT = "/opt/versweep/workers"
DATA_MOUNT = "/opt/versweep/data"
WORKLOAD_MOUNT = "/opt/versweep/workloads"  # a user's own workload at WORKLOAD_MOUNT/<name>
# The user every worker runs as (images/Dockerfile creates it; numeric so that it also
# works on a base image that has no such user).
CONTAINER_USER = "10001:10001"
DEFAULT_MEMORY = "16g"
PIDS_LIMIT = 4096
# exec: torch.compile (inductor, Triton) loads the code it compiles from its caches there.
TMPFS = {"/tmp": "rw,exec,nosuid,nodev,size=2g"}
# Labels that say a container is a versweep worker, and whose.
LABEL_TRIAL = "io.versweep.trial_key"
LABEL_OWNER = "io.versweep.owner"
# An engine that stops answering in the middle of a sweep (the docker service restarted)
# is waited for this long ($VERSWEEP_ENGINE_WAIT_S), with pauses from ENGINE_FIRST_WAIT_S
# doubling to ENGINE_MAX_WAIT_S; the trial whose container it took is run again.
ENGINE_WAIT_S = 300.0
ENGINE_WAIT_VARIABLE = "VERSWEEP_ENGINE_WAIT_S"
ENGINE_FIRST_WAIT_S = 0.5
ENGINE_MAX_WAIT_S = 10.0
# A container's exit code when its main process ended by SIGTERM (docker-init: 128 + 15).
EXIT_SIGTERM = 143


def engine_wait_limit() -> float:
    """Seconds a trial waits for an engine that stopped answering: $VERSWEEP_ENGINE_WAIT_S."""
    raw = os.environ.get(ENGINE_WAIT_VARIABLE, "").strip()
    if not raw:
        return ENGINE_WAIT_S
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value >= 0 or value == float("inf"):
        raise UserError(f"${ENGINE_WAIT_VARIABLE}: {raw[:40]!r} is not a number of seconds "
                        "(0 or more)")
    return value


def engine_gone(error: BaseException) -> bool:
    """Whether ``error`` says the engine does not answer (stopped, restarting), not that it
    refused a request: no connection, a connection dropped, a socket that is not there."""
    import requests.exceptions

    if isinstance(error, (requests.exceptions.ConnectionError, ConnectionError,
                          FileNotFoundError)):
        return True
    return isinstance(error, UserError) and "does not answer at" in str(error)



def check_memory(value: str) -> str:
    """A Docker memory limit like "16g", or a UserError."""
    problem = memory_size_problem(value)
    if problem is not None:
        raise UserError(f"container memory {problem}")
    return str(value)


class DockerBackend(Backend):
    """Run ``python -m workers`` in a container of the trial's matrix image."""

    name = "docker"

    def __init__(self, images: Mapping[str, Image] | Sequence[Image] = (), *,
                 memory: str = DEFAULT_MEMORY, workers_dir: Path | None = None):
        if isinstance(images, Mapping):
            self.images = dict(images)
        else:
            self.images = {image.name: image for image in images}
        self.memory = check_memory(memory)
        self.workers_dir = Path(workers_dir or REPO_ROOT / "workers")
        self._client: Any = None
        self._gpus: dict[str, compat.Gpu] | None = None

    @classmethod
    def for_sweep(cls, sweep: Sweep) -> DockerBackend:
        return cls(sweep.images, memory=sweep.container_memory or DEFAULT_MEMORY)

    # ----------------------------------------------------------------- engine

    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = docker_client()
        return self._client

    def image_for(self, spec: TrialSpec) -> Image:
        return image_of(self.images, spec)

    def wait_for_engine(self, say: Callable[[str], None] | None = None) -> str | None:
        """Wait (up to $VERSWEEP_ENGINE_WAIT_S) for an engine that does not answer now.

        None once it answers (at once, usually); else one line saying it did not come
        back. Each pause is said through ``say`` and on the sweep's console.
        """
        import docker

        limit, wait, first = engine_wait_limit(), ENGINE_FIRST_WAIT_S, time.monotonic()
        while True:
            try:
                client = docker.from_env(timeout=10)
                try:
                    client.ping()
                finally:
                    client.close()
                self._client = None  # a new client: the old one's connections are dead
                return None
            except Exception as error:  # noqa: BLE001 - anything but an answer: not back
                waited = time.monotonic() - first
                if waited >= limit:
                    return (f"the Docker engine at {engine_address()} did not answer for "
                            f"{waited:.0f} s ({type(error).__name__}); once it runs again, "
                            f"continue with --resume (${ENGINE_WAIT_VARIABLE}={limit:g} "
                            "sets how long to wait)")
                pause = min(wait, limit - waited)
                line = (f"the Docker engine at {engine_address()} does not answer "
                        f"(stopped or restarting); retrying in {pause:.1f} s, for "
                        f"{limit - waited:.0f} s more")
                for out in (say, self.console):
                    if out is not None:
                        try:
                            out(line)
                        except Exception:  # noqa: BLE001 - a console line is never worth a trial
                            pass
                time.sleep(pause)
                wait = min(wait * 2, ENGINE_MAX_WAIT_S)

    def preflight(self, sweep: Sweep, *, on_this_node: bool = True) -> None:
        """Before Ray starts any trial: the engine answers and every image is on this node.

        Joining a cluster (``on_this_node=False``), only the matrix is checked here: the
        images must be on the nodes that advertise them, which routing checks.
        """
        import docker.errors

        names = sorted({t.image for t in sweep.trials}
                       | ({sweep.search.image} if sweep.search else set()))
        unknown = [name for name in names if name not in self.images]
        if unknown:
            raise UserError(f"the docker backend runs images of images/matrix.toml, but sweep "
                            f"'{sweep.name}' names {', '.join(unknown)}; name matrix images "
                            "(or use --backend local for the host's own torch)")
        if not on_this_node:
            return  # the cluster's nodes hold the images; routing checks them before Tune
        client = self.client  # a UserError when the daemon does not answer
        missing = []
        for name in names:
            try:
                client.images.get(local_tag(name))
            except docker.errors.ImageNotFound:
                missing.append(name)
            except docker.errors.APIError as exc:
                raise UserError(f"the Docker daemon failed to look up {local_tag(name)}: "
                                f"{exc.explanation or exc}") from None
        if missing:
            tags = ", ".join(local_tag(name) for name in missing)
            raise UserError(f"image(s) {tags} not on this node; get them with: python "
                            f"images/build.py pull {' '.join(missing)} (or build, or "
                            "pull --registry R from your mirror)")
        if not self.workers_dir.is_dir():
            raise UserError(f"the docker backend mounts {self.workers_dir}, which is not a "
                            "directory; run versweep from its checkout")

    # ----------------------------------------------------------------- compatibility

    def node_gpus(self) -> dict[str, compat.Gpu]:
        """This node's GPUs by index (empty without nvidia-smi), asked once per backend."""
        if self._gpus is None:
            self._gpus = {gpu.index: gpu for gpu in compat.node_gpus()}
        return self._gpus

    def check(self, spec: TrialSpec, *, gpu_ids: Sequence[str]) -> str | None:
        """Why the trial's image cannot run it on these GPUs, decided before any container."""
        image = self.image_for(spec)
        gpus = self.node_gpus()
        given = [gpus[str(i)] for i in gpu_ids if str(i) in gpus]
        return compat.unsupported_reason(image, spec.workload, spec.config_dict, given,
                                         spec.workload_dir)

    # ----------------------------------------------------------------- containers

    def container_config(self, spec: TrialSpec) -> dict[str, Any]:
        """The worker config as the container sees it: the data directory at DATA_MOUNT."""
        config = dict(spec.config_dict)
        if config.get("data_dir"):
            config["data_dir"] = DATA_MOUNT
        return config

    def command(self, spec: TrialSpec) -> list[str]:
        """The worker's command line inside the container (an argument list, no shell)."""
        mounted = f"{WORKLOAD_MOUNT}/{spec.workload}" if spec.workload_dir else None
        return worker_args("python", spec, config=self.container_config(spec),
                           workload_dir=mounted)

    def container_options(self, spec: TrialSpec, gpu_ids: Sequence[str]) -> dict[str, Any]:
        """Everything ``containers.create`` gets, besides the image and the command."""
        from docker.types import DeviceRequest, Mount

        mounts = [Mount(target=WORKERS_MOUNT, source=str(self.workers_dir), type="bind",
                        read_only=True)]
        data_dir = spec.config_dict.get("data_dir")
        if data_dir:
            mounts.append(Mount(target=DATA_MOUNT, source=str(data_dir), type="bind",
                                read_only=True))
        if spec.workload_dir:  # a user's own workload: its directory, read-only
            mounts.append(Mount(target=f"{WORKLOAD_MOUNT}/{spec.workload}",
                                source=str(spec.workload_dir), type="bind", read_only=True))
        environment = {"PYTHONPATH": "/opt/versweep", "PYTHONUNBUFFERED": "1",
                       "PYTHONDONTWRITEBYTECODE": "1", "HOME": "/tmp", "USER": "versweep"}
        image = self.images.get(spec.image)
        if image is not None and image.cuda is None:
            gpu_ids = []  # a CPU-only image's torch cannot use a GPU: it gets none
        if not gpu_ids:
            # No GPU for a trial that was given none, even where the node's default runtime
            # is nvidia and the image says NVIDIA_VISIBLE_DEVICES=all (pytorch/pytorch does).
            environment.update({"NVIDIA_VISIBLE_DEVICES": "void", "CUDA_VISIBLE_DEVICES": ""})
        options: dict[str, Any] = dict(
            name=f"versweep-{spec.key}-{uuid.uuid4().hex[:8]}",
            # The node's name, as the local backend reports it (a container id would make
            # every trial look like another host in the records).
            hostname=socket.gethostname(),
            user=CONTAINER_USER,
            environment=environment,
            working_dir="/tmp",
            mounts=mounts,
            network_mode="none",
            security_opt=["no-new-privileges"],
            cap_drop=["ALL"],
            read_only=True,
            tmpfs=dict(TMPFS),
            mem_limit=self.memory,
            memswap_limit=self.memory,  # no swap beyond the limit
            pids_limit=PIDS_LIMIT,
            init=True,  # signals reach the worker; its children are reaped
            labels={LABEL_TRIAL: spec.key,
                    LABEL_OWNER: f"{socket.gethostname()}:{os.getpid()}"},
            stdin_open=False,
            detach=True,
        )
        if gpu_ids:
            options["device_requests"] = [
                DeviceRequest(device_ids=[str(g) for g in gpu_ids], capabilities=[["gpu"]])]
        return options

    def create(self, spec: TrialSpec, gpu_ids: Sequence[str]) -> Any:
        """A created (not started) container for the trial."""
        import docker.errors

        image = self.image_for(spec)
        try:
            return self.client.containers.create(local_tag(image.name), self.command(spec),
                                                 **self.container_options(spec, gpu_ids))
        except docker.errors.ImageNotFound:
            raise UserError(f"image {local_tag(image.name)} is not on this node; run: "
                            f"python images/build.py pull {image.name}") from None

    def start(self, spec: TrialSpec, *, gpu_ids: Sequence[str], log_path: Path) -> WorkerHandle:
        return ContainerHandle(self, spec, gpu_ids, log_path=log_path)


class ContainerHandle(WorkerHandle):
    """A worker in a container: its stdout and stderr from the engine's attach stream."""

    def __init__(self, backend: DockerBackend, spec: TrialSpec, gpu_ids: Sequence[str], *,
                 log_path: Path):
        import docker.errors

        image = backend.image_for(spec)
        args = ["docker", "run", local_tag(image.name), *backend.command(spec)]
        super().__init__(args, log_path=log_path)
        self._errors = docker.errors
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._exit_code: int | None = None
        self._removed = False
        self._memory_setting = backend.memory
        self._stream_client: Any = None
        self._pump: threading.Thread | None = None
        self._reaper: subprocess.Popen | None = None
        self.container: Any = None
        self.container_id = ""
        self._backend = backend
        for second_try in (False, True):
            try:
                self.container = backend.create(spec, gpu_ids)
                break
            except docker.errors.APIError as exc:
                # The engine refused the container (a bind source missing on this node, no
                # nvidia runtime for a GPU request): a failed attempt with the engine's
                # words, like a container that does not start, not an exception out of
                # the trial.
                self._not_started(f"the engine did not create the container: "
                                  f"{exc.explanation or exc}")
                return
            except BaseException as exc:
                if not isinstance(exc, Exception) or not engine_gone(exc) or second_try:
                    self._close_log()
                    raise
                # The engine is stopped or restarting: wait for it, then create.
                why = backend.wait_for_engine(self._stderr_line)
                if why is not None:
                    self.engine_lost, self.engine_gave_up = why, True
                    self._not_started(why)
                    return
        self.container_id = self.container.id
        self._reaper = _start_reaper(self.container_id)
        try:
            self._attach_and_start(backend, spec, image, gpu_ids)
        except Exception as exc:
            if not engine_gone(exc):
                self._fail_half_way()
                raise
            # The engine went away between the create and the start: the attempt is
            # lost with it (the container is removed once the engine is back).
            self.engine_lost = (f"the Docker engine at {engine_address()} went away while "
                                "the container started")
            self._stderr_line(f"docker: {self.engine_lost}")
            self._lines.put(None)
            self._exit_code = 125
            why = backend.wait_for_engine(self._stderr_line)
            if why is not None:
                self.engine_lost, self.engine_gave_up = why, True
        except BaseException:
            self._fail_half_way()
            raise

    def _fail_half_way(self) -> None:
        # Nothing may outlive a handle that failed half-way: not the container, not
        # the reaper, not the log.
        self._removed = False
        self._lines.put(None)
        self.close()

    def _attach_and_start(self, backend: DockerBackend, spec: TrialSpec, image: Image,
                          gpu_ids: Sequence[str]) -> None:
        import docker.errors

        # The image the container was created from, by id: a re-tag since then (a pull
        # during the sweep) cannot change which digest is recorded.
        image_attrs = backend.client.images.get(self.container.attrs["Image"]).attrs
        self.tags = {
            "versweep.image_digest": image_digest(image_attrs),
            "versweep.image_id": str(image_attrs.get("Id", "")),
            "versweep.image_ref": local_tag(image.name),
            "versweep.container_id": self.container_id[:12],
            "versweep.backend": "docker",
        }
        gpus = backend.node_gpus()
        given = [gpus[str(i)] for i in gpu_ids if str(i) in gpus]
        if compat.ptx_jit_gpus(image, spec.config_dict, given):
            # No native code for this GPU: the driver JIT-compiles PTX on first use, so the
            # first batches include compilation (the warm-up batches absorb most of it).
            self.tags["versweep.kernels"] = "ptx-jit"
        # The stream is attached before the start, so not one line is lost.
        self._stream_client = docker_client(timeout=None)
        stream = self._stream_client.api.attach(self.container_id, stdout=True, stderr=True,
                                                stream=True, logs=True, demux=True)
        self._pump = threading.Thread(target=self._pump_output, args=(stream,), daemon=True)
        self._pump.start()
        try:
            self.container.start()
        except docker.errors.APIError as exc:
            self._not_started(f"the container did not start: {exc.explanation or exc}")
            return
        self.container.reload()
        self.pid = int(self.container.attrs.get("State", {}).get("Pid") or 0) or None

    def _not_started(self, why: str) -> None:
        self._stderr_line(f"docker: {why}")
        self._lines.put(None)
        self._exit_code = 125  # docker run's own code for "the container did not start"

    def _pump_output(self, stream: Iterator[tuple[bytes | None, bytes | None]]) -> None:
        """Split the engine's chunks into lines: stdout lines to events(), stderr to the log."""
        pending = {1: b"", 2: b""}
        try:
            for out, err in stream:
                for fd, chunk in ((1, out), (2, err)):
                    if not chunk:
                        continue
                    pending[fd] += chunk
                    *lines, pending[fd] = pending[fd].split(b"\n")
                    for line in lines:
                        self._deliver(fd, line + b"\n")
        except Exception as exc:  # the engine closed the stream under us (container removed)
            self._stderr_line(f"docker: the output stream ended: {type(exc).__name__}")
        finally:
            for fd, rest in pending.items():
                if rest:
                    self._deliver(fd, rest)
            self._lines.put(None)

    def _deliver(self, fd: int, raw: bytes) -> None:
        text = raw.decode("utf-8", errors="replace")
        if fd == 1:
            self._lines.put(text)
        else:
            self._stderr_line(text)

    def _stdout_lines(self) -> Iterator[str]:
        while True:
            line = self._lines.get()
            if line is None:
                self._lines.put(None)  # a second events() call ends at once too
                return
            yield line

    def poll(self) -> int | None:
        if self._exit_code is None and self.container is not None:
            try:
                self.container.reload()
            except self._errors.NotFound:
                if not self._removed:
                    self._stderr_line(f"docker: container {self.container_id[:12]} "
                                      "disappeared (removed from outside the trial)")
                self._exit_code = -1
                return self._exit_code
            except Exception as exc:
                if not engine_gone(exc):
                    raise
                self._engine_went_away()
                return self._exit_code
            state = self.container.attrs.get("State", {})
            if state.get("Status") in ("exited", "dead"):
                self._exit_code = int(state.get("ExitCode", 0))
                if state.get("OOMKilled"):
                    limit = self.container.attrs.get("HostConfig", {}).get("Memory") or 0
                    self.out_of_memory = out_of_memory_line(limit, self._memory_setting)
                    self._stderr_line(f"docker: {self.out_of_memory}")
                elif self._exit_code == EXIT_SIGTERM and not self.killed:
                    # SIGTERM from outside the trial: what an engine that stops or restarts
                    # sends every container (one back before this poll looked is still
                    # answering), or a `docker stop`. Not the worker's doing: run it again.
                    self.engine_lost = (f"the worker was stopped from outside the trial "
                                        f"(SIGTERM, exit {EXIT_SIGTERM}: the Docker engine "
                                        f"at {engine_address()} stopping or restarting, "
                                        "or a docker stop)")
                    self._stderr_line(f"docker: {self.engine_lost}")
        return self._exit_code

    def _engine_went_away(self) -> None:
        """The engine stopped answering while the worker ran (the docker service stopped
        or restarted: it stops every container, and the output stream with them).

        Whatever the worker did since is lost with the stream: the attempt ends as
        ``engine_lost`` (sweeps/status.py: interrupted, run again), once the engine is
        back (or $VERSWEEP_ENGINE_WAIT_S has passed). A worker that had already sent its
        result and exited 0 keeps it.
        """
        self.engine_lost = (f"the Docker engine at {engine_address()} went away while the "
                            f"worker ran (stopped or restarted), and container "
                            f"{self.container_id[:12]} with it")
        self._stderr_line(f"docker: {self.engine_lost}")
        why = self._backend.wait_for_engine(self._stderr_line)
        if why is not None:
            self.engine_lost, self.engine_gave_up = why, True
            self._exit_code = -1
            return
        try:
            self.container = self._backend.client.containers.get(self.container_id)
        except Exception:  # noqa: BLE001 - gone with the engine (or gone again)
            self._exit_code = -1
            return
        state = self.container.attrs.get("State", {})
        if state.get("Status") in ("exited", "dead"):
            self._exit_code = int(state.get("ExitCode", 0))
        else:
            # An engine with live-restore kept it running, but its output stream is gone:
            # the attempt cannot be followed to its end. Stop it; it runs again.
            try:
                self.container.kill()
            except Exception:  # noqa: BLE001
                pass
            self._exit_code = -1
        self._stderr_line(f"docker: the engine answers again; container "
                          f"{self.container_id[:12]} ended with code {self._exit_code}")

    def wait(self, timeout: float | None = None) -> int:
        if self._exit_code is None:
            deadline = None if timeout is None else time.monotonic() + timeout
            while self.poll() is None:
                if deadline is not None and time.monotonic() > deadline:
                    raise subprocess.TimeoutExpired(self.args, timeout or 0)
                try:
                    self.container.wait(timeout=1)
                except Exception:  # the wait's own timeout: ask again
                    continue
        if self._pump is not None:
            self._pump.join(5)
        assert self._exit_code is not None
        return self._exit_code

    @property
    def returncode(self) -> int | None:
        return self._exit_code

    def kill(self, grace_s: float = 3.0) -> None:
        """SIGTERM to the worker, SIGKILL to the whole container after ``grace_s``."""
        if self._removed or self.container is None:
            return
        if self.poll() is None:
            self.killed = True
            try:
                self.container.stop(timeout=max(int(round(grace_s)), 1))
            except self._errors.NotFound:
                pass
            except self._errors.APIError:
                try:
                    self.container.kill()
                except self._errors.APIError:
                    pass
            except Exception as exc:
                if not engine_gone(exc):
                    raise
                # The engine went away: it stops its containers itself.
        try:
            result = self.container.wait(timeout=30)
            self._exit_code = int(result.get("StatusCode", -9))
        except Exception:
            self._exit_code = self._exit_code if self._exit_code is not None else -9

    def close(self) -> None:
        """Kill the container if it runs, remove it, stop the reaper, close the log."""
        if not self._removed and self.container is not None:
            if self.poll() is None:
                self.kill()
            if self._pump is not None:
                self._pump.join(5)
            try:
                self.container.remove(force=True)
            except self._errors.NotFound:
                pass
            except self._errors.APIError as exc:
                self._stderr_line(f"docker: could not remove {self.container_id[:12]}: "
                                  f"{exc.explanation or exc}")
            except Exception as exc:
                if not engine_gone(exc):
                    raise
                # The engine stopped or restarts (it took this container down): remove
                # the container once it answers again, not to leave it behind.
                self._stderr_line(f"docker: could not remove {self.container_id[:12]} yet: "
                                  "the engine does not answer")
                if self._backend.wait_for_engine(self._stderr_line) is None:
                    try:
                        self._backend.client.containers.get(self.container_id).remove(
                            force=True)
                    except Exception:  # noqa: BLE001 - the reaper tries once more
                        pass
            self._removed = True
        if self._stream_client is not None:
            self._stream_client.close()
            self._stream_client = None
        if self._reaper is not None:
            _stop_reaper(self._reaper)
        self._close_log()


def out_of_memory_line(limit_bytes: int, setting: str) -> str:
    """The one line of a worker the kernel's OOM killer ended at its container's limit."""
    if limit_bytes >= 2**30:
        shown = f"{limit_bytes / 2**30:.3g} GiB"
    elif limit_bytes > 0:
        shown = f"{limit_bytes / 2**20:.4g} MiB"
    else:
        shown = "its memory limit"
    return (f"out of memory: the kernel killed the worker at the container's limit of "
            f"{shown} (sweep.container_memory = \"{setting}\"); raise sweep.container_memory "
            "in the grid, or make the config smaller")


def _start_reaper(container_id: str) -> subprocess.Popen:
    """A process that removes the container once this process is gone, however it went.

    It waits for its stdin to close: this process holds the other end, so the kernel
    closes it when this process exits, even by SIGKILL. Its own session keeps a Ctrl-C
    that reaches the trial's process group from killing it before it cleans up.
    """
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO_ROOT) + (os.pathsep + env["PYTHONPATH"]
                                          if env.get("PYTHONPATH") else "")
    return subprocess.Popen([sys.executable, "-m", "sweeps.execute.backends.reaper", container_id],
                            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=env, start_new_session=True,
                            close_fds=True)


def _stop_reaper(reaper: subprocess.Popen) -> None:
    if reaper.stdin is not None and not reaper.stdin.closed:
        reaper.stdin.close()  # the container is gone; the reaper finds nothing to do
    try:
        reaper.wait(10)
    except subprocess.TimeoutExpired:
        reaper.kill()
        reaper.wait()

"""The `venv` backend: each trial's worker runs in an isolated environment of its matrix entry.

    backend = VenvBackend({"torch-2.13.0-cpu": Image(...)})
    backend.preflight(sweep)             # uv is here, every image is in the matrix (builds nothing)
    backend.check(spec, gpu_ids=[])      # why no environment can be made for it here, or None
    handle = backend.start(spec, gpu_ids=["0"], log_path=Path("trial.log"))

For machines without Docker (HPC clusters often run Ray but forbid it): instead of a
container of the entry's image, the worker runs in a virtual environment that holds that
entry's torch, built on first use by sweeps/envs (one per torch version and Python minor
version, from uv's shared cache; see sweeps/envs/store.py for where the Python comes from,
the locks, the budget). ``start`` builds the environment under its lock when it is
missing or not whole (the build is not counted in the trial's timeout), then runs
``<env>/bin/python -m workers <workload> --config <json>`` as a child process exactly as
the local backend does (its own process group, killed with the trial), with this
checkout on PYTHONPATH, nothing of the host's Python on the path, and the GPUs Ray gave
the trial as CUDA_VISIBLE_DEVICES (none for a CPU-only entry, as in its image). While the
worker runs, the trial holds the environment's shared lock: no build or eviction can
touch it. The environment's ``pip freeze`` heads the trial's log (an artifact of its run);
the run's tags name the environment (``versweep.env_path``, ``versweep.env_python``, ...).
A build (or a wait for another trial's build of it) is also said on the backend's
``console`` (in a sweep: the driver's console, e.g. ``torch-1.4.0-py3.6: still building,
45 s (last: Downloading torch (766.2MiB))``), where uv's every line would be noise.

What cannot run is decided before any worker starts (``check``): no environment can be
made here (no interpreter, no such torch on the index, no wheel for this platform and
these Pythons), or the entry's torch cannot run the workload (sweeps/plan/compat.py).
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path

from sweeps.envs.build import BuildProgress
from sweeps.envs.store import EnvLease, EnvPlan, EnvStore, worker_environment
from sweeps.errors import UserError
from sweeps.execute.backends._base import (
    Backend,
    ProcessHandle,
    WorkerHandle,
    image_of,
    worker_args,
    worker_env,
)
from sweeps.grid.spec import Image, Sweep, TrialSpec
from sweeps.paths import REPO_ROOT
from sweeps.plan import compat

# The environment's package list (its builder's freeze), an artifact of every venv trial.
FREEZE_ARTIFACT = "environment.txt"


class VenvBackend(Backend):
    """Run ``python -m workers`` in the environment of the trial's matrix entry."""

    name = "venv"

    def __init__(self, images: Mapping[str, Image] | Sequence[Image] = (), *,
                 store: EnvStore | None = None):
        if isinstance(images, Mapping):
            self.images = dict(images)
        else:
            self.images = {image.name: image for image in images}
        self._store = store
        self._plans: dict[str, EnvPlan | str] = {}
        self._gpus: dict[str, compat.Gpu] | None = None

    @classmethod
    def for_sweep(cls, sweep: Sweep) -> VenvBackend:
        return cls(sweep.images)

    @property
    def store(self) -> EnvStore:
        """The environments ($VERSWEEP_ENVS_DIR, $VERSWEEP_ENVS_BUDGET), made when first used."""
        if self._store is None:
            self._store = EnvStore()
        return self._store

    def image_for(self, spec: TrialSpec) -> Image:
        return image_of(self.images, spec)

    def plan(self, image: Image) -> EnvPlan | str:
        """The environment ``image`` gets here, or why none can be made (asked once)."""
        if image.name not in self._plans:
            self._plans[image.name] = self.store.plan(image)
        return self._plans[image.name]

    def preflight(self, sweep: Sweep, *, on_this_node: bool = True) -> None:
        """Before Ray starts any trial: every image is a matrix entry and uv is here.

        Builds nothing: each trial builds its environment when it first needs it (or
        ``versweep envs build --grid NAME`` builds them ahead).
        """
        names = sorted({t.image for t in sweep.trials}
                       | ({sweep.search.image} if sweep.search else set()))
        unknown = [name for name in names if name not in self.images]
        if unknown:
            raise UserError(f"the venv backend builds an environment per image of "
                            f"images/matrix.toml, but sweep '{sweep.name}' names "
                            f"{', '.join(unknown)}; name matrix images (or use --backend "
                            "local for the host's own torch)")
        if not on_this_node:
            return  # each node of the cluster builds what its trials need
        store = self.store  # a UserError for a budget that is no size
        _ = store.uv  # a UserError when uv is not installed
        store.check_writable()

    def check(self, spec: TrialSpec, *, gpu_ids: Sequence[str]) -> str | None:
        """Why no environment can run the trial here, decided before any worker starts.

        On GPUs the GPU rules of sweeps/plan/compat.py apply to the wheel the environment
        really holds (PyPI's default CUDA build of that torch, which need not be the
        entry's): its CUDA version and the architectures it has code for, as its own env
        event reported them when it was built. So the environment is built here, by the
        first trial that needs it on this node, if it was not yet.
        """
        image = self.image_for(spec)
        plan = self.plan(image)
        if isinstance(plan, str):
            return plan
        gpus = self.node_gpus()
        given = [gpus[str(i)] for i in gpu_ids if str(i) in gpus]
        if not given or image.cuda is None:
            return compat.torch_reason(image, spec.workload, spec.config_dict,
                                       spec.workload_dir)
        try:
            with self._console(plan) as console, \
                    self.store.acquire(plan, progress=console) as env:
                marker = dict(env.marker)
        except OSError as exc:
            raise UserError(f"the environment {plan.key} could not be prepared: "
                            f"{exc.strerror or exc}") from None
        return compat.unsupported_reason(wheel_image(image, marker), spec.workload,
                                         spec.config_dict, given, spec.workload_dir)

    def _console(self, plan: EnvPlan):
        """The store's ``progress`` for the console while the block runs (a heartbeat
        during a build), or one that says nothing where there is no console."""
        if self.console is None:
            return contextlib.nullcontext(_quiet)
        return BuildProgress(plan.key, self.console)

    def node_gpus(self) -> dict[str, compat.Gpu]:
        """This node's GPUs by index (empty without nvidia-smi), asked once per backend."""
        if self._gpus is None:
            self._gpus = {gpu.index: gpu for gpu in compat.node_gpus()}
        return self._gpus

    def start(self, spec: TrialSpec, *, gpu_ids: Sequence[str], log_path: Path) -> WorkerHandle:
        image = self.image_for(spec)
        plan = self.plan(image)
        if isinstance(plan, str):
            raise UserError(f"no environment for {image.name} here: {plan}")
        log_path = Path(log_path)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "a", encoding="utf-8") as log, self._console(plan) as console:
            def logged(line: str) -> None:
                log.write(f"venv: {line}\n")
                log.flush()

            def progress(line: str) -> None:  # every line in the log, the gist on the console
                logged(line)
                console(line)

            try:
                lease = self.store.acquire(plan, progress=progress)
            except OSError as exc:  # the disk, a lock file: a failed trial, never a lost node
                raise UserError(f"the environment {plan.key} could not be prepared: "
                                f"{exc.strerror or exc}") from None
            try:
                marker = lease.env.marker
                how = "built now" if lease.env.built else f"built {marker.get('built_at')}"
                logged(f"environment {plan.key} at {plan.path} ({how}; torch "
                       f"{marker.get('torch_reported')}, Python {marker.get('python')})"
                       + (f"; {plan.note}" if plan.note else ""))
                freeze = str(marker.get("freeze", "")).rstrip("\n")
                logged(f"{marker.get('builder')} freeze of the environment:\n"
                       + "\n".join(f"    {line}" for line in freeze.splitlines()))
            except BaseException:
                lease.release()
                raise
        try:
            given = [] if image.cuda is None else list(gpu_ids)  # a CPU-only entry: no GPU
            env = worker_environment(base=worker_env(spec, given))
            env["VIRTUAL_ENV"] = str(plan.path)
            handle = VenvHandle(worker_args(str(plan.python), spec), env=env, cwd=REPO_ROOT,
                                log_path=log_path, lease=lease)
        except BaseException:
            lease.release()
            raise
        # The environment's Python version is the worker's own (versweep.python, from its
        # env event): not repeated here. Facts the marker lacks are left out, not empty.
        tags = {
            "versweep.backend": "venv",
            "versweep.env_key": plan.key,
            "versweep.env_path": str(plan.path),
            "versweep.env_python": str(marker.get("interpreter") or ""),
            "versweep.env_builder": str(marker.get("builder") or ""),
            "versweep.env_built_at": str(marker.get("built_at") or ""),
        }
        handle.tags = {key: value for key, value in tags.items() if value}
        if freeze:
            handle.artifacts[FREEZE_ARTIFACT] = freeze + "\n"
        return handle



def wheel_image(image: Image, marker: dict) -> Image:
    """The matrix entry as the environment's wheel really is: its CUDA version and the
    architectures it has code for, native (sm_XY) and PTX (compute_XY), where its torch
    said (torch >= 1.7); else the entry's own lists.

    ``torch-1.10.0-cu113`` gets PyPI's torch 1.10.0, a CUDA 10.2 build for sm_37..sm_70:
    a trial on an sm_80 GPU is `unsupported` with that reason, not a crash in the worker.
    """
    archs = marker.get("archs_reported")
    cuda = marker.get("cuda_reported") or image.cuda
    if not archs:
        return dataclasses.replace(image, cuda=cuda)
    sass = tuple(a for a in archs if a.startswith("sm_"))
    ptx = tuple(a for a in archs if a.startswith("compute_"))
    return dataclasses.replace(image, cuda=cuda, archs=sass, ptx=ptx)

def _quiet(line: str) -> None:
    pass


class VenvHandle(ProcessHandle):
    """A worker in a child process that holds its environment's use lock until closed."""

    def __init__(self, args: Sequence[str], *, env: dict[str, str], cwd: Path | None,
                 log_path: Path, lease: EnvLease):
        self.lease = lease
        super().__init__(args, env=env, cwd=cwd, log_path=log_path)

    def close(self) -> None:
        try:
            super().close()
        finally:
            self.lease.release()

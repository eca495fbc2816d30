"""The validated shape of a sweep: frozen dataclasses that grid files are loaded into.

Configuration is typed and checked at the edge (sweeps/grid/load.py turns a TOML grid
into these); everything after that trusts them. Nothing here imports Ray, MLflow
or torch.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sweeps.workloads import Workload

# Trial statuses, as the `versweep.status` tag records them (the rules: sweeps/status.py).

# The order a grid's trials are queued in (sweeps/grid/load.py), as a report states it.
TRIAL_ORDER = ("interleaved: repeat by repeat; within a repeat, each variant on every image "
               "back to back, the images in matrix order on even repeats and reversed on odd "
               "ones")

# A memory size as Docker takes it, with its unit: "16g", "512m" (sweep.container_memory).
MEMORY_SIZE = re.compile(r"^[1-9]\d*[bkmg]$")


def memory_size_problem(value: object) -> str | None:
    """Why ``value`` is not a memory size like '16g' or '512m', or None if it is one."""
    if isinstance(value, str) and MEMORY_SIZE.match(value):
        return None
    return f"'{value}' is not a memory size like '16g' or '512m'"


# The image name the `local` backend runs on: the host's own interpreter and torch.
LOCAL_IMAGE = "local"


def trial_key(workload: str, image: str, config: dict[str, Any], repeat: int) -> str:
    """A stable id for one trial: the same inputs always give the same key.

    Resuming a sweep looks trials up by this key, so it must not depend on
    anything but what the trial computes (not on the order of keys, not on time).
    """
    payload = json.dumps(
        {"workload": workload, "image": image, "config": config, "repeat": repeat},
        sort_keys=True,
        separators=(",", ":"),
    )
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:16]


@dataclass(frozen=True)
class Image:
    """One entry of images/matrix.toml: a Docker image that pins a PyTorch build."""

    name: str  # e.g. "torch-1.13.1-cu117"
    base: str  # the pytorch/pytorch tag it builds FROM
    torch: str
    python: str
    cuda: str | None  # None for a CPU-only image
    cudnn: str | None
    archs: tuple[str, ...]  # GPU architectures with code compiled in, e.g. ("sm_80", "sm_90")
    ptx: tuple[str, ...] = ()  # virtual architectures embedded as PTX (JIT on newer GPUs)
    # Where images/Dockerfile pip-installs torch==<torch> from when the base has none
    # ("https://download.pytorch.org/whl/cpu"); "" means PyPI.
    torch_index_url: str = ""
    notes: str = ""


@dataclass(frozen=True)
class TrialSpec:
    """One trial of a grid: a workload with a resolved config on one image, one repeat."""

    workload: str
    image: str
    config: tuple[tuple[str, Any], ...]  # the worker config, sorted (key, value) pairs
    repeat: int
    group: int  # which [[group]] of the grid file it came from
    # A user's own workload: its directory (sweeps/workloads); None for a shipped one.
    # Where the plug-in lives, not what the trial computes: not part of the key.
    workload_dir: str | None = None
    # Config keys whose values the name shows beside the workload's label: those that tell
    # this trial from the sweep's others (sweeps/grid/load.py), a search's sampled ones.
    # How the trial is named, not what it computes: not part of the key.
    name_keys: tuple[str, ...] = field(default=(), compare=False)

    @property
    def config_dict(self) -> dict[str, Any]:
        return dict(self.config)

    @property
    def key(self) -> str:
        return trial_key(self.workload, self.image, self.config_dict, self.repeat)

    @property
    def plugin(self) -> Workload:
        """What the host knows of this trial's workload (sweeps/workloads)."""
        from sweeps import workloads

        return workloads.get(self.workload, self.workload_dir)

    @property
    def name(self) -> str:
        """A name a person reads in the MLflow UI: 'rnn_bench 1x320-ce-short cudnn @ local #0',
        'ptb_lm medium learning_rate=0.0316 keep_prob=0.5 @ local #0'."""
        config = self.config_dict
        shown = [f"{key}={short_value(config.get(key))}" for key in self.name_keys]
        return " ".join([self.plugin.label(config), *shown, "@", self.image, f"#{self.repeat}"])


def short_value(value: Any) -> str:
    """A config value as a trial's name shows it: 4 significant digits, true/false, none."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:.4g}"
    if value is None:
        return "none"
    if isinstance(value, (list, tuple)):
        return ",".join(short_value(v) for v in value)
    return str(value)


@dataclass(frozen=True)
class Param:
    """One dimension of a search space."""

    name: str  # the worker config key it sets
    kind: str  # "uniform", "loguniform", "int", "choice"
    low: float | None = None
    high: float | None = None
    values: tuple[Any, ...] = ()


@dataclass(frozen=True)
class Scheduler:
    """ASHA early stopping on a per-step metric."""

    kind: str  # "asha"
    grace_period: int  # steps (epochs) before a trial can be stopped
    reduction_factor: int
    max_t: int  # the most steps a trial runs


@dataclass(frozen=True)
class Search:
    """Optuna search over one workload's config on one image."""

    workload: str
    image: str
    base_config: tuple[tuple[str, Any], ...]  # fixed keys; the space's keys are added per trial
    space: tuple[Param, ...]
    metric: str  # e.g. "valid_perplexity", reported per step by the worker
    mode: str  # "min" or "max"
    num_samples: int
    sampler: str  # "tpe"
    seed: int
    scheduler: Scheduler | None
    workload_dir: str | None = None  # a user's own workload: its directory


@dataclass(frozen=True)
class Sweep:
    """A whole validated grid file."""

    name: str
    path: Path
    text: str  # the grid file as written, logged on the parent run
    description: str
    backend: str  # "local", "docker" or "venv"
    device: str  # "auto", "cpu" or "cuda": what trials ask Ray for
    trial_timeout_s: float
    retries: int  # how often a crashed trial is retried before it is recorded as failed
    max_concurrent: int | None
    trials: tuple[TrialSpec, ...] = ()
    search: Search | None = None
    data_dir: str | None = None  # PTB data on the host; None: the synthetic corpus
    images: tuple[Image, ...] = field(default=())  # the matrix entries the grid names
    container_memory: str | None = None  # docker: memory limit per container ("16g")

    @property
    def is_search(self) -> bool:
        return self.search is not None

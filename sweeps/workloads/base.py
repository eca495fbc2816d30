"""What the host knows of one workload: the contract every workload plug-in fills in.

A workload has two halves. The worker half (torch; Python 3.6) runs it and speaks the
protocol: for the shipped workloads it lives in workers/, for a user's own in the
workload's directory (docs/workloads.md). The host half is one ``Workload`` value,
torch-free, that everything on the host reads instead of knowing workload names:

- grid validation: the config schema (the worker's own, ``resolve``) and which metrics
  a search may optimise (``step_metrics`` for ASHA, ``result_metrics`` too otherwise);
- the plan: the trial's name (``label``), the dry run's columns (``key_columns``), what
  an image must offer (``image_reason``: e.g. CTC needs torch >= 1.0), whether a GPU
  trial calls cuDNN (``cudnn_reason``) and what else it needs of the GPU (``gpu_reason``);
- the summary and the parent run: the metric a trial is judged by and the comparison
  group it competes in (``best_metric``, ``best_group``);
- the report: which sections show it (``report_sections``), and every metric's unit and
  direction (``metrics``);
- the status: whether a trial's figures show it diverged although the worker went on
  (``diverged_reason``: ptb_lm's perplexity beyond its bound), the host's own check.

Adding a metric or a workload touches its plug-in file (and its worker half) only.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Which way a metric is better.
LOWER, HIGHER, NEITHER = "lower", "higher", ""

# Report sections a workload can ask for (analysis/sections.py builds them):
#   "speed":          time per batch per image, intervals over per-batch samples, ratios
#                     to the baseline, and the seed's GTX 1080 reference where shapes match
#   "language_model": perplexities over seeds per image, the parity check, learning curves
#   "metrics":        every result metric per image, mean ± std over repeats (any workload)
REPORT_SECTIONS = ("speed", "language_model", "metrics")


@dataclass(frozen=True)
class Metric:
    """One figure a workload reports."""

    name: str
    unit: str  # "ms", "words/s", "s", "" for a pure number (perplexity, loss)
    better: str  # LOWER, HIGHER or NEITHER (informational: a learning rate)
    per_step: bool = False  # in `metric` events, every epoch / chunk (ASHA can stop on it)
    in_result: bool = True  # in the final `result` event
    description: str = ""

    def __post_init__(self) -> None:
        if self.better not in (LOWER, HIGHER, NEITHER):
            raise ValueError(f"metric {self.name}: better must be 'lower', 'higher' or ''")
        if not (self.per_step or self.in_result):
            raise ValueError(f"metric {self.name}: reported neither per step nor in the result")

    @property
    def shown(self) -> str:
        """The name with its unit, for tables: 'ms_per_batch_median (ms)'."""
        return f"{self.name} ({self.unit})" if self.unit else self.name


# Why a trial's figures (one metric event's, or the result's) show it diverged, or None:
# (metrics, config) -> reason. The worker checks its own bound; this is the host's check of
# the same, for a worker that did not (sweeps/status.py: diverged, stopped early).
DivergedReason = Callable[[Mapping[str, Any], Mapping[str, Any]], str | None]


def _never_diverged(metrics: Mapping[str, Any], config: Mapping[str, Any]) -> str | None:
    return None


# The image facts a workload's requirements are judged on (a matrix entry, or the
# host's own torch, whose version is unknown before the worker runs: then None).
ImageReason = Callable[[str | None, str, Mapping[str, Any]], str | None]


def _no_reason(torch: str | None, image: str, config: Mapping[str, Any]) -> str | None:
    return None


def _no_cudnn(config: Mapping[str, Any]) -> str | None:
    return None


# (config, the GPU's compute capability, the image's name, 'the GPU is sm_XY') -> why this
# GPU cannot run the trial (beyond the image's kernels, cuDNN and driver: compat.py), or None.
GpuReason = Callable[[Mapping[str, Any], tuple[int, int], str, str], str | None]


def _no_gpu_reason(config: Mapping[str, Any], capability: tuple[int, int], image: str,
                   gpu: str) -> str | None:
    return None


@dataclass(frozen=True)
class Workload:
    """The host's whole knowledge of one workload."""

    name: str
    description: str
    metrics: tuple[Metric, ...]
    # The config keys whose values name a trial ('rnn_bench 1x320-ce-short cudnn'), in order;
    # a key whose value is None or equal to ``label_defaults`` is left out.
    label_keys: tuple[str, ...] = ()
    label_defaults: Mapping[str, Any] = field(default_factory=dict)
    # The dry run's first columns (every other config key that varies follows them).
    key_columns: tuple[str, ...] = ()
    # The summary's and the parent run's "best": judged by this metric (its direction),
    # within groups of trials that agree on ``best_per`` (config keys).
    best_metric: str | None = None
    best_per: tuple[str, ...] = ()
    report_sections: tuple[str, ...] = ("metrics",)
    # What the trial needs of its image: (torch version or None, image name, config) ->
    # why this image cannot run it, or None. Mirrors the worker's own `unsupported`.
    image_reason: ImageReason = _no_reason
    # Why a GPU trial of this config calls cuDNN (for cuDNN/GPU compatibility), or None.
    cudnn_reason: Callable[[Mapping[str, Any]], str | None] = _no_cudnn
    # What else the trial needs of the GPU (rnn_bench 'compiled': Triton, capability >= 7.0).
    gpu_reason: GpuReason = _no_gpu_reason
    # Whether the figures so far show the trial diverged (checked on every metric event and
    # on the result).
    diverged_reason: DivergedReason = _never_diverged
    # The worker half: the torch-free config module (SCHEMA, optional expand / check) and
    # the runner module (run(config, device, emitter)). Shipped workloads: in workers/
    # (both None here; workers/workloads.py knows them). A user's own: files in ``source``.
    source: Path | None = None

    def __post_init__(self) -> None:
        names = [m.name for m in self.metrics]
        if len(set(names)) != len(names):
            raise ValueError(f"workload {self.name}: a metric is listed twice")
        if self.best_metric is not None and self.best_metric not in names:
            raise ValueError(f"workload {self.name}: best_metric '{self.best_metric}' is not "
                             "one of its metrics")
        unknown = [s for s in self.report_sections if s not in REPORT_SECTIONS]
        if unknown:
            raise ValueError(f"workload {self.name}: unknown report section(s) {unknown}; "
                             f"valid: {', '.join(REPORT_SECTIONS)}")

    # ---------------------------------------------------------------- metrics

    def metric(self, name: str) -> Metric | None:
        return next((m for m in self.metrics if m.name == name), None)

    @property
    def step_metrics(self) -> tuple[str, ...]:
        return tuple(m.name for m in self.metrics if m.per_step)

    @property
    def result_metrics(self) -> tuple[str, ...]:
        return tuple(m.name for m in self.metrics if m.in_result)

    def lower_is_better(self, name: str) -> bool:
        """Whether less is better for metric ``name`` (unknown metrics: lower, like a time)."""
        found = self.metric(name)
        return found is None or found.better != HIGHER

    # ---------------------------------------------------------------- naming

    def label(self, config: Mapping[str, Any]) -> str:
        """The trial's name without image and repeat: 'ptb_lm small', 'rnn_bench 1x320 ...'."""
        words = [self.name]
        for key in self.label_keys:
            value = config.get(key)
            if value is None or (key in self.label_defaults
                                 and value == self.label_defaults[key]):
                continue
            words.append(str(value))
        return " ".join(words)

    def best_group(self, config: Mapping[str, Any]) -> str:
        """The comparison group a trial's best competes in: 'rnn_bench 1x320-ce-short cudnn'."""
        return " ".join([self.name, *(str(config.get(key)) for key in self.best_per)])

    @property
    def is_shipped(self) -> bool:
        return self.source is None

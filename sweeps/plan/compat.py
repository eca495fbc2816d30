"""Can this image run this trial on these GPUs? Decided on the host, before any container.

    gpus = node_gpus()                        # what nvidia-smi reports on this node
    reason = unsupported_reason(image, "rnn_bench", config, gpus)
    if reason is not None:                    # the trial is `unsupported`, with that reason
        ...

The docker backend asks this (DockerBackend.check) before it creates a container, and
sweeps/execute/trial.py records the trial `unsupported` with the reason, without starting a
worker. The rules, in the order they are applied:

1. torch version: what the workload and config need from the image's torch
   (nn.CTCLoss, torch.compile). No GPU is needed to decide these.
2. GPUs (only when the trial has GPUs and its device is not "cpu"), for each GPU:
   a. a CPU-only image cannot use it;
   b. driver: the node's driver must be new enough for the image's CUDA runtime;
   c. kernels: the image must hold SASS or PTX that this GPU can run;
   d. cuDNN: for trials that call cuDNN, the image's cuDNN must know the GPU's generation;
   e. torch.compile (impl "compiled") needs a GPU that Triton supports.

Every fact carries its source; "the reference" is reference/pytorch-versions.md, and its
markers are kept: [V] verified from a primary source, [S] secondary, [U] unverified. A rule
marked [U] may be wrong; the worker's `env` event records what really ran, so a wrong
verdict shows up in the records (an `unsupported` that should have run never produces an
env event; a trial that should have been refused ends `failed` with its stderr tail).

The host may parse version strings (the workers may not: they detect features instead).
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sweeps import workloads
from sweeps.grid.spec import Image
from sweeps.versions import version_tuple

# What a Gpu's capability is when nothing tells us (an old nvidia-smi and a name we do not
# know): the kernel and cuDNN rules then decide nothing and leave it to the worker.
UNKNOWN_CAPABILITY = (0, 0)

# How long nvidia-smi may take before we decide this node has no usable GPU.
NVIDIA_SMI_TIMEOUT_S = 20


@dataclass(frozen=True)
class Gpu:
    """One GPU of this node, as nvidia-smi reports it."""

    index: str
    name: str
    capability: tuple[int, int]  # (major, minor); UNKNOWN_CAPABILITY when nothing said
    driver: str  # e.g. "535.104.05"

    @property
    def sm(self) -> str:
        """The GPU's architecture as nvcc spells it: "sm_90" for capability 9.0."""
        return f"sm_{self.capability[0]}{self.capability[1]}"

    def describe(self) -> str:
        """How a message names the GPU: "GPU 0 (NVIDIA H100 80GB HBM3)"."""
        return f"GPU {self.index} ({self.name})"


# ---------------------------------------------------------------------------------------------
# node_gpus: what nvidia-smi reports

QUERY_FIELDS = "index,name,compute_cap,driver_version"
# An nvidia-smi older than the compute_cap field (it came with the R510 drivers [U]) is
# asked for the rest, and the capability comes from the GPU's name.
OLD_QUERY_FIELDS = "index,name,driver_version"

# Capabilities of GPUs that an old driver (no compute_cap field) can drive, by name, from
# NVIDIA's "CUDA GPUs" list (developer.nvidia.com/cuda-gpus) [U: general knowledge]. Newer
# GPUs (Ada, Hopper, Blackwell) need drivers that all have compute_cap, so they are absent
# on purpose. Matched as whole words in nvidia-smi's name ("Tesla V100-SXM2-16GB").
CAPABILITY_BY_NAME = (
    (r"\bK40|\bK20", (3, 5)),
    (r"\bK80\b", (3, 7)),
    (r"\bM40\b|\bM60\b|\bM4\b|GTX (9[5-8]0|TITAN X\b)", (5, 2)),
    (r"\bP100\b", (6, 0)),
    (r"\bP40\b|\bP4\b|GTX 10[5-8]0|TITAN Xp?\b", (6, 1)),
    (r"\bV100|TITAN V\b", (7, 0)),
    (r"\bT4\b|RTX 20[6-8]0|TITAN RTX|Quadro RTX", (7, 5)),
    (r"\bA100|\bA30\b|\bA800", (8, 0)),
    (r"\bA10G?\b|\bA40\b|\bA16\b|\bA2\b|RTX 30[5-9]0|RTX A[2-6]000", (8, 6)),
)


def capability_from_name(name: str) -> tuple[int, int]:
    """A GPU's compute capability from its name, or UNKNOWN_CAPABILITY."""
    for pattern, capability in CAPABILITY_BY_NAME:
        if re.search(pattern, name):
            return capability
    return UNKNOWN_CAPABILITY


class _NoAnswer(Exception):
    """nvidia-smi is absent, hangs, or printed what we did not ask for."""


def _query(fields: str) -> list[list[str]] | None:
    """nvidia-smi's CSV rows for these fields; None when it ran and refused (exit code not 0).

    Raises _NoAnswer where it is absent, hangs or answers in another shape: asking again
    with other fields would not help.
    """
    try:
        done = subprocess.run(["nvidia-smi", f"--query-gpu={fields}", "--format=csv,noheader"],
                              capture_output=True, text=True, timeout=NVIDIA_SMI_TIMEOUT_S)
    except (OSError, subprocess.SubprocessError):
        raise _NoAnswer from None
    if done.returncode != 0:
        return None
    want = fields.count(",") + 1
    rows = []
    for line in done.stdout.splitlines():
        if not line.strip():
            continue
        # No field we ask for holds a comma (GPU names do not), so a plain split is safe.
        cells = [cell.strip() for cell in line.split(",")]
        if len(cells) != want:
            raise _NoAnswer
        rows.append(cells)
    return rows


def _parse_capability(text: str) -> tuple[int, int]:
    match = re.fullmatch(r"(\d+)\.(\d+)", text)
    return (int(match.group(1)), int(match.group(2))) if match else UNKNOWN_CAPABILITY


def node_gpus() -> list[Gpu]:
    """This node's GPUs, as ``nvidia-smi --query-gpu`` reports them; [] without a usable one.

    [] where nvidia-smi is missing, fails (no driver loaded) or hangs: the node then has no
    GPU this module can reason about, and no GPU rule applies. An nvidia-smi too old for the
    compute_cap field is asked again without it; the capability then comes from the GPU's
    name (CAPABILITY_BY_NAME), or is UNKNOWN_CAPABILITY.
    """
    try:
        rows = _query(QUERY_FIELDS)
        if rows is not None:
            return [Gpu(index=index, name=name, capability=_parse_capability(cap),
                        driver=driver) for index, name, cap, driver in rows]
        # It refused: an nvidia-smi without compute_cap says 'Field "compute_cap" is not a
        # valid field to query.' and exits 2 [U]; one without a driver fails again below.
        rows = _query(OLD_QUERY_FIELDS)
    except _NoAnswer:
        return []
    if rows is None:
        return []
    return [Gpu(index=index, name=name, capability=capability_from_name(name), driver=driver)
            for index, name, driver in rows]


# ---------------------------------------------------------------------------------------------
# Versions and architectures

def arch_capability(arch: str) -> tuple[int, int, str]:
    """ "sm_86" -> (8, 6, ""); "compute_90a" -> (9, 0, "a"); "sm_120" -> (12, 0, "").

    The last digit is the minor version and the rest the major, as nvcc numbers them.
    """
    match = re.fullmatch(r"(?:sm|compute)_(\d+)(\d)([af]?)", arch)
    if match is None:
        raise ValueError(f"'{arch}' is not an architecture like sm_86 or compute_90a")
    return int(match.group(1)), int(match.group(2)), match.group(3)


def sass_runs_on(arch: str, capability: tuple[int, int]) -> bool:
    """Whether native code (a cubin) built for ``arch`` runs on a GPU of ``capability``.

    "A cubin generated for a certain compute capability is supported to run on any GPU
    with the same major revision and same or higher minor revision of compute capability"
    (NVIDIA, Blackwell Compatibility Guide §1.2 [V]). Architecture-specific code ("sm_90a")
    runs on exactly that capability: such targets "do not follow the onion layer model"
    (PTX ISA guide, quoted in LLVM review D155851 [V]). Family code ("sm_100f", CUDA 12.9+)
    runs within its major, like a plain cubin ("compute_100f ... compatible only with 10.0
    and 10.3" [S: EESSI support issue 210]).
    """
    major, minor, suffix = arch_capability(arch)
    if suffix == "a":
        return (major, minor) == capability
    return major == capability[0] and minor <= capability[1]


def ptx_runs_on(arch: str, capability: tuple[int, int]) -> bool:
    """Whether PTX for virtual ``arch`` can be JIT-compiled by the driver for ``capability``.

    Plain PTX is forward-compatible: compute_AB runs on any GPU of capability >= A.B
    (Blackwell Compatibility Guide §1.2 [V]). "compute_90a" PTX "cannot be run on later
    generation devices" (PTX ISA guide [V], as above); "compute_100f" stays in its family [S].
    """
    major, minor, suffix = arch_capability(arch)
    if suffix == "a":
        return (major, minor) == capability
    if suffix == "f":
        return major == capability[0] and minor <= capability[1]
    return (major, minor) <= capability


def kernel_source(image: Image, gpu: Gpu) -> str | None:
    """Where the GPU's kernels come from in this image: "sass", "ptx" (the driver JIT-compiles
    them on first use, which makes the first batches slow), or None (no kernel runs).

    A report can say "runs through PTX JIT" for "ptx": its first timings include compilation.
    """
    if any(sass_runs_on(arch, gpu.capability) for arch in image.archs):
        return "sass"
    if any(ptx_runs_on(arch, gpu.capability) for arch in image.ptx):
        return "ptx"
    return None


def ptx_jit_gpus(image: Image, config: Mapping[str, Any], gpus: Sequence[Gpu]) -> list[Gpu]:
    """The trial's GPUs that this image reaches only through PTX JIT (for a report's note)."""
    if not _uses_gpus(config, gpus):
        return []
    return [gpu for gpu in gpus
            if gpu.capability != UNKNOWN_CAPABILITY and kernel_source(image, gpu) == "ptx"]


def _list(values: Sequence[str]) -> str:
    return ", ".join(values) if values else "none"


def _kernels_of(image: Image) -> str:
    """ "has kernels for sm_37, sm_50 and PTX compute_37" for a message."""
    ptx = f"PTX {_list(image.ptx)}" if image.ptx else "no PTX"
    return f"has kernels for {_list(image.archs)} and {ptx}"


def _image_advice(capability: tuple[int, int]) -> str:
    """Which matrix images run on a GPU of this capability, from the reference §2.2."""
    major, minor = capability
    if major == 8:
        # Ampere/Ada: native sm_80 from 1.7.0+cu110 [V reference §0.2, §2.2].
        return "use a cu11x image or newer (torch >= 1.7 with CUDA 11.0+)"
    if major == 9:
        # Hopper: native sm_90 from 2.0.0+cu118 [V reference §0.1, §2.2].
        return "use torch >= 2.0 with CUDA 11.8+ (torch-2.0.1-cu118 or newer)"
    if major in (10, 12):
        # Blackwell: sm_100/sm_120 from the cu128 builds of 2.7 [V reference §1, 2.7 row].
        return "use a cu128 or newer image (torch >= 2.7 with CUDA 12.8+)"
    # Older GPUs lose support in newer builds (cu13x has no sm_50-70 [V reference §1]).
    same_major = (f"sm_{major}0" if minor == 0
                  else f"one of sm_{major}0..sm_{major}{minor}")
    return (f"use an image whose archs include {same_major} or whose PTX is "
            f"compute_{major}{minor} or older (newer builds dropped older GPUs: cu13x has no "
            f"sm_50-70)")


# ---------------------------------------------------------------------------------------------
# 1. torch-version rules: what the workload and config need from the image's torch

def _config_value(config: Mapping[str, Any], key: str, default: Any) -> Any:
    """A config key's value; the worker's default where a raw config leaves it out."""
    value = config.get(key)
    return default if value is None else value


def torch_reason(image: Image, workload: str, config: Mapping[str, Any],
                 workload_dir: str | None = None) -> str | None:
    """Why the image's torch cannot run this workload and config, or None.

    The workload's plug-in says (sweeps/workloads: ``image_reason``, e.g. rnn_bench's CTC
    loss needs torch >= 1.0 and impl 'compiled' torch >= 2.0), in the worker's own words,
    so a trial refused here reads the same as one the worker refused. The other
    version-dependent config keys are no-ops in the worker, not refusals
    (workers/runtime.py apply_numerics): ``tf32`` sets cudnn/matmul.allow_tf32 only where
    they exist (torch >= 1.7; older torch has no TF32 at all, so tf32 = false is what runs
    anyway), ``deterministic`` sets cudnn.deterministic on every torch and
    use_deterministic_algorithms only where it exists (>= 1.8); the env event records
    which flags were really set. So neither is a rule here.
    """
    plugin = workloads.get(workload, workload_dir)
    return plugin.image_reason(image.torch, image.name, config)


# ---------------------------------------------------------------------------------------------
# 2. GPU rules

def _uses_gpus(config: Mapping[str, Any], gpus: Sequence[Gpu]) -> bool:
    """Whether the trial runs on its GPUs: it has some and its device is not "cpu"."""
    return bool(gpus) and _config_value(config, "device", "auto") != "cpu"


def uses_cudnn(workload: str, config: Mapping[str, Any],
               workload_dir: str | None = None) -> str | None:
    """Why a GPU trial of this workload calls cuDNN (for the message), or None if it does not.

    The workload's plug-in says (``cudnn_reason``): rnn_bench's impl 'cudnn' is nn.LSTM,
    and its correctness gate runs cudnn next to every other implementation unless check is
    false; ptb_lm's nn.LSTM runs on cuDNN on a GPU.
    """
    return workloads.get(workload, workload_dir).cudnn_reason(config)


# The oldest cuDNN that supports each GPU generation, by compute capability major.
#   8 (Ampere, Ada): cuDNN 8.0 is the first to list Ampere (cuDNN 8.0.x support matrix:
#     "NVIDIA Ampere GPU architecture" with CUDA 11.0 [V]); cuDNN 7.x has none [V by
#     implication, reference §2.3]. Ada (8.9) also runs Ampere's sm_80/86 code, so it takes
#     the same rule [U: Ada is listed from 8.6].
#   9 (Hopper): cuDNN 8.5.0's support matrix lists Ampere and older only [V: cudnn-850
#     support matrix], 8.9.x lists Hopper [V: cudnn-891/896 support matrix]; the reference
#     says "8.6 or 8.7" [U]. We take 8.6, the first release after 8.5 [U]; no matrix image
#     has 8.6, so choosing 8.7 would change no verdict here.
#   10-12 (Blackwell, Thor): cuDNN 9.7 is the first release with Blackwell support [S:
#     cudnn-frontend v1.10 release notes, "preferred ... for cudnn backend 9.7.0 and later as
#     it adds Blackwell specific features"; the reference's cu128 images ship 9.7.1 with
#     sm_100/sm_120, V]. Conservative: older cuDNN 9 may run some graphs through its
#     "hardware forward compatible" mode (cuDNN 9.0.0 release notes [V]), but that covers
#     operation graphs, not the legacy RNN API torch calls [U].
# Turing (7.5) with cuDNN 7 of CUDA 9 builds: the cuDNN 7.x support matrices list Turing
# only for the CUDA 10 builds [V: cudnn_760 support matrix], but Turing runs Volta's sm_70
# cubins (same major), so it is not refused here [U].
CUDNN_MINIMUM = (
    # (lowest capability major, highest, oldest cuDNN, generation name)
    (8, 8, (8, 0), "Ampere"),
    (9, 9, (8, 6), "Hopper"),
    (10, 12, (9, 7), "Blackwell"),
)


def cudnn_reason(image: Image, gpu: Gpu, why_cudnn: str) -> str | None:
    """Why the image's cuDNN cannot run on this GPU, or None."""
    have = version_tuple(image.cudnn)
    if not have:
        return None
    major = gpu.capability[0]
    for low, high, oldest, generation in CUDNN_MINIMUM:
        if low <= major <= high and have[:2] < oldest:
            need = ".".join(str(n) for n in oldest)
            return (f"{image.name} ships cuDNN {image.cudnn}, which has no support for "
                    f"{generation} (cuDNN >= {need} needed); {gpu.describe()} is {gpu.sm} and "
                    f"{why_cudnn}; {_image_advice(gpu.capability)}")
    return None


# The oldest Linux driver each CUDA runtime needs, from NVIDIA's CUDA Toolkit release notes
# ("CUDA Toolkit and Corresponding Driver Versions"; [S]: the copies of that table we could
# read, e.g. blog.csdn.net/ytomc/article/details/122805982, agree with each other) and the
# CUDA Compatibility guide's "Minor Version Compatibility" page [V: 10.0 >= 410.48,
# 10.1 >= 418.39, 10.2 >= 440.33; 11.x >= 450 (450.80.02, its note), 12.x >= 525,
# 13.x >= 580]. From CUDA 11 on, every minor release of a major runs on the major's first
# driver ("minor version compatibility"), with a limited feature set [V same page].
# Caveat, not a rule here: under minor version compatibility, PTX newer than the driver
# cannot be JIT-compiled [U]; an image reaching a GPU only through PTX may still fail.
DRIVER_MINIMUM = {
    (9, 0): "384.81",
    (9, 1): "390.46",
    (9, 2): "396.26",
    (10, 0): "410.48",
    (10, 1): "418.39",
    (10, 2): "440.33",
    (11, 0): "450.36.06",  # 11.0's own first driver; 11.1+ need 450.80.02 (below)
}
DRIVER_MINIMUM_BY_MAJOR = {
    11: "450.80.02",  # [V: "upgrading to 450.80.02 ... minor version compatibility"]
    12: "525.60.13",  # [V: cuDNN 8.9.x/9.x support matrices, "for CUDA 12.x >=525.60.13"]
    13: "580",        # [V: ">= 580"; the 13.0 GA driver is 580.65.06, S]
}


def driver_minimum(cuda: str) -> str | None:
    """The oldest driver the CUDA runtime ``cuda`` ("11.8") runs on, or None if unknown."""
    version = version_tuple(cuda)[:2]
    if version in DRIVER_MINIMUM:
        return DRIVER_MINIMUM[version]
    return DRIVER_MINIMUM_BY_MAJOR.get(version[0]) if version else None


def driver_reason(image: Image, gpu: Gpu) -> str | None:
    """Why the node's driver is too old for the image's CUDA runtime, or None."""
    if image.cuda is None:
        return None
    need = driver_minimum(image.cuda)
    have = version_tuple(gpu.driver)
    if need is None or not have:
        return None  # an unknown CUDA or an unreadable driver: leave it to the worker
    if have < version_tuple(need):
        return (f"{image.name} is built with CUDA {image.cuda}, which needs NVIDIA driver >= "
                f"{need}; {gpu.describe()} has driver {gpu.driver}: update the driver or use "
                f"an image with an older CUDA")
    return None


def gpu_reason(image: Image, workload: str, config: Mapping[str, Any],
               gpu: Gpu, workload_dir: str | None = None) -> str | None:
    """Why this image cannot run the trial on this one GPU, or None."""
    if image.cuda is None:
        if _config_value(config, "device", "auto") == "auto":
            # "auto" means the GPU when the image's torch can use one: a CPU-only image runs
            # the trial on the CPU (its env event says so), and the backend passes it no GPU.
            return None
        return (f"{image.name} is a CPU-only image and cannot use {gpu.describe()}; run the "
                f"trial with device = \"cpu\" or \"auto\", or on an image with CUDA")
    reason = driver_reason(image, gpu)
    if reason is not None:
        return reason
    if gpu.capability == UNKNOWN_CAPABILITY:
        return None  # nothing to decide on: the worker's env event will say what it is
    if kernel_source(image, gpu) is None:
        return (f"{image.name} {_kernels_of(image)}; {gpu.describe()} is {gpu.sm}: "
                f"{_image_advice(gpu.capability)}")
    why_cudnn = uses_cudnn(workload, config, workload_dir)
    if why_cudnn is not None:
        reason = cudnn_reason(image, gpu, why_cudnn)
        if reason is not None:
            return reason
    return workloads.get(workload, workload_dir).gpu_reason(
        config, gpu.capability, image.name, f"{gpu.describe()} is {gpu.sm}")


def unsupported_reason(image: Image, workload: str, config: Mapping[str, Any],
                       gpus: Sequence[Gpu], workload_dir: str | None = None) -> str | None:
    """Why ``image`` cannot run this trial on ``gpus``: one line a person understands, or None.

    ``config`` is the trial's worker config (resolved or raw: a missing key takes the
    worker's default); ``gpus`` are the node's GPUs the trial was given (empty for a CPU
    trial). The torch rules apply to every trial; the GPU rules only when the trial has GPUs
    and its device is not "cpu". None means "nothing known stops it": the worker may still
    find out otherwise, and report `unsupported` itself.
    """
    reason = torch_reason(image, workload, config, workload_dir)
    if reason is not None or not _uses_gpus(config, gpus):
        return reason
    for gpu in gpus:
        reason = gpu_reason(image, workload, config, gpu, workload_dir)
        if reason is not None:
            return reason
    return None

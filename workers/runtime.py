"""What every workload shares: the device, the numeric flags, the env report, timing.

Everything here detects features (``hasattr``, try/except) instead of parsing
torch's version string, because the same file runs on torch 0.4 through 2.x.
"""
import os
import platform
import socket
import subprocess
import time

import torch

from . import memory
from .protocol import BadConfig


def resolve_device(name):
    """Turn the ``device`` key into a torch.device, or raise BadConfig."""
    has_cuda = torch.cuda.is_available()
    if name == "auto":
        return torch.device("cuda:0" if has_cuda else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda" or name.startswith("cuda:"):
        if not has_cuda:
            raise BadConfig("config key 'device' is '%s' but this torch sees no CUDA device; "
                            "use 'cpu' or 'auto'" % name)
        index = 0
        if name.startswith("cuda:"):
            try:
                index = int(name.split(":", 1)[1])
            except ValueError:
                raise BadConfig("config key 'device' is '%s'; write cuda:N with a number N"
                                % name) from None
            if not 0 <= index < torch.cuda.device_count():
                raise BadConfig("config key 'device' is '%s' but only %d CUDA device(s) are visible"
                                % (name, torch.cuda.device_count()))
        return torch.device("cuda:%d" % index)
    raise BadConfig("config key 'device' is '%s'; choose auto, cpu, cuda or cuda:N" % name)


def device_memory(device):
    """(bytes, who) of the memory a config must fit in on ``device``: a GPU's own, or this
    machine's (its cgroup's limit in a container); bytes None where unknown."""
    if device.type == "cuda":
        index = device.index or 0
        properties = torch.cuda.get_device_properties(index)
        return properties.total_memory, "cuda:%d (%s) has" % (index, properties.name)
    return memory.machine_memory(), "this machine has"


def apply_numerics(config, device):
    """Set seed, threads and the numeric flags the config asks for, where torch has them."""
    torch.manual_seed(config["seed"])
    if device.type == "cuda":
        torch.cuda.manual_seed_all(config["seed"])
        torch.cuda.set_device(device.index or 0)
    if config.get("num_threads"):
        torch.set_num_threads(config["num_threads"])
    cudnn = torch.backends.cudnn
    cudnn.benchmark = config["cudnn_benchmark"]
    cudnn.deterministic = config["deterministic"]
    if hasattr(cudnn, "allow_tf32"):  # torch >= 1.7
        cudnn.allow_tf32 = config["tf32"]
    backends_cuda = getattr(torch.backends, "cuda", None)
    matmul = getattr(backends_cuda, "matmul", None)
    if matmul is not None and hasattr(matmul, "allow_tf32"):  # torch >= 1.7
        matmul.allow_tf32 = config["tf32"]
    if config["deterministic"] and hasattr(torch, "use_deterministic_algorithms"):  # >= 1.8
        # cuBLAS needs a fixed workspace to be deterministic on CUDA >= 10.2.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        try:
            torch.use_deterministic_algorithms(True, warn_only=True)  # warn_only: >= 1.11
        except TypeError:
            torch.use_deterministic_algorithms(True)


def numeric_flags():
    """The numeric flags in force, as the env event reports them (None: no such flag)."""
    cudnn = torch.backends.cudnn
    backends_cuda = getattr(torch.backends, "cuda", None)
    matmul = getattr(backends_cuda, "matmul", None)
    flags = {
        "cudnn_enabled": bool(cudnn.enabled),
        "cudnn_benchmark": bool(cudnn.benchmark),
        "cudnn_deterministic": bool(cudnn.deterministic),
        "tf32_cudnn": bool(cudnn.allow_tf32) if hasattr(cudnn, "allow_tf32") else None,
        "tf32_matmul": (bool(matmul.allow_tf32)
                        if matmul is not None and hasattr(matmul, "allow_tf32") else None),
        "float32_matmul_precision": (torch.get_float32_matmul_precision()
                                     if hasattr(torch, "get_float32_matmul_precision") else None),
        "deterministic_algorithms": (bool(torch.are_deterministic_algorithms_enabled())
                                     if hasattr(torch, "are_deterministic_algorithms_enabled")
                                     else None),
        "num_threads": torch.get_num_threads(),
    }
    return flags


def _cudnn_version():
    try:
        version = torch.backends.cudnn.version()
    except Exception:  # a CPU build may raise instead of returning None
        return None
    return int(version) if version is not None else None


def _driver_version():
    """The NVIDIA driver version, from the kernel module or nvidia-smi; None without one."""
    try:
        with open("/proc/driver/nvidia/version") as handle:
            first = handle.readline()
        for word in first.split():
            parts = word.split(".")
            if len(parts) >= 2 and all(p.isdigit() for p in parts):
                return word
    except (IOError, OSError):
        pass
    try:
        out = subprocess.check_output(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            stderr=subprocess.DEVNULL, universal_newlines=True, timeout=10)
        line = out.strip().splitlines()
        return line[0].strip() if line else None
    except (OSError, subprocess.SubprocessError):
        return None


def _cpu_info():
    """The CPU's model and vendor (from /proc/cpuinfo on Linux), and how many it has."""
    info = {"model": platform.processor() or None, "vendor": None,
            "logical_cpus": os.cpu_count()}
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                key, _, value = line.partition(":")
                key, value = key.strip(), value.strip()
                if key == "model name" and value:
                    info["model"] = value
                elif key == "vendor_id" and value:
                    info["vendor"] = value
                if info["vendor"] and key == "model name":
                    break
    except (IOError, OSError):
        pass
    return info


# What torch.__config__ says about the libraries inside the wheel: a label and the start of
# the line that names it (torch >= 1.1; older ones report none of it).
_BUILD_LINES = (
    ("mkl", ("Intel(R) Math Kernel Library", "Intel(R) oneAPI Math Kernel Library")),
    ("onednn", ("Intel(R) MKL-DNN", "Intel(R) oneDNN")),
    ("openmp", ("OpenMP",)),
    ("cpu_capability", ("CPU capability usage:",)),
)


def build_info():
    """BLAS, MKL, oneDNN, OpenMP and the parallel backend of this torch, as far as it says.

    A speed figure depends on them as much as on torch itself (MKL takes a slow path on
    AMD CPUs in some versions): the env event carries them beside every figure.
    """
    info = {"blas": None, "mkl": None, "onednn": None, "openmp": None,
            "cpu_capability": None, "parallel_backend": None}
    config = getattr(torch, "__config__", None)
    try:
        shown = config.show() if config is not None and hasattr(config, "show") else ""
    except Exception:  # a torch whose build report itself fails: report nothing of it
        shown = ""
    for line in shown.splitlines():
        text = line.strip().lstrip("- ").strip()
        for label, starts in _BUILD_LINES:
            if info[label] is None and any(text.startswith(start) for start in starts):
                # "CPU capability usage: AVX2" -> "AVX2"; the others keep their whole line.
                info[label] = (text.split(":", 1)[1].strip() if label == "cpu_capability"
                               else text)
        if text.startswith("Build settings:"):
            settings = dict(item.strip().partition("=")[::2]
                            for item in text[len("Build settings:"):].split(","))
            # BLAS_INFO since torch 1.5 or so; BLAS before it.
            info["blas"] = settings.get("BLAS_INFO") or settings.get("BLAS") or None
    try:
        parallel = config.parallel_info() if config is not None and hasattr(
            config, "parallel_info") else ""
    except Exception:
        parallel = ""
    for line in parallel.splitlines():
        if line.startswith("ATen parallel backend:"):
            info["parallel_backend"] = line.split(":", 1)[1].strip()
    return info


def compiled_archs():
    """The GPU architectures this torch has native code for, known without a GPU.

    ``torch._C._cuda_getArchFlags`` (torch >= 1.7 CUDA builds: "sm_37 sm_50 ...") is read even
    where no GPU is visible, so an environment built on a CPU node says which GPUs it can
    serve; None where torch does not say (older or CPU-only builds).
    """
    flags = getattr(torch._C, "_cuda_getArchFlags", None)
    if flags is None:
        return None
    try:
        text = flags()
    except Exception:  # a CPU-only build may raise instead of returning nothing
        return None
    archs = [word for word in (text or "").split() if word.startswith(("sm_", "compute_"))]
    return archs or None


def environment(device):
    """What the env event reports about this process: versions, device and flags.

    ``device`` may be None when the run ended before a device was chosen (a bad
    config): the versions are still reported, the device fields are null.
    """
    info = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": getattr(torch.version, "cuda", None),
        "cudnn": _cudnn_version(),
        "device": str(device) if device is not None else None,
        "gpu": None,
        "capability": None,
        "driver": None,
        "arch_list": None,
        "host": socket.gethostname(),
        "platform": platform.platform(),
        "flags": numeric_flags(),
        "cpu": _cpu_info(),
        "build": build_info(),
        "compiled_archs": compiled_archs(),
    }
    if device is not None and device.type == "cuda":
        index = device.index or 0
        info["gpu"] = torch.cuda.get_device_name(index)
        major, minor = torch.cuda.get_device_capability(index)
        info["capability"] = "%d.%d" % (major, minor)
        info["driver"] = _driver_version()
        if hasattr(torch.cuda, "get_arch_list"):  # torch >= 1.7
            info["arch_list"] = list(torch.cuda.get_arch_list())
    return info


def synchronize(device):
    """Wait for queued device work, so the clock read after it means something."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def clock():
    """A monotonic high-resolution clock in seconds."""
    return time.perf_counter()

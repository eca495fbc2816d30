"""How much memory a config needs, estimated without torch, and the refusal when it cannot fit.

A workload's torch-free config module may define ``memory_estimate(config)``: the resolved
config's peak need in bytes, as a list of ``(part, bytes)`` pairs (parameters with their
gradients and optimizer state, the activations autograd keeps for the backward pass, the
data), and ``MEMORY_KEYS``, the config keys that drive each part (named in the refusal).
The worker compares the total with its device's memory before it builds anything
(workers/cli.py); the host compares it with its own memory when it validates a grid
(sweeps/workloads), so a config that cannot fit is one line in the dry run, with the
estimate in it.

The estimate counts what the workload must hold and nothing of torch's own overhead (the
CUDA context, the allocator's caching, kernels' workspaces), so it is a lower bound: a config
it refuses cannot run; one it passes may still not fit on a device that is nearly full.

Standard library only, Python 3.6-compatible (it runs inside every image).
"""
import os

FLOAT_BYTES = 4  # every workload computes in float32
INDEX_BYTES = 8  # token ids and labels are int64


def format_bytes(count):
    """``1536`` -> ``1.5 KiB``; ``41.3 GiB``: the unit a person reads a memory size in."""
    value = float(count)
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if value < 1024 or unit == "PiB":
            return ("%d bytes" % value) if unit == "bytes" else ("%.1f %s" % (value, unit))
        value /= 1024.0
    return "%d bytes" % count  # unreachable


def total(parts):
    return sum(size for _, size in parts)


def describe(parts):
    """'parameters 1.2 GiB, activations 40.1 GiB': the parts of an estimate."""
    return ", ".join("%s %s" % (name, format_bytes(size)) for name, size in parts if size)


def estimate(module, config):
    """The ``(part, bytes)`` list of a resolved config, or None when ``module`` has no estimate."""
    if module is None or not hasattr(module, "memory_estimate"):
        return None
    return list(module.memory_estimate(config))


def problem(module, config, available, where):
    """One line when the config needs more than ``available`` bytes, else None.

    ``where`` says whose memory ``available`` is ("this machine has", "cuda:0 has").
    """
    parts = estimate(module, config)
    if parts is None or available is None or total(parts) <= available:
        return None
    # The keys that drive the largest part (MEMORY_KEYS: part -> keys).
    largest = max(parts, key=lambda part: part[1])[0]
    keys = list(getattr(module, "MEMORY_KEYS", {}).get(largest, ()))
    if len(keys) > 1:
        keys[-2:] = ["%s or %s" % (keys[-2], keys[-1])]
    advice = ("; make %s smaller" % ", ".join(keys)) if keys else ""
    return ("the config needs at least %s of memory (%s) but %s %s%s"
            % (format_bytes(total(parts)), describe(parts), where, format_bytes(available),
               advice))


def machine_memory():
    """This machine's physical memory in bytes (capped by a cgroup limit), or None if unknown."""
    try:
        physical = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        physical = None
    if physical is not None and physical <= 0:
        physical = None
    limit = _cgroup_limit()
    if limit is not None and (physical is None or limit < physical):
        return limit
    return physical


def _cgroup_limit():
    """The memory limit of this process's cgroup (a container's --memory), or None."""
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            with open(path) as handle:
                text = handle.read().strip()
        except (IOError, OSError):
            continue
        if text.isdigit() and int(text) < (1 << 60):  # "max" or a huge number: no limit
            return int(text)
    return None

"""The workloads and their config schemas, without torch.

This module and the ``*_config`` modules it imports are standard library only,
so the host (sweeps/) validates a grid's trial configs with exactly the rules
the worker applies, before any trial starts, without importing torch.

A workload has a torch-free config module with:

    SCHEMA                    dict of config.Field: the keys it accepts besides COMMON_SCHEMA
    expand(raw) -> raw        optional: fill in a preset before validation (raw keys win)
    check(config)             optional: cross-key checks on the resolved config (BadConfig)
    memory_estimate(config)   optional: [(part, bytes)], what the config needs at its peak;
    MEMORY_KEYS               {part: the keys that drive it} (workers/memory.py)

and a runner module (imports torch) with:

    env_extras(config) -> {}  optional: what the env event adds (e.g. the data source)
    run(config, device, emitter)
                              emits metric events and exactly one result, or raises
                              Unsupported / WorkerError
"""
import difflib
import importlib.util
import os
import sys

from . import ptb_lm_config, rnn_bench_config
from .config import Field, resolve
from .protocol import BadConfig

# The largest seed a config takes (numpy.random.seed's and old torch's limit).
MAX_SEED = 2 ** 32 - 1

# Keys every workload accepts, merged into its own schema.
COMMON_SCHEMA = {
    # "auto" takes the first CUDA device when there is one (inside a Ray trial
    # CUDA_VISIBLE_DEVICES already narrows that to the GPU Ray gave the trial).
    "device": Field("str", "auto", help="auto, cpu, cuda or cuda:N"),
    # Seeds torch's CPU and CUDA generators, so two runs on the CPU agree exactly.
    # At most 2**32 - 1: torch.manual_seed takes 0..2**64 - 1, but NumPy's generators (in
    # users' workloads) and old torch builds take 32 bits, and repeat r runs with seed + r.
    "seed": Field("int", 1234, minimum=0, maximum=MAX_SEED),
    # TF32 changes fp32 math on Ampere and newer; off by default so "fp32" means
    # the same thing on every torch version (the default flipped in 1.12).
    "tf32": Field("bool", False),
    # cudnn.benchmark picks kernels by timing them: faster, but not comparable across runs.
    "cudnn_benchmark": Field("bool", False),
    # Ask for deterministic algorithms where torch can (cudnn.deterministic always).
    "deterministic": Field("bool", False),
    # CPU threads for intra-op parallelism; null leaves torch's default.
    "num_threads": Field("int", None, nullable=True, positive=True, maximum=4096),
}



# name -> (config module, runner module imported only when the workload runs)
WORKLOADS = {
    "env": (None, ".envcheck"),
    "ptb_lm": (ptb_lm_config, ".ptb_lm"),
    "rnn_bench": (rnn_bench_config, ".rnn_bench"),
}


def check_workload(name):
    """Raise BadConfig unless ``name`` is a known workload, naming the nearest one."""
    if name not in WORKLOADS:
        near = difflib.get_close_matches(str(name), list(WORKLOADS), n=1, cutoff=0.6)
        hint = "did you mean '%s'? " % near[0] if near else ""
        raise BadConfig("workload '%s' is unknown; %svalid workloads: %s"
                        % (name, hint, ", ".join(sorted(WORKLOADS))))


def schema_for(name):
    """The full schema of a workload: its own keys plus the common ones."""
    check_workload(name)
    module = WORKLOADS[name][0]
    schema = dict(COMMON_SCHEMA)
    if module is not None:
        schema.update(module.SCHEMA)
    return schema


def config_module(name):
    """The torch-free config module of a registered workload (None for ``env``)."""
    check_workload(name)
    return WORKLOADS[name][0]


def resolve_workload_config(name, raw):
    """Validate a raw config for workload ``name``; return it with every default filled in."""
    check_workload(name)
    return _resolve_with(WORKLOADS[name][0], raw)


def resolve_external_config(module, raw):
    """The same, for a user's workload whose config module the caller imported."""
    return _resolve_with(module, raw)


def _resolve_with(module, raw):
    schema = dict(COMMON_SCHEMA)
    if module is not None:
        schema.update(module.SCHEMA)
    if isinstance(raw, dict) and module is not None and hasattr(module, "expand"):
        raw = module.expand(raw)
    config = resolve(schema, raw)
    if module is not None and hasattr(module, "check"):
        module.check(config)
    return config


# ---------------------------------------------------------------- a user's own workload
#
# A directory named after the workload, holding config.py (SCHEMA, optional expand and
# check: torch-free, as above) and worker.py (run(config, device, emitter), optional
# env_extras(config)). The host half, workload.py, is not read here (docs/workloads.md).

CONFIG_FILE, WORKER_FILE = "config.py", "worker.py"


def import_path(path, module_name):
    """Import the Python file ``path`` as module ``module_name``."""
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    return module


def register_external(directory):
    """Make the workload of a user's directory runnable here; return its name."""
    directory = os.path.abspath(directory)
    name = os.path.basename(directory.rstrip(os.sep))
    missing = [f for f in (CONFIG_FILE, WORKER_FILE)
               if not os.path.isfile(os.path.join(directory, f))]
    if missing:
        raise BadConfig("workload directory '%s' has no %s" % (directory, ", ".join(missing)))
    if name in WORKLOADS and not _is_external(WORKLOADS[name]):
        raise BadConfig("workload directory '%s' is named like the shipped workload '%s'"
                        % (directory, name))
    config = import_path(os.path.join(directory, CONFIG_FILE),
                         "versweep_workload_%s_config" % name)
    WORKLOADS[name] = (config, os.path.join(directory, WORKER_FILE))
    return name


def _is_external(entry):
    return os.path.isabs(entry[1])

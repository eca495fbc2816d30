"""The workloads the host knows: one plug-in each (base.py says what a plug-in holds).

    from sweeps import workloads
    workloads.get("rnn_bench")                          # a shipped workload
    workloads.get("seq_copy", "examples/workloads/seq_copy")   # a user's own, by directory

Shipped: ``env``, ``ptb_lm``, ``rnn_bench`` (their worker halves are in workers/). A user's
own workload is a directory named in the grid (``sweep.workload_dirs``), holding

    workload.py   the host half: ``WORKLOAD = Workload(name=<the directory's name>, ...)``
                  (imports sweeps.workloads.base, never torch)
    config.py     the config schema, torch-free, shared by host and worker:
                  ``SCHEMA`` (workers.config.Field values), optional ``expand(raw)`` and
                  ``check(config)``
    worker.py     the worker half: ``run(config, device, emitter)`` (Python 3.6, stdlib + torch)

docs/workloads.md walks through writing one; examples/workloads/seq_copy is one.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

from sweeps import validate
from sweeps.errors import UserError
from sweeps.workloads import env, ptb_lm, rnn_bench
from sweeps.workloads.base import Metric, Workload

__all__ = ["SHIPPED", "Metric", "Workload", "get", "load_dir", "resolve_config", "schema"]

SHIPPED: dict[str, Workload] = {w.name: w for w in (env.WORKLOAD, ptb_lm.WORKLOAD,
                                                    rnn_bench.WORKLOAD)}

# The files of a user's workload directory.
HOST_FILE, CONFIG_FILE, WORKER_FILE = "workload.py", "config.py", "worker.py"

_loaded: dict[Path, Workload] = {}


def get(name: str, source: str | Path | None = None) -> Workload:
    """The plug-in of workload ``name``: shipped, or loaded from its directory ``source``."""
    if source is not None:
        found = load_dir(source)
        if found.name != name:
            raise UserError(f"{source}: holds workload '{found.name}', not '{name}'")
        return found
    try:
        return SHIPPED[name]
    except KeyError:
        raise UserError(f"workload '{name}' is unknown; shipped workloads: "
                        f"{', '.join(sorted(SHIPPED))} (a workload of your own is named by "
                        "its directory in sweep.workload_dirs)") from None


def _import_file(path: Path, module_name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise UserError(f"{path}: cannot be imported as a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module  # dataclasses and pickling look modules up by name
    try:
        spec.loader.exec_module(module)
    except UserError:
        raise
    except Exception as exc:  # a user's file: say which and why, in one line
        del sys.modules[module_name]
        first = str(exc).splitlines()[0] if str(exc) else ""
        raise UserError(f"{path}: importing it failed: {type(exc).__name__}: {first}") from None
    return module


def load_dir(source: str | Path) -> Workload:
    """Load (once per process) the workload of a user's directory; UserError if it is not one."""
    try:
        validate.input_dir(source)
    except validate.InputError as exc:
        problem = ("no such workload directory" if exc.problem.startswith("no such directory")
                   else exc.problem)
        raise UserError(f"{source}: {problem}") from None
    directory = Path(source).expanduser().resolve()
    if directory in _loaded:
        return _loaded[directory]
    missing = [f for f in (HOST_FILE, CONFIG_FILE, WORKER_FILE) if not (directory / f).is_file()]
    if missing:
        raise UserError(f"{source}: a workload directory holds {HOST_FILE}, {CONFIG_FILE} and "
                        f"{WORKER_FILE}; missing: {', '.join(missing)} (docs/workloads.md)")
    name = directory.name
    if name in SHIPPED:
        raise UserError(f"{source}: '{name}' is a shipped workload; give yours another name")
    if not name.isidentifier():
        raise UserError(f"{source}: a workload's directory name is its name and must be a "
                        f"Python identifier (letters, digits, _), not '{name}'")
    module = _import_file(directory / HOST_FILE, f"versweep_workload_{name}")
    found = getattr(module, "WORKLOAD", None)
    if not isinstance(found, Workload):
        raise UserError(f"{directory / HOST_FILE}: defines no WORKLOAD = Workload(...) "
                        "(docs/workloads.md)")
    if found.name != name:
        raise UserError(f"{directory / HOST_FILE}: WORKLOAD.name is '{found.name}' but its "
                        f"directory is '{name}'; they must agree")
    config = _import_file(directory / CONFIG_FILE, f"versweep_workload_{name}_config")
    if not isinstance(getattr(config, "SCHEMA", None), dict):
        raise UserError(f"{directory / CONFIG_FILE}: defines no SCHEMA dict of "
                        "workers.config.Field (docs/workloads.md)")
    found = dataclasses.replace(found, source=directory)
    _loaded[directory] = found
    _config_modules[directory] = config
    return found


_config_modules: dict[Path, ModuleType] = {}


def resolve_config(workload: Workload, raw: dict[str, Any]) -> dict[str, Any]:
    """The worker's own resolution of a config (every default filled in), or BadConfig.

    The same code the worker runs: workers/workloads.py for shipped workloads, the
    directory's config.py (through the same resolver) for a user's own.
    """
    from workers.workloads import resolve_external_config, resolve_workload_config

    if workload.source is None:
        return resolve_workload_config(workload.name, raw)
    return resolve_external_config(_config_modules[workload.source], raw)


def memory_problem(workload: Workload, config: dict[str, Any]) -> str | None:
    """One line when a resolved config needs more memory than this machine has, by the
    worker's own estimate (workers/memory.py); None when it fits or has no estimate."""
    from workers import memory
    from workers.workloads import config_module

    module = (config_module(workload.name) if workload.source is None
              else _config_modules[workload.source])
    return memory.problem(module, config, _machine_memory(), "this machine has")


@functools.cache
def _machine_memory() -> int | None:
    return validate.machine_memory()


def schema(workload: Workload) -> dict[str, Any]:
    """Every config key the workload takes (workers.config.Field), the common ones included."""
    from workers.workloads import COMMON_SCHEMA, schema_for

    if workload.source is None:
        return schema_for(workload.name)
    return {**COMMON_SCHEMA, **_config_modules[workload.source].SCHEMA}

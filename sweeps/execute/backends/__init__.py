"""Backends by name: where a trial's worker runs.

    get_backend("local")           -> LocalBackend(): the host's own interpreter
    get_backend("docker", sweep)   -> DockerBackend: one container per trial, of the
                                      sweep's matrix images
    get_backend("venv", sweep)     -> VenvBackend: one isolated environment per matrix
                                      entry (its torch, a Python with a wheel for it)

One explicit dict, so a typo gets a message that lists the valid names.
"""

from __future__ import annotations

import difflib

from sweeps.errors import UserError
from sweeps.execute.backends._base import Backend, ProcessHandle, WorkerHandle
from sweeps.execute.backends.docker import DockerBackend
from sweeps.execute.backends.local import LocalBackend
from sweeps.execute.backends.venv import VenvBackend
from sweeps.grid.spec import Sweep

# name -> backend class
BACKENDS: dict[str, type[Backend]] = {
    "local": LocalBackend,
    "docker": DockerBackend,
    "venv": VenvBackend,
}


def get_backend(name: str, sweep: Sweep | None = None) -> Backend:
    """The backend called ``name`` (set up for ``sweep``), or a UserError listing the names."""
    if name not in BACKENDS:
        near = difflib.get_close_matches(name, list(BACKENDS), n=1)
        hint = f"did you mean '{near[0]}'? " if near else ""
        raise UserError(f"backend '{name}' is unknown; {hint}"
                        f"valid backends: {', '.join(sorted(BACKENDS))}")
    if name == "docker":
        return DockerBackend.for_sweep(sweep) if sweep is not None else DockerBackend()
    if name == "venv":
        return VenvBackend.for_sweep(sweep) if sweep is not None else VenvBackend()
    return LocalBackend()


__all__ = ["BACKENDS", "Backend", "DockerBackend", "LocalBackend", "ProcessHandle",
           "VenvBackend", "WorkerHandle", "get_backend"]

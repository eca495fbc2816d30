"""Backends by name: where a trial's worker runs (`local` now, `docker` with the images issue).

    get_backend("local") -> LocalBackend()

One explicit dict, so a typo gets a message that lists the valid names.
"""

from __future__ import annotations

import difflib

from ..errors import UserError
from ._base import Backend, WorkerHandle
from .local import LocalBackend

# name -> backend class; None: known, but not available in this version.
BACKENDS: dict[str, type[Backend] | None] = {
    "local": LocalBackend,
    "docker": None,
}


def get_backend(name: str) -> Backend:
    """The backend called ``name``, or a UserError that lists the valid names."""
    if name not in BACKENDS:
        near = difflib.get_close_matches(name, list(BACKENDS), n=1)
        hint = f"did you mean '{near[0]}'? " if near else ""
        raise UserError(f"backend '{name}' is unknown; {hint}"
                        f"valid backends: {', '.join(sorted(BACKENDS))}")
    backend_class = BACKENDS[name]
    if backend_class is None:
        raise UserError(f"the {name} backend arrives with the images issue and is not "
                        "available yet; use --backend local")
    return backend_class()


__all__ = ["BACKENDS", "Backend", "LocalBackend", "WorkerHandle", "get_backend"]

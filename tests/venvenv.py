"""The venv backend's environment for the tests: torch 2.13.0 on Python 3.11, built once per run.

``venv_store`` is a real EnvStore in a temporary directory of the test run, with the
environment of the matrix entries ``torch-2.13.0-cpu`` and ``torch-2.13.0-cu130`` (they
differ only in CUDA build, so they share ``torch-2.13.0-py3.11``) built in it by uv, as a
trial would build it. On a fresh machine uv downloads torch 2.13.0 and its CUDA libraries
from PyPI once (about 3.5 GB, tens of seconds here); after that the build is hard links
from uv's cache plus the ``env`` workload that verifies it (seconds). Where uv's cache lacks a
package and the index cannot be reached, the tests that need the environment are skipped
with one line (tests/needs.py, ``package-index``).
"""

from __future__ import annotations

import os
import shutil

import pytest
from needs import need

from sweeps.envs.store import MARKER, BuildError, EnvStore
from sweeps.execute.backends.venv import VenvBackend
from sweeps.grid.matrix import load_matrix
from sweeps.paths import MATRIX_PATH

# The CPU-only entry, and the CUDA entry that shares its environment.
VENV_IMAGE = "torch-2.13.0-cpu"
VENV_CUDA_IMAGE = "torch-2.13.0-cu130"
VENV_KEY = "torch-2.13.0-py3.11"


def build_or_skip(store: EnvStore, name: str = VENV_IMAGE):
    """Build the environment of matrix entry ``name`` in ``store``; return the Env."""
    plan = store.plan(load_matrix(MATRIX_PATH)[name])
    if isinstance(plan, str):
        if "cannot be reached" in plan:
            need("package-index")
        pytest.fail(f"no environment for {name} on this machine: {plan}")
    try:
        return store.ensure(plan)
    except BuildError as exc:
        if "cannot be reached" in str(exc):
            need("package-index")
        raise


def linked_copy(source: EnvStore, target: EnvStore, key: str = VENV_KEY) -> None:
    """``key``'s built environment of ``source`` put into ``target`` without a build: its
    files hard-linked (as uv links them from its cache), its marker a copy of its own, so
    that a test may rewrite the marker or delete files without touching ``source``'s."""
    origin, copy = source.path_of(key), target.path_of(key)
    copy.parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(origin, copy, symlinks=True, copy_function=os.link,
                    ignore=lambda directory, names: [MARKER] if directory == str(origin)
                    else [])
    shutil.copyfile(origin / MARKER, copy / MARKER)


@pytest.fixture(scope="session")
def venv_store(tmp_path_factory) -> EnvStore:
    """An EnvStore with torch-2.13.0-py3.11 built, shared by the whole test run."""
    store = EnvStore(tmp_path_factory.mktemp("envs"), budget="100g")
    build_or_skip(store)
    return store


def venv_backend(store: EnvStore, *names: str) -> VenvBackend:
    """The venv backend with these matrix entries (default: the CPU-only one), on ``store``."""
    matrix = load_matrix(MATRIX_PATH)
    return VenvBackend({name: matrix[name] for name in names or (VENV_IMAGE,)}, store=store)

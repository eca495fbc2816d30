"""The Python interpreters of this machine that an environment can be built from.

    interpreters = find_interpreters()          # newest first, one per minor version
    [(i.minor, i.path) for i in interpreters]   # [("3.13", "/root/.pyenv/versions/..."), ...]

Looked for, in this order: ``$VERSWEEP_ENVS_PYTHONS`` (a ``:``-separated list of
interpreters; when set, only those are used), then every ``python3`` / ``python3.X`` on
``PATH`` (pyenv's shims are skipped: they fail outside the version pyenv has selected),
pyenv's ``$PYENV_ROOT/versions/*`` (default ``~/.pyenv``), the Pythons uv installed
(``uv python install``; uv's install directory, where ``uv python find`` looks), and conda
(``$CONDA_PREFIX``, the root of ``$CONDA_EXE`` and the usual ``~/miniconda3``-style roots,
with their ``envs/*``).

Each candidate is resolved to its real file (a virtual environment's ``bin/python`` is a
link to its base interpreter) and asked for its version in a child process: only CPython
3.6 or newer counts (the workers need 3.6; PyPI has no torch for PyPy). Of several
interpreters of one minor version the newest patch release is kept. Nothing here imports
torch, and nothing here needs the network.
"""

from __future__ import annotations

import glob
import os
import subprocess
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cache
from pathlib import Path

# A ``:``-separated list of interpreters: when set, the only ones environments are built from.
PYTHONS_VAR = "VERSWEEP_ENVS_PYTHONS"
# The oldest Python the workers run on (workers/ is Python 3.6-compatible).
OLDEST = (3, 6)
# Works on every Python from 2.7 on: the probe must not fail on the interpreters it rejects.
_PROBE = ("import sys, platform; sys.stdout.write('%s %d %d %d\\n' % ("
          "platform.python_implementation(), sys.version_info[0], sys.version_info[1], "
          "sys.version_info[2]))")
_PROBE_TIMEOUT_S = 20
# Roots of conda installations, when no conda is active.
_CONDA_ROOTS = ("~/miniconda3", "~/anaconda3", "~/miniforge3", "~/mambaforge", "/opt/conda")


@dataclass(frozen=True)
class Interpreter:
    """One CPython of this machine: its real path, its version, where it was found."""

    path: str
    version: tuple[int, int, int]
    source: str  # "VERSWEEP_ENVS_PYTHONS", "PATH", "pyenv", "uv", "conda"

    @property
    def minor(self) -> str:
        """"3.11"."""
        return f"{self.version[0]}.{self.version[1]}"

    @property
    def full(self) -> str:
        """"3.11.7"."""
        return ".".join(map(str, self.version))

    @property
    def cp_tag(self) -> str:
        """The wheel tag of its ABI's version: "cp311"."""
        return f"cp{self.version[0]}{self.version[1]}"


def minor_of(version: str) -> str:
    """"3.11" of "3.11", "3.11.7" or "3.11.7+"; the text itself if it is no version."""
    parts = version.strip().split(".")
    if len(parts) >= 2 and parts[0].isdigit() and parts[1].isdigit():
        return f"{int(parts[0])}.{int(parts[1])}"
    return version.strip()


def _candidates() -> list[tuple[str, str]]:
    """(path, source) of every interpreter worth asking, in the order they are preferred."""
    listed = os.environ.get(PYTHONS_VAR)
    if listed is not None:
        found = []
        for item in filter(None, listed.split(os.pathsep)):
            path = item if os.sep in item else _which(item)
            found.append((path or item, PYTHONS_VAR))
        return found

    found = []
    names = ["python3"] + [f"python3.{minor}" for minor in range(OLDEST[1], 30)]
    for directory in os.environ.get("PATH", "").split(os.pathsep):
        if not directory or "shims" in Path(directory).parts:
            continue  # pyenv / asdf shims: they fail for every version not selected
        for name in names:
            path = os.path.join(directory, name)
            if os.path.isfile(path) and os.access(path, os.X_OK):
                found.append((path, "PATH"))

    pyenv_root = os.environ.get("PYENV_ROOT") or os.path.expanduser("~/.pyenv")
    for path in sorted(glob.glob(os.path.join(pyenv_root, "versions", "*", "bin", "python3"))):
        found.append((path, "pyenv"))

    uv_dir = os.environ.get("UV_PYTHON_INSTALL_DIR") or os.path.join(
        os.environ.get("XDG_DATA_HOME") or os.path.expanduser("~/.local/share"), "uv", "python")
    for path in sorted(glob.glob(os.path.join(uv_dir, "*", "bin", "python3"))):
        found.append((path, "uv"))

    roots = [os.environ.get("CONDA_PREFIX", "")]
    if os.environ.get("CONDA_EXE"):
        roots.append(str(Path(os.environ["CONDA_EXE"]).resolve().parent.parent))
    roots += [os.path.expanduser(root) for root in _CONDA_ROOTS]
    for root in filter(None, roots):
        for path in [os.path.join(root, "bin", "python3"),
                     *sorted(glob.glob(os.path.join(root, "envs", "*", "bin", "python3")))]:
            if os.path.isfile(path):
                found.append((path, "conda"))
    return found


def _which(name: str) -> str | None:
    for directory in os.environ.get("PATH", "").split(os.pathsep):
        if directory and "shims" not in Path(directory).parts:
            path = os.path.join(directory, name)
            if os.path.isfile(path) and os.access(path, os.X_OK):
                return path
    return None


def probe(path: str) -> tuple[int, int, int] | None:
    """The version of the CPython at ``path``, or None if it is no (runnable) CPython."""
    try:
        proc = subprocess.run([path, "-c", _PROBE], capture_output=True, text=True,
                              timeout=_PROBE_TIMEOUT_S, env=_clean_env())
    except (OSError, subprocess.TimeoutExpired):
        return None
    words = proc.stdout.split()
    if proc.returncode != 0 or len(words) != 4 or words[0] != "CPython":
        return None
    try:
        return int(words[1]), int(words[2]), int(words[3])
    except ValueError:
        return None


def _clean_env() -> dict[str, str]:
    """The environment an interpreter is asked in: no PYTHONPATH/PYTHONHOME of the host."""
    env = dict(os.environ)
    for name in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP"):
        env.pop(name, None)
    return env


def find_interpreters() -> list[Interpreter]:
    """This machine's usable CPythons (>= 3.6), newest minor version first, one per minor.

    Cached for the life of the process per value of the variables that change the answer.
    """
    return list(_find(os.environ.get(PYTHONS_VAR), os.environ.get("PATH", ""),
                      os.environ.get("PYENV_ROOT"), os.environ.get("CONDA_PREFIX")))


@cache
def _find(listed: str | None, path: str, pyenv_root: str | None,
          conda_prefix: str | None) -> tuple[Interpreter, ...]:
    seen: dict[str, str] = {}
    for candidate, source in _candidates():
        real = os.path.realpath(candidate)
        seen.setdefault(real, source)
    with ThreadPoolExecutor(max_workers=8) as pool:
        versions = dict(zip(seen, pool.map(probe, list(seen)), strict=True))
    best: dict[tuple[int, int], Interpreter] = {}
    for real, source in seen.items():  # in the order of preference
        version = versions[real]
        if version is None or version[:2] < OLDEST:
            continue
        kept = best.get(version[:2])
        if kept is None or version > kept.version:
            best[version[:2]] = Interpreter(real, version, source)
    return tuple(best[minor] for minor in sorted(best, reverse=True))


def forget() -> None:
    """Look again next time (after installing an interpreter, or in tests)."""
    _find.cache_clear()

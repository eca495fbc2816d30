"""What a test needs of this machine beyond the Python packages, said in one line.

Most parts the tests need they start themselves: a private local Ray, a loopback
multi-node Ray cluster (tests/loopback_cluster.py, `ray start` from this environment),
an MLflow tracking server (tests/sweeping.py, `mlflow server` from this environment) and
a Docker registry (tests/dockerenv.py, Debian's `docker-registry` binary). What they
cannot start is a part of the machine: the Docker engine, Chromium, PostgreSQL's server
binaries (tests/postgres.py starts a private cluster from them), the programs
the docker tests build their image with, and the package index the venv backend's
environments come from. For those, a test asks::

    need("docker")            # in a test or fixture
    @pytest.mark.needs("chromium")

Where the part is missing, the test is skipped with one line naming it and how to get
it, unless the part's ``VERSWEEP_REQUIRE_*`` variable is 1: then it fails, because CI
(.ci/run, which installs and starts every part) must never pass by skipping. The header
of every pytest run lists what is missing, so a skip is never a surprise.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest


@dataclass(frozen=True)
class Need:
    """A part of the machine some tests need."""

    what: str  # "the Docker engine"
    how: str  # how to get it, one line
    require_env: str  # VERSWEEP_REQUIRE_<...>=1 turns a skip into a failure
    probe: Callable[[], str | None]  # why it is not usable here, or None


def tool(name: str) -> str | None:
    """A console script of this Python's environment (even if not activated), else on PATH."""
    beside = Path(sys.executable).with_name(name)
    if beside.exists():
        return str(beside)
    return shutil.which(name)


def _docker_engine() -> str | None:
    try:
        import docker

        docker.from_env(timeout=10).ping()
    except Exception as exc:  # any failure to reach the engine means: not here
        return f"no Docker engine answers ({type(exc).__name__}: {exc})"
    if shutil.which("docker") is None:
        return "the Docker engine answers but the docker client is not on PATH"
    return None


def _package_index() -> str | None:
    """The index uv installs from answers (the venv backend's builds and wheel checks)."""
    import urllib.error
    import urllib.request

    url = (os.environ.get("UV_DEFAULT_INDEX") or os.environ.get("UV_INDEX_URL")
           or "https://pypi.org/simple").rstrip("/") + "/torch/"
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=15):
            return None
    except (urllib.error.URLError, OSError) as exc:
        return f"{url} cannot be reached ({getattr(exc, 'reason', exc)})"


def _postgresql() -> str | None:
    from postgres import problem as postgres_problem  # tests/postgres.py

    return postgres_problem()


def _on_path(*names: str) -> Callable[[], str | None]:
    def probe() -> str | None:
        if any(shutil.which(name) for name in names):
            return None
        return f"{' / '.join(names)} is not on PATH"
    return probe


NEEDS: dict[str, Need] = {
    "docker": Need("the Docker engine",
                   "apt-get install docker.io, then start dockerd (as .ci/run does)",
                   "VERSWEEP_REQUIRE_DOCKER", _docker_engine),
    "debootstrap": Need("debootstrap (the tests' base image is made with it)",
                        "apt-get install debootstrap", "VERSWEEP_REQUIRE_DOCKER",
                        _on_path("debootstrap")),
    "docker-registry": Need("a Docker registry binary (images/build.py push / pull)",
                            "apt-get install docker-registry", "VERSWEEP_REQUIRE_DOCKER",
                            _on_path("docker-registry")),
    "package-index": Need("the package index (PyPI, or UV_DEFAULT_INDEX) for the venv "
                          "backend's wheel checks and downloads beyond uv's cache",
                          "network access to pypi.org (or set UV_DEFAULT_INDEX to a mirror)",
                          "VERSWEEP_REQUIRE_INDEX", _package_index),
    "postgresql": Need("PostgreSQL (the server binaries: a private database the tests' "
                       "tracking server runs on, as a team's does)",
                       "apt-get install postgresql (as .ci/run does)",
                       "VERSWEEP_REQUIRE_POSTGRES", _postgresql),
    "chromium": Need("Chromium (the HTML report, headless)", "apt-get install chromium",
                     "VERSWEEP_REQUIRE_CHROMIUM",
                     _on_path("chromium", "chromium-browser", "google-chrome")),
}


@cache
def problem(name: str) -> str | None:
    """Why the part ``name`` is not usable here, or None (probed once per test run)."""
    return NEEDS[name].probe()


def need(name: str) -> None:
    """Return if ``name`` is here; else skip, or fail where its VERSWEEP_REQUIRE_* is 1."""
    found = problem(name)
    if found is None:
        return
    part = NEEDS[name]
    line = f"needs {part.what}: {found}; {part.how}"
    if os.environ.get(part.require_env) == "1":
        pytest.fail(f"{line} ({part.require_env}=1: required here)", pytrace=False)
    pytest.skip(line)


def missing_parts() -> list[str]:
    """One line per missing part, for the header of the test run."""
    lines = []
    for name, part in NEEDS.items():
        found = problem(name)
        if found is not None:
            required = os.environ.get(part.require_env) == "1"
            verdict = "FAIL (required)" if required else "skip"
            lines.append(f"  {name}: {found} -> its tests {verdict}; {part.how}")
    return lines

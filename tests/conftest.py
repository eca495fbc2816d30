"""Shared test fixtures: run the worker as a user (a child process) and read its events."""
import json
import os
import subprocess
import sys
from pathlib import Path

import durations
import pytest
from dockerenv import docker_image, registry  # noqa: F401  (the tests' own image and registry)
from needs import missing_parts, need
from postgres import postgres_uri  # noqa: F401  (a private PostgreSQL, started once)
from sweeping import ray_tmp  # noqa: F401  (a fixture for every sweep test)
from venvenv import venv_store  # noqa: F401  (the venv backend's environment, built once)

ROOT = Path(__file__).resolve().parent.parent


def pytest_report_header(config) -> list[str]:
    """Say up front which parts of the machine are missing, and what that does to the run."""
    missing = missing_parts()
    if not missing:
        return ["versweep: every part the tests need is here (Docker engine, Chromium, ...)"]
    return ["versweep: missing parts of this machine (tests/needs.py):", *missing]


def _module_fixture(item) -> bool:
    """Whether the test uses a fixture made once per module (its processes must share it)."""
    info = getattr(item, "_fixtureinfo", None)
    definitions = getattr(info, "name2fixturedefs", {}) or {}
    return any(d.scope in ("module", "class", "package") for defs in definitions.values()
               for d in defs)


# Modules whose tests share nothing outside their own tmp_path (each starts its own Ray,
# tracking server and store, on free ports): their tests may run at the same time in
# different processes. Every other module runs in one process, its tests one after another
# as they were written (some share an image tag, a registry or a module-scoped fixture).
# test_venv's tests share the run's built environment (venv_store), which each process
# builds once for itself.
PARALLEL_MODULES = frozenset({"tests/test_run.py", "tests/test_security.py",
                              "tests/test_faults.py", "tests/test_workloads.py",
                              "tests/test_resume.py", "tests/test_venv.py"})


# tryfirst: pytest-xdist's own hook turns the xdist_group marks into the "@group" suffix of
# each test's id, by which --dist loadgroup keeps a group in one process; run after it,
# the marks added here would group nothing.
@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(session, config, items) -> None:
    """Order and group the tests for the suite's several processes (pytest-xdist).

    A module runs in one process, as one ``xdist_group``, unless it is one of
    PARALLEL_MODULES and the test uses no module-scoped fixture; such a test goes to
    whichever process is free. The longest work goes first (tests/durations.py says why
    and how the seconds are recorded), so that no long test starts last. Only the order
    and the process change, never what runs.
    """
    recorded = durations.load()
    groups: dict[str, list] = {}
    for item in items:
        key = item.nodeid
        module = item.nodeid.split("::")[0]
        if module not in PARALLEL_MODULES or _module_fixture(item):
            key = "module:" + module
            item.add_marker(pytest.mark.xdist_group(name=key))
        groups.setdefault(key, []).append(item)

    def seconds(members: list) -> float:
        return sum(recorded.get(i.nodeid, durations.DEFAULT_S) for i in members)

    ordered = sorted(groups.values(), key=seconds, reverse=True)  # stable: ties keep order
    items[:] = [item for members in ordered for item in members]


def pytest_runtest_setup(item) -> None:
    """``@pytest.mark.needs("docker", ...)``: skip, or fail where required, without them."""
    for mark in item.iter_markers("needs"):
        for name in mark.args:
            need(name)


class WorkerRun:
    """A finished ``python -m workers`` process: exit code, events, raw output."""

    def __init__(self, proc: subprocess.CompletedProcess):
        self.returncode = proc.returncode
        self.stdout = proc.stdout
        self.stderr = proc.stderr
        self.events = [json.loads(line) for line in proc.stdout.splitlines()
                       if line.startswith("{")]

    def of(self, kind: str) -> list[dict]:
        return [e for e in self.events if e["event"] == kind]

    def one(self, kind: str) -> dict:
        found = self.of(kind)
        assert len(found) == 1, f"expected one {kind} event, got {len(found)}: {self.stdout}"
        return found[0]

    @property
    def kinds(self) -> list[str]:
        return [e["event"] for e in self.events]


def run_worker(workload: str, config=None, *, raw_config: str | None = None,
               timeout: float = 300, env: dict | None = None) -> WorkerRun:
    """Run ``python -m workers`` from the repository root as the backends do."""
    args = [sys.executable, "-m", "workers", workload]
    if raw_config is not None:
        args += ["--config", raw_config]
    elif config is not None:
        args += ["--config", json.dumps(config)]
    full_env = dict(os.environ)
    full_env.update(env or {})
    proc = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          env=full_env)
    return WorkerRun(proc)


@pytest.fixture
def worker():
    """The ``run_worker`` function, as a fixture."""
    return run_worker

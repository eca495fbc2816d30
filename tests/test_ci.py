"""The install contract: uv.lock matches pyproject.toml, and .ci/upstream catches breakage.

.ci/run installs from the lock (`uv sync --locked`); .ci/upstream resolves the newest
releases without it. Both are run for real here: uv's cache is warm after the sync, so
the upstream runs below take seconds (they resolve against the package index).
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from needs import tool

ROOT = Path(__file__).resolve().parent.parent
UPSTREAM = ROOT / ".ci" / "upstream"


def upstream_module():
    loader = importlib.machinery.SourceFileLoader("ci_upstream", str(UPSTREAM))
    spec = importlib.util.spec_from_loader("ci_upstream", loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


def uv() -> str:
    found = tool("uv")
    if found is None:
        pytest.fail("uv is not installed; it is a test dependency (uv sync --extra test)")
    return found


def test_the_lock_matches_pyproject():
    done = subprocess.run([uv(), "lock", "--check", "--offline"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, ("uv.lock is out of date with pyproject.toml; run `uv lock`:\n"
                                  + done.stderr[-2000:])


def test_every_direct_requirement_has_an_upper_bound_and_the_lock_satisfies_it():
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    project = pyproject["project"]
    direct = project["dependencies"] + project["optional-dependencies"]["test"]
    # pip's major number is the year: no bound there (its CLI is what the tests use).
    unbounded = [r for r in direct if "<" not in r and "==" not in r and not r.startswith("pip")]
    assert unbounded == [], "give these an upper bound at their next major release"
    locked = upstream_module().locked_versions(ROOT / "uv.lock")
    assert set(upstream_module().direct_names(pyproject)) <= set(locked)


@pytest.mark.parametrize("requirement, lifted", [
    ("pytest>=8,<10", "pytest>=8"),
    ("ray[tune,default]>=2.40,<3", "ray[tune,default]>=2.40"),
    ("numpy>=1.24,<=2.9", "numpy>=1.24"),
    ("foo~=1.4", "foo"),
    ("bar==1.2.3", "bar==1.2.3"),  # a pin is not a bound: kept
    ("baz>=1,<2; python_version < '3.12'", "baz>=1; python_version < '3.12'"),
])
def test_upstream_lifts_upper_bounds_only(requirement, lifted):
    module = upstream_module()
    pyproject = {"project": {"dependencies": [requirement],
                             "optional-dependencies": {"test": []}}}
    assert module.requirements(pyproject, keep_bounds=False) == [lifted]
    assert module.requirements(pyproject, keep_bounds=True) == [requirement]


def run_upstream(out: Path, *pytest_args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(UPSTREAM), "--out", str(out), "--",
                           "-p", "no:cacheprovider", *pytest_args],
                          capture_output=True, text=True, timeout=900,
                          # UV_NO_CONFIG: not pyproject's compile-bytecode, which would
                          # compile torch, Ray and MLflow for a run of one small test file.
                          env={**os.environ, "UV_NO_CONFIG": "1",
                               "PATH": f"{Path(uv()).parent}:{os.environ['PATH']}"})


def test_upstream_passes_where_the_suite_passes_and_names_what_breaks(tmp_path):
    good = run_upstream(tmp_path / "good", "tests/test_compare.py")
    assert good.returncode == 0, good.stdout[-2000:] + good.stderr[-2000:]
    report = (tmp_path / "good" / "report.md").read_text()
    assert "- verdict: the suite passes" in report
    assert "## Versions that differ from uv.lock" in report and "    pytest>=8" in report

    # A test that breaks on "the new release": the job fails and the report names it.
    broken = tmp_path / "test_new_release.py"
    broken.write_text("def test_api_moved():\n    assert 'approx' == 'moved', 'API moved'\n")
    bad = run_upstream(tmp_path / "bad", str(broken))
    assert bad.returncode == 1, bad.stdout[-2000:] + bad.stderr[-2000:]
    report = (tmp_path / "bad" / "report.md").read_text()
    assert "- verdict: pytest exited with 1" in report
    assert "test_api_moved: AssertionError: API moved" in report


def test_upstream_refuses_an_out_it_cannot_write(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    done = run_upstream(blocker / "out", "tests/test_compare.py")
    assert done.returncode == 2 and done.stderr.startswith(".ci/upstream: error: --out ")
    assert "Traceback" not in done.stderr


def test_the_suites_processes_keep_a_module_in_one_process_and_share_a_parallel_one():
    """tests/conftest.py's layout, as the README's test command really runs it (-n 3
    --dist loadgroup from pyproject.toml): a module runs in one process, the tests of a
    module of PARALLEL_MODULES go to several. Checked on quick tests of two modules."""
    from conftest import PARALLEL_MODULES

    grouped = "tests/test_cli.py"
    spread = "tests/test_workloads.py"
    assert grouped not in PARALLEL_MODULES and spread in PARALLEL_MODULES
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-v", "-n", "3",
         "--dist", "loadgroup", grouped,
         f"{spread}::test_the_plugin_names_its_trials_and_keys_from_its_own_config"],
        cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:]
    workers: dict[str, set[str]] = {}
    for line in done.stdout.splitlines():
        if line.startswith("[gw") and " PASSED " in line:
            module = line.split(" PASSED ")[1].split("::")[0]
            workers.setdefault(module, set()).add(line.split("]")[0])
    assert len(workers[grouped]) == 1, workers  # one process ran all of test_cli
    assert len(workers[spread]) > 1, workers  # the four went to several processes

"""The host side's own layering: each service is reached from the few modules named for it."""
import ast

import pytest
from conftest import ROOT


def imported_top_modules(path):
    """Top-level module names a file imports, at any depth (functions included)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("library, only_in", [
    # Tune around trials; Ray Jobs for schedules; one pinned task per node for pre-pulls.
    ("ray", ["sweeps/cluster/prepull.py", "sweeps/jobs.py", "sweeps/tune.py"]),
    # Every MLflow write and read of sweeps/ goes through records.py (analysis/ reads the
    # store through it, or straight from a SQLite store's tables, read-only).
    ("mlflow", ["sweeps/records.py"]),
    # Searches (tune.py); a search's study and its parameter importances for the report.
    ("optuna", ["analysis/load.py", "analysis/report.py", "sweeps/tune.py"]),
    # The Docker engine: images, the backend and its reaper, and pre-pulls on a cluster.
    ("docker", ["sweeps/backends/docker.py", "sweeps/backends/reaper.py",
                "sweeps/cluster/prepull.py", "sweeps/images.py"]),
    ("matplotlib", ["analysis/plots.py"]),
])
def test_each_service_is_reached_from_the_modules_named_for_it(library, only_in):
    importers = sorted(
        str(path.relative_to(ROOT))
        for folder in ("sweeps", "analysis")
        for path in (ROOT / folder).rglob("*.py")
        if library in imported_top_modules(path))
    assert importers == sorted(only_in)


def test_the_checker_sees_imports_inside_functions(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text("def f():\n    import ray.tune as t\n    from mlflow import MlflowClient\n")
    assert imported_top_modules(sample) == {"ray", "mlflow"}

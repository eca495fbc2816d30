"""The host side's own layering: one module talks to Ray, one to MLflow (STYLE.md)."""
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
    ("ray", "sweeps/tune.py"),
    ("mlflow", "sweeps/records.py"),
    ("optuna", "sweeps/tune.py"),
])
def test_one_host_module_talks_to_each_service(library, only_in):
    importers = sorted(
        str(path.relative_to(ROOT))
        for folder in ("sweeps", "analysis")
        for path in (ROOT / folder).rglob("*.py")
        if library in imported_top_modules(path))
    assert importers == [only_in]


def test_the_checker_sees_imports_inside_functions(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text("def f():\n    import ray.tune as t\n    from mlflow import MlflowClient\n")
    assert imported_top_modules(sample) == {"ray", "mlflow"}

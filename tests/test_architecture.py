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
    # Tune around trials; Ray Jobs for schedules; one pinned task per node for pre-pulls and
    # for building the venv backend's environments ahead.
    ("ray", ["sweeps/cluster/envbuild.py", "sweeps/cluster/jobs.py", "sweeps/cluster/prepull.py",
             "sweeps/execute/tune.py"]),
    # Every MLflow write and read of sweeps/ goes through records/store.py (analysis/ reads
    # the store through it, or straight from a SQLite store's tables, read-only).
    ("mlflow", ["sweeps/records/store.py"]),
    # Searches (tune.py); a search's study, its parameter importances and Optuna's own
    # figures of it for the report.
    ("optuna", ["analysis/load.py", "analysis/search_figures.py", "analysis/sections.py",
                "sweeps/execute/tune.py"]),
    # The Docker engine: images, the backend and its reaper, and pre-pulls on a cluster.
    ("docker", ["sweeps/cluster/prepull.py", "sweeps/execute/backends/docker.py",
                "sweeps/execute/backends/reaper.py", "sweeps/images/build.py",
                "sweeps/images/docker.py"]),
    # The report's figures; a search's are Optuna's matplotlib plots, marked up.
    ("matplotlib", ["analysis/plots.py", "analysis/search_figures.py"]),
    # The change-point search of the report's series view.
    ("ruptures", ["analysis/series.py"]),
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


# The documented scripts: users' cron lines and cluster configs call them.
SCRIPTS = {"sweeps/run.py": "run", "sweeps/schedule.py": "schedule",
           "analysis/report.py": "report", "images/build.py": "images"}


def test_sys_path_is_handled_only_by_the_documented_scripts():
    handlers = sorted(
        str(path.relative_to(ROOT))
        for folder in ("sweeps", "analysis", "images", "workers")
        for path in (ROOT / folder).rglob("*.py")
        if "sys.path" in path.read_text())
    assert handlers == sorted(SCRIPTS)


@pytest.mark.parametrize("script, command", sorted(SCRIPTS.items()))
def test_each_script_is_a_thin_entry_point_into_the_cli(script, command):
    path = ROOT / script
    code = [line for line in path.read_text().split('"""', 2)[2].splitlines()
            if line.strip() and not line.strip().startswith("#")]
    assert len(code) <= 12, f"{script} holds code of its own; it belongs in the package"
    assert imported_top_modules(path) == {"sys", "pathlib", "sweeps"}
    assert f'main(sys.argv[1:], script="{command}")' in path.read_text()


def test_every_stage_is_a_package_of_its_own():
    """The tree shows the flow: grid -> plan -> execute (backends) -> records -> report."""
    for stage in ("workloads", "grid", "plan", "execute", "execute/backends", "records",
                  "cluster", "images"):
        assert (ROOT / "sweeps" / stage / "__init__.py").is_file(), stage
    top = sorted(p.name for p in (ROOT / "sweeps").glob("*.py"))
    assert top == ["__init__.py", "cli.py", "columns.py", "datasets.py", "errors.py",
                   "paths.py", "progress.py", "run.py", "schedule.py", "status.py", "validate.py",
                   "versions.py"]


def test_columns_are_printed_by_one_function():
    """Every command's table goes through sweeps/columns.py: no hand-made column widths."""
    made = sorted(f"{path.relative_to(ROOT)}" for folder in ("sweeps", "analysis")
                  for path in (ROOT / folder).rglob("*.py")
                  if path.name != "columns.py" and ".ljust(" in path.read_text())
    assert made == []


def test_format_columns_aligns_every_column_to_its_widest_cell():
    from sweeps.columns import format_columns

    text = format_columns(["name", "size", "note"],
                          [["torch-2.3.1", "1.9 GB", ""], ["t", "12 MB", "in use"]],
                          right={"size"})
    assert text.splitlines() == ["name           size  note",
                                 "torch-2.3.1  1.9 GB",
                                 "t             12 MB  in use"]
    assert format_columns(["a", "b"], []) == "a  b"
    with pytest.raises(ValueError, match="a row has 1 cells for 2 columns"):
        format_columns(["a", "b"], [["x"]])


def test_a_backend_must_implement_the_contract():
    from sweeps.execute.backends import BACKENDS
    from sweeps.execute.backends._base import Backend

    class Half(Backend):
        name = "half"

        def preflight(self, sweep, *, on_this_node=True):
            return None

    with pytest.raises(TypeError, match="abstract method.* start"):
        Half()
    assert set(BACKENDS) == {"local", "docker", "venv"}


def test_the_records_are_read_and_written_only_in_sweeps_records():
    """One owner of the MLflow layout: no SQL, no MLflow search, tag or log call elsewhere."""
    calls = ("SELECT ", "search_runs(", "set_tag(", "log_metric", "log_batch(", "create_run(")
    found = sorted(
        f"{path.relative_to(ROOT)}: {call}"
        for folder in ("sweeps", "analysis")
        for path in (ROOT / folder).rglob("*.py")
        if "records" not in path.relative_to(ROOT).parts
        for call in calls if call in path.read_text())
    assert found == []


def test_host_modules_import_no_circle():
    """No two host modules import each other, directly or around a loop (the dispatching
    CLI imports commands; a command needing something of the CLI's gets it from a third
    module, e.g. sweeps/errors.py)."""
    modules = {}
    for folder in ("sweeps", "analysis"):
        for path in (ROOT / folder).rglob("*.py"):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            modules[".".join(parts)] = path
    edges = {}
    for name, path in modules.items():
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                continue
            found.update(t for t in targets if t in modules and t != name)
        edges[name] = found

    def loop_from(start):
        stack, seen = [(start, [start])], set()
        while stack:
            node, path = stack.pop()
            for nxt in edges[node]:
                if nxt == start:
                    return path + [start]
                if nxt not in seen:
                    seen.add(nxt)
                    stack.append((nxt, path + [nxt]))
        return None

    loops = {" -> ".join(found) for name in modules if (found := loop_from(name))}
    assert loops == set()

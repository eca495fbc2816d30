"""``python analysis/report.py``, run as a user runs it, over a real MLflow store.

The store is filled through sweeps.records.store.SweepRecords exactly as a sweep fills it
(tests/analysis_store.py: four images, every trial status, a Ctrl-C'd and a superseded
run, an Optuna search with its study). The report's figures are checked against
analysis/stats.py computed from the per-batch times that were written, and against
what the data were made to show (a 25% faster image, a 20% slower one, a 2% change
inside the noise, a large change drowned in noise, a perplexity that differs).
"""

from __future__ import annotations

import csv
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from analysis_store import (
    BASE,
    DIVERGED_MESSAGE,
    FAILED_MESSAGE,
    FUSED_REASON,
    GPU,
    HPARAMS,
    IMAGE_ENV,
    IMAGES,
    INTERRUPTED,
    MID,
    NEW,
    OLD,
    OLD_REASON,
    OTHER_GPU,
    SPEED,
    UNFINISHED,
    VERSIONS,
    FilledStore,
    _env_event,
    _spec,
    fill_store,
    write_interrupted_sweep,
)
from mlflow import MlflowClient

from analysis import command, sections
from analysis.reference import reference_rows
from analysis.stats import compare, median_ci, parity
from sweeps.grid.spec import Sweep
from sweeps.records.store import SweepRecords

ROOT = Path(__file__).resolve().parent.parent

# One filled store per test session, shared by the report tests (filling takes seconds).
_FILLED: dict[Path, FilledStore] = {}


def filled_store_once(tmp_path_factory) -> FilledStore:
    """The analysis test store of this session, filled on first use."""
    base = tmp_path_factory.getbasetemp()
    if base not in _FILLED:
        _FILLED[base] = fill_store(tmp_path_factory.mktemp("analysis-store"))
    return _FILLED[base]


def run_report_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """``python analysis/report.py ARGS`` from ``cwd``, as a user runs it."""
    return subprocess.run([sys.executable, str(ROOT / "analysis" / "report.py"), *args],
                          cwd=cwd, capture_output=True, text=True, timeout=300)


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> FilledStore:
    return filled_store_once(tmp_path_factory)


@pytest.fixture(scope="module")
def versions_report(store, tmp_path_factory) -> Path:
    """The report of the newest "versions" sweep, written by the real command."""
    out = tmp_path_factory.mktemp("versions-report") / "report"
    proc = run_report_cli("--experiment", VERSIONS, "--tracking-uri", store.tracking_uri,
                          "--out", str(out), cwd=out.parent)
    assert proc.returncode == 0, proc.stderr
    assert str(out) in proc.stdout and store.versions.parent_run_id in proc.stdout
    return out


@pytest.fixture(scope="module")
def search_report(store, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("search-report") / "report"
    code = command.main(["--experiment", HPARAMS, "--tracking-uri", store.tracking_uri,
                        "--out", str(out), "--no-log"])
    assert code == 0
    return out


# --------------------------------------------------------------------------- files and artifacts


def test_report_writes_md_html_csv_and_logs_them_on_the_sweeps_parent_run(store,
                                                                          versions_report):
    out = versions_report
    for name in ("report.md", "report.html", "speed.csv", "reference.csv",
                 "language_model.csv", "did_not_run.csv", "provenance.csv", "trials.csv"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    plots = sorted(p.name for p in (out / "plots").iterdir())
    assert "speed_bars_1x320-ce-long.png" in plots and "learning_curves_ptb_lm_small.png" in plots
    markdown = (out / "report.md").read_text()
    for png in plots:  # every figure the Markdown links exists, and every file is linked
        assert f"](plots/{png})" in markdown
    assert (out / "plots" / plots[0]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    client = MlflowClient(store.tracking_uri)
    parent = store.versions.parent_run_id
    logged = {f.path for f in client.list_artifacts(parent, "report")}
    assert {"report/report.md", "report/report.html", "report/speed.csv",
            "report/did_not_run.csv", "report/plots"} <= logged
    logged_plots = {Path(f.path).name for f in client.list_artifacts(parent, "report/plots")}
    assert logged_plots == set(plots)
    # Logged, not only listed: the artifact is the file that was written.
    copy = client.download_artifacts(parent, "report/report.md", str(out.parent))
    assert Path(copy).read_text() == markdown


def test_a_local_store_is_reported_and_logged_without_importing_mlflow(store, tmp_path):
    """A SQLite store with its artifacts on this machine: read from its tables, the report
    logged by copying into the run's artifact folder. Importing mlflow alone costs a
    report about a second (docs/performance.md)."""
    code = ("import sys; from analysis.command import main; "
            f"code = main(['--experiment', {VERSIONS!r}, '--tracking-uri', "
            f"{store.tracking_uri!r}, '--out', {str(tmp_path / 'report')!r}]); "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'mlflow', 'sqlalchemy'})); "
            "sys.exit(code)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "[]"
    client = MlflowClient(store.tracking_uri)
    copy = client.download_artifacts(store.versions.parent_run_id, "report/report.md",
                                     str(tmp_path))
    assert Path(copy).read_text() == (tmp_path / "report" / "report.md").read_text()


def test_a_report_reads_a_sqlite_store_in_bulk_however_many_runs(store, tmp_path, monkeypatch):
    """The runs, their tags, params and metrics, and the learning curves' histories come in
    a few queries for the whole report, not one per run: the same number for every sweep of
    the experiment together as for the newest alone (samples are files, read directly)."""
    import sqlite3

    statements: list[str] = []
    connect = sqlite3.connect

    def traced(*args, **kwargs):
        connection = connect(*args, **kwargs)
        connection.set_trace_callback(statements.append)
        return connection

    monkeypatch.setattr(sqlite3, "connect", traced)
    counts = []
    for which in (["--all-sweeps"], []):
        statements.clear()
        assert command.main(["--experiment", VERSIONS, "--tracking-uri", store.tracking_uri,
                             "--out", str(tmp_path / "report"), "--no-log", *which]) == 0
        counts.append(len(statements))
        assert not [s for s in statements if "run_uuid = '" in s]  # one run's query
    assert counts[0] == counts[1] < 30


def test_the_worker_processes_change_nothing_in_the_report(store, tmp_path, monkeypatch):
    """Figures and per-variant statistics computed in the report's worker processes
    (analysis/pool.py) give the same files, byte for byte, as computed in the process."""
    import contextlib

    from analysis import pool

    def files(out: Path) -> dict[str, bytes]:
        return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*"))
                if p.is_file()}

    args = ["--experiment", VERSIONS, "--tracking-uri", store.tracking_uri, "--all-sweeps",
            "--no-log"]
    real = pool.report_pool
    used = []

    def two_workers(workers=None):  # as on a machine with two or more CPUs, whatever this has
        used.append(True)
        return real(2)

    monkeypatch.setattr(pool, "report_pool", two_workers)
    assert command.main([*args, "--out", str(tmp_path / "pooled")]) == 0
    assert used
    monkeypatch.setattr(pool, "report_pool", lambda workers=None: contextlib.nullcontext())
    assert command.main([*args, "--out", str(tmp_path / "inline")]) == 0
    pooled, inline = files(tmp_path / "pooled"), files(tmp_path / "inline")
    assert any(name.endswith(".png") for name in pooled)
    assert pooled == inline


def test_files_of_a_run_whose_artifacts_are_elsewhere_are_logged_through_mlflow(store,
                                                                                tmp_path):
    from sweeps.records.artifacts import log_files

    (tmp_path / "sub").mkdir()
    (tmp_path / "a.txt").write_text("a")
    (tmp_path / "sub" / "b.txt").write_text("b")
    parent = store.older_versions.parent_run_id
    # No artifact URI given (as for a remote store): MLflow finds where the run's go.
    log_files(store.tracking_uri, parent, "", tmp_path,
              [tmp_path / "a.txt", tmp_path / "sub" / "b.txt"], "logged-through-mlflow")
    client = MlflowClient(store.tracking_uri)
    found = {f.path for f in client.list_artifacts(parent, "logged-through-mlflow/sub")}
    assert found == {"logged-through-mlflow/sub/b.txt"}
    copy = client.download_artifacts(parent, "logged-through-mlflow/a.txt", str(tmp_path))
    assert Path(copy).read_text() == "a"
    with pytest.raises(ValueError, match="relative"):
        log_files(store.tracking_uri, parent, "", tmp_path, [tmp_path / "a.txt"], "../up")


def test_the_newest_sweep_by_default_and_an_older_one_with_sweep(store, versions_report,
                                                                 tmp_path):
    assert store.versions.parent_run_id in (versions_report / "report.md").read_text()
    older = store.older_versions.parent_run_id
    code = command.main(["--experiment", VERSIONS, "--tracking-uri", store.tracking_uri,
                        "--sweep", older[:10], "--out", str(tmp_path), "--no-log",
                        "--format", "csv"])
    assert code == 0
    assert not (tmp_path / "report.md").exists()  # only what --format asked for
    trials = read_csv(tmp_path / "trials.csv")
    assert [t["run_id"] for t in trials] == [store.older_versions.trials[0].run_id]


def test_writing_again_into_the_same_folder_leaves_no_stale_figures(store, versions_report,
                                                                     tmp_path):
    out = tmp_path / "report"
    shutil.copytree(versions_report, out)
    older = store.older_versions.parent_run_id
    assert command.main(["--experiment", VERSIONS, "--tracking-uri", store.tracking_uri,
                        "--sweep", older, "--out", str(out), "--no-log", "--format", "md"]) == 0
    linked = set(re.findall(r"\]\(plots/([^)]+)\)", (out / "report.md").read_text()))
    assert {p.name for p in (out / "plots").iterdir()} == linked
    assert "learning_curves_ptb_lm_small.png" not in linked  # the older sweep had no LM


def test_a_baseline_on_which_nothing_ran_is_said_not_hidden(store, tmp_path):
    assert command.main(["--experiment", VERSIONS, "--tracking-uri", store.tracking_uri,
                        "--baseline", OLD, "--out", str(tmp_path), "--no-log",
                        "--format", "csv,md"]) == 0
    markdown = (tmp_path / "report.md").read_text()
    assert f"> **Warning:** nothing finished on the baseline {OLD}" in markdown
    speed = read_csv(tmp_path / "speed.csv")
    assert {r["baseline"] for r in speed} == {OLD}
    assert {r["mark"] for r in speed} == {"n/a"}  # nothing to compare with, nothing invented


# --------------------------------------------------------------------------- speed figures


def test_speed_figures_are_the_statistics_of_the_written_samples(store, versions_report):
    rows = {(r["bench"], r["impl"], r["image"]): r
            for r in read_csv(versions_report / "speed.csv")}
    markdown = (versions_report / "report.md").read_text()
    checked = 0
    for (bench, impl, image), row in rows.items():
        assert row["baseline"] == BASE  # the oldest image on which something ran
        repeats = store.versions.speed_repeats(bench, impl, image)
        if not repeats:
            assert row["median_ms"] == "" and row["mark"] == "n/a"
            continue
        interval = median_ci(repeats)
        assert float(row["median_ms"]) == interval.estimate
        assert (float(row["ci_low_ms"]), float(row["ci_high_ms"])) == (interval.low,
                                                                        interval.high)
        assert int(row["n_repeats"]) == len(repeats)
        assert int(row["n_samples"]) == sum(len(r) for r in repeats)
        torch = IMAGE_ENV[image]["torch"]
        if image == BASE:
            assert row["mark"] == "baseline"
            line = f"| {image} | {torch} | {sections.format_interval(interval)} | 1 (baseline) |"
        else:
            comparison = compare(store.versions.speed_repeats(bench, impl, BASE), repeats)
            assert float(row["ratio"]) == comparison.ratio
            assert (float(row["ratio_low"]), float(row["ratio_high"])) == (comparison.low,
                                                                            comparison.high)
            assert row["mark"] == comparison.mark
            line = (f"| {image} | {torch} | {sections.format_interval(interval)} | "
                    f"{sections.format_ratio(comparison)} | "
                    f"{sections.format_mark(comparison.mark)} |")
        assert line in markdown, line
        checked += 1
    assert checked == 10  # 4 on the baseline, 4 on torch-2.0.1, 2 on torch-2.13.0


def test_marks_say_what_the_data_were_made_to_show(versions_report):
    marks = {(r["bench"], r["impl"], r["image"]): (r["mark"], r["ratio"])
             for r in read_csv(versions_report / "speed.csv")}
    assert marks[("1x320-ce-long", "cudnn", MID)] == ("faster", "0.75")  # 60 vs 80 ms
    assert marks[("1x320-ce-long", "fused", MID)][0] == "slower"  # 204 vs 170 ms: +20%
    assert float(marks[("1x320-ce-long", "fused", MID)][1]) == pytest.approx(1.2)
    assert marks[("1x320-ce-long", "cudnn", NEW)][0] == "~"  # +1.5%, however tight the noise
    assert marks[("4x320-ce-long", "cudnn", MID)][0] == "~"  # -2%
    assert marks[("4x320-ctc-long", "cudnn", MID)][0] == "~"  # +10% but repeats 420..900 ms
    assert marks[("4x320-ctc-long", "cudnn", NEW)][0] == "~"  # -1.7%
    for bench, impl in (("1x320-ce-long", "fused"), ("4x320-ce-long", "cudnn")):
        assert marks[(bench, impl, NEW)] == ("n/a", "")  # unsupported / failed: no figure
    assert all(marks[(b, i, OLD)] == ("n/a", "") for b, i, _ in marks)


def test_speed_tables_carry_the_gtx_1080_reference_rows(versions_report):
    markdown = (versions_report / "report.md").read_text()
    rows = [r for r in reference_rows() if (r.bench, r.impl) == ("1x320-ce-long", "cudnn")]
    assert [r.version for r in rows] == ["0.1.12", "0.2.0", "0.3.1", "0.4.0"]
    for row in rows:
        assert (f"| GTX 1080 reference: PyTorch {row.version} | {row.version} | "
                f"{sections.format_interval(row.interval)} |  | reference |") in markdown
    assert "stefbraun/rnn_benchmarks results/10/pytorch_comparison/results.csv" in markdown
    # The reference section: only the benchmarks this sweep ran at the seed's shapes (the
    # store ran all three the seed's figures cover).
    ran = {bench for bench, _ in SPEED}
    expected = [r for r in reference_rows() if r.bench in ran]
    assert ran == {r.bench for r in reference_rows()} and expected
    reference = read_csv(versions_report / "reference.csv")
    assert len(reference) == len(expected)
    assert {r["bench"] for r in reference} == ran
    assert {float(r["median_ms"]) for r in reference} == {r.interval.estimate for r in expected}


def test_no_reference_section_where_no_seed_shape_ran(search_report):
    assert "GTX 1080" not in (search_report / "report.md").read_text()
    assert not (search_report / "reference.csv").exists()


# --------------------------------------------------------------------------- language model


def test_language_model_table_and_parity_verdicts(store, versions_report):
    rows = {r["image"]: r for r in read_csv(versions_report / "language_model.csv")}
    values = {image: store.versions.test_perplexities(image) for image in (BASE, MID, NEW)}
    verdicts = parity(values, BASE)
    for image in (BASE, MID, NEW):
        row = rows[image]
        assert float(row["test_perplexity_mean"]) == pytest.approx(verdicts[image].mean)
        assert row["n_ok"] == "3"
    assert [rows[i]["parity_verdict"] for i in (BASE, MID, NEW)] == [
        "baseline", "same", "differs"]
    assert float(rows[NEW]["parity_p_value"]) == verdicts[NEW].p_value
    assert rows[OLD]["n_ok"] == "0" and rows[OLD]["parity_verdict"] == "n/a"
    markdown = (versions_report / "report.md").read_text()
    assert f"**differs** (Δ {verdicts[NEW].diff:+.2f}, p={verdicts[NEW].p_value:.2g})" \
        in markdown
    assert "synthetic corpus" in markdown  # the records say the LM ran on synthetic data


# --------------------------------------------------------------------------- did not run


def test_every_trial_without_a_result_is_listed_with_its_reason(store, versions_report):
    listed = {r["run_id"]: r for r in read_csv(versions_report / "did_not_run.csv")}
    expected = {t.run_id: t for t in store.versions.decided if t.status != "ok"}
    assert set(listed) == set(expected)
    for run_id, trial in expected.items():
        assert listed[run_id]["status"] == trial.status
        assert listed[run_id]["reason"] == trial.message
    # The Ctrl-C'd run and the superseded one are not decisions: nowhere in the report.
    undecided = {t.run_id for t in store.versions.trials if not t.decided}
    trials = {r["run_id"] for r in read_csv(versions_report / "trials.csv")}
    assert trials == {t.run_id for t in store.versions.decided} and not undecided & trials

    markdown = (versions_report / "report.md").read_text()
    section = markdown.split("## Did not run", 1)[1].split("\n## ", 1)[0]
    for reason in (OLD_REASON, FUSED_REASON, DIVERGED_MESSAGE, " ".join(FAILED_MESSAGE.split())):
        assert reason in section
    matrix = {line.split(" | ")[0].lstrip("| "): line for line in section.splitlines()
              if line.startswith("| rnn_bench") or line.startswith("| ptb_lm")}
    assert "3 unsupported [" in matrix["rnn_bench 1x320-ce-long fused"].split(" | ")[4]
    assert "3 failed [" in matrix["rnn_bench 4x320-ce-long cudnn"].split(" | ")[4]
    assert "2 ok, 1 diverged [" in matrix["rnn_bench 4x320-ctc-long cudnn"].split(" | ")[4]
    assert all("3 unsupported [" in row.split(" | ")[1] for row in matrix.values())


def test_an_interrupted_sweeps_undecided_trials_are_listed_not_dropped(store, tmp_path):
    # Ctrl-C part-way: 3 of 6 planned trials decided, one KILLED mid-run, two never started.
    interrupted = write_interrupted_sweep(SweepRecords(store.tracking_uri, INTERRUPTED))
    undecided = [t for t in interrupted.trials if not t.decided]
    assert len(undecided) == 3
    code = command.main(["--experiment", INTERRUPTED, "--tracking-uri", store.tracking_uri,
                        "--out", str(tmp_path), "--no-log", "--format", "md,csv"])
    assert code == 0

    listed = read_csv(tmp_path / "did_not_run.csv")
    assert sorted((r["name"], r["image"], r["repeat"], r["status"], r["reason"], r["run_id"])
                  for r in listed) == sorted(
        (t.name, t.image, str(t.repeat), sections.NOT_DECIDED, sections.NOT_DECIDED_REASON, "")
        for t in undecided)
    # The KILLED run is no decision: trials.csv keeps to the three decided runs.
    assert {r["run_id"] for r in read_csv(tmp_path / "trials.csv")} == {
        t.run_id for t in interrupted.decided}

    markdown = (tmp_path / "report.md").read_text()
    summary = markdown.split("## Summary", 1)[1].split("\n## ", 1)[0]
    assert ("> **Warning:** this sweep was interrupted (its parent run ended KILLED" in summary
            and "3 of its 6 planned trials have no decided run" in summary)
    section = markdown.split("## Did not run", 1)[1].split("\n## ", 1)[0]
    header = next(line for line in section.splitlines() if line.startswith("| workload"))
    columns = [c.strip() for c in header.strip("|").split("|")]
    # NEW has no decided run at all, yet it has its column: nothing planned goes missing.
    assert columns == ["workload", BASE, MID, NEW]
    [row] = [line for line in section.splitlines() if line.startswith("| rnn_bench")]
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[1] == "2 ok" and cells[2].startswith("1 ok, 1 not decided [")
    assert cells[3].startswith("2 not decided [")
    assert sections.NOT_DECIDED_REASON in section


def test_a_search_says_how_many_of_its_samples_were_decided(store, search_report):
    # sweeps/grids/hparams.toml asks for num_samples = 20; the store decided 8 of them.
    markdown = (search_report / "report.md").read_text()
    decided = len(store.search.decided)
    assert decided < 20
    summary = markdown.split("## Summary", 1)[1].split("\n## ", 1)[0]
    assert f"{decided} of the 20 samples of its search (`num_samples`) were decided" in summary
    section = markdown.split("## Did not run", 1)[1].split("\n## ", 1)[0]
    assert f"The search was to decide 20 samples (`num_samples`); {decided} were decided" in section


def test_without_scikit_learn_the_search_report_keeps_its_figures(store, tmp_path):
    # Optuna's fANOVA needs scikit-learn, which versweep does not depend on: the report
    # is written from a Python that cannot import it (None in sys.modules blocks the import).
    program = ("import sys; sys.modules['sklearn'] = None; "
               "from analysis import command; sys.exit(command.main(sys.argv[1:]))")
    proc = subprocess.run(
        [sys.executable, "-c", program, "--experiment", HPARAMS, "--tracking-uri",
         store.tracking_uri, "--out", str(tmp_path), "--no-log", "--format", "md,csv"],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    markdown = (tmp_path / "report.md").read_text()
    assert ("No parameter importances: Optuna's fANOVA evaluator needs scikit-learn, which "
            "is not installed") in markdown
    assert "Parameter importance (Optuna" not in markdown
    assert not (tmp_path / "search_importance.csv").exists()
    for name in ("search_slice.png", "search_history.png", "search_parallel.png"):
        assert f"](plots/{name})" in markdown


# --------------------------------------------------------------------------- provenance


def test_provenance_warns_when_a_compared_run_ran_on_another_gpu(versions_report):
    markdown = (versions_report / "report.md").read_text()
    section = markdown.split("## Provenance", 1)[1]
    warning = next(line for line in section.splitlines() if "differ in GPU model" in line)
    assert GPU in warning and OTHER_GPU in warning
    assert f"{OTHER_GPU} on {MID} (1 of 15 trials)" in warning
    table = {r["image"]: r for r in read_csv(versions_report / "provenance.csv")
             if r["field"] == "cudnn"}
    assert {image: table[image]["value"] for image in table} == {
        BASE: "8302", MID: "8700", NEW: "91200"}
    assert "tf32" not in "".join(line for line in section.splitlines() if "Warning" in line)


def test_provenance_warns_when_tf32_differs_between_images(store, tmp_path):
    # Two images, one of them run with TF32 matmuls on: a different numeric setting, not a
    # different version, so the report must say so next to the comparison.
    records = SweepRecords(store.tracking_uri, "tf32")
    specs = [_spec("rnn_bench", image, {"bench": "1x320-ce-long", "impl": "cudnn"}, 0)
             for image in (BASE, NEW)]
    parent = records.open_sweep(Sweep(
        name="tf32", path=Path("/home/me/tf32.toml"), text='name = "tf32"\n',
        description="", backend="docker", device="auto", trial_timeout_s=60.0, retries=0,
        max_concurrent=1, trials=tuple(specs)), resume=False)
    for spec in specs:
        run_id = records.start_trial(parent, spec)
        event = _env_event(spec.image, "rnn_bench", spec.config_dict)
        event["flags"]["tf32_matmul"] = spec.image == NEW
        records.log_event(run_id, event)
        records.log_event(run_id, {"v": 1, "event": "result",
                                   "metrics": {"ms_per_batch_median": 80.0},
                                   "samples": [0.08, 0.081, 0.079]})
        records.finish_trial(run_id, "ok")
    records.close_sweep(parent, {"ok": 2}, None)

    assert command.main(["--experiment", "tf32", "--tracking-uri", store.tracking_uri,
                        "--out", str(tmp_path), "--no-log", "--format", "md"]) == 0
    warnings = [line for line in (tmp_path / "report.md").read_text().splitlines()
                if line.startswith("> **Warning:**")]
    assert any("numeric flag tf32_matmul" in w and f"true on {NEW}" in w
               and f"false on {BASE}" in w for w in warnings), warnings
    assert not any("GPU model" in w for w in warnings)


# --------------------------------------------------------------------------- search


def test_search_report_best_config_importances_and_early_stops(store, search_report):
    markdown = (search_report / "report.md").read_text()
    assert "## Hyper-parameter search" in markdown
    ok = [t for t in store.search.decided if t.status == "ok"]
    best = min(ok, key=lambda t: t.metrics["best_valid_perplexity"])
    [row] = read_csv(search_report / "search_best.csv")
    assert row["run_id"] == best.run_id and row["metric"] == "valid_perplexity"
    assert float(row["value"]) == pytest.approx(best.metrics["best_valid_perplexity"])
    assert row["learning_rate"] == str(best.config["learning_rate"])

    importances = read_csv(search_report / "search_importance.csv")
    assert {r["parameter"] for r in importances} == {"learning_rate", "keep_prob",
                                                     "hidden_size", "clip_norm"}
    assert sum(float(r["importance"]) for r in importances) == pytest.approx(1.0)

    stopped = read_csv(search_report / "search_stopped.csv")
    expected = [t for t in store.search.decided if t.status == "stopped"]
    assert {r["run_id"] for r in stopped} == {t.run_id for t in expected}
    assert all(r["message"].startswith("stopped early by ASHA") for r in stopped)
    assert "Trials stopped early (2)" in markdown
    assert "search_curves.png" in markdown
    trials = read_csv(search_report / "search_trials.csv")
    assert {r["run_id"] for r in trials} == {t.run_id for t in store.search.decided}
    assert [r["run_id"] for r in trials if r["best"] == "True"] == [best.run_id]


# --------------------------------------------------------------------------- --compare


def compare_rows(store, capsys, before: str, after: str) -> dict[str, list[str]]:
    """benchmark -> [mark, before, after, ratio] as ``--compare before after`` prints them."""
    code = command.main(["--experiment", VERSIONS, "--tracking-uri", store.tracking_uri,
                        "--compare", before, after])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert captured.out.startswith(f"before: {before} (torch {IMAGE_ENV[before]['torch']}")
    rows = {}
    for line in captured.out.splitlines():
        if " rnn_bench " in line or " ptb_lm " in line:
            first, second, ratio, benchmark = line[1:].split(maxsplit=3)
            rows[benchmark] = [line[0], first, second, ratio]
    return rows


def test_compare_prints_an_asv_style_table(store, capsys):
    rows = compare_rows(store, capsys, BASE, MID)
    mark, before, after, ratio = rows["rnn_bench 1x320-ce-long cudnn"]
    assert mark == "-" and ratio == "0.75"
    assert before.startswith("80.0±") and before.endswith("ms") and after.startswith("60.0±")
    assert rows["rnn_bench 1x320-ce-long fused"][0] == "+"
    assert rows["rnn_bench 1x320-ce-long fused"][3] == "1.20"
    assert rows["rnn_bench 4x320-ce-long cudnn"][0] == " "  # -2%: not a change
    assert rows["rnn_bench 4x320-ctc-long cudnn"][0] == " "  # +10% inside the noise
    assert rows["ptb_lm small test perplexity (mean±std)"][0] == " "

    rows = compare_rows(store, capsys, BASE, NEW)
    mark, before, after, ratio = rows["rnn_bench 1x320-ce-long fused"]
    assert (mark, after, ratio) == ("x", "unsupported", "-") and before.startswith("170±")
    assert rows["rnn_bench 4x320-ce-long cudnn"][0::2] == ["x", "failed"]
    assert rows["ptb_lm small test perplexity (mean±std)"][0] == "!"


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("args, says", [
    (["--experiment", "versoins"], "did you mean 'versions'"),
    (["--experiment", VERSIONS, "--sweep", "0123abcd"], "has no sweep '0123abcd'"),
    (["--experiment", UNFINISHED], "no finished trial runs"),
    (["--experiment", "not-a-sweep"], "has no sweep runs"),
    (["--experiment", VERSIONS, "--baseline", "torch-9.9.9-cu999"],
     "--baseline 'torch-9.9.9-cu999' is not an image of this sweep"),
    (["--experiment", VERSIONS, "--format", "md,pdf"], "unknown format 'pdf'"),
    (["--experiment", VERSIONS, "--compare", BASE, "torch-9.9.9-cu999"],
     "'torch-9.9.9-cu999' is not an image of this sweep"),
    (["--experiment", VERSIONS, "--frobnicate"], "unrecognized arguments: --frobnicate"),
    (["--experiment", VERSIONS, "--mlflow-ui", "localhost:5000"],
     "--mlflow-ui 'localhost:5000' is not a web address"),
    (["--experiment", VERSIONS, "--sweep", "ffffffff", "--all-sweeps"],
     "not allowed with argument"),
])
def test_bad_input_is_one_line_and_exit_code_2(store, tmp_path, capsys, args, says):
    code = command.main([*args, "--tracking-uri", store.tracking_uri, "--out", str(tmp_path)])
    captured = capsys.readouterr()
    assert code == 2
    assert captured.err.startswith("report: error: ") and says in captured.err
    assert captured.err.count("\n") == 1 and "Traceback" not in captured.err
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_a_missing_store_is_one_line_from_the_real_command(tmp_path):
    proc = run_report_cli("--experiment", VERSIONS, "--tracking-uri",
                          f"sqlite:///{tmp_path}/nothing-here.db", cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.startswith("report: error: no MLflow store at ")
    assert proc.stderr.count("\n") == 1
    assert not (tmp_path / "nothing-here.db").exists()  # a report never creates a store


def test_every_image_of_the_sweep_is_in_the_report(versions_report):
    summary = (versions_report / "report.md").read_text().split("## Speed", 1)[0]
    for image in IMAGES:
        assert f"| {image}" in summary


def test_the_series_view_names_each_step_with_the_versions_around_it(versions_report):
    """1x320-ce-long cudnn: 80 -> 60 -> 81.2 ms over torch 1.13.1, 2.0.1, 2.13.0, repeats
    within 0.2%: two steps, 0.75x and 81.2/60; series of two measured versions: none."""
    steps = {(r["variant"], r["torch_before"], r["torch_after"]): float(r["ratio"])
             for r in read_csv(versions_report / "steps.csv") if r["metric"] == "ms per batch"}
    cudnn = {k[1:]: v for k, v in steps.items() if k[0] == "1x320-ce-long cudnn"}
    assert cudnn == pytest.approx({("1.13.1+cu116", "2.0.1+cu118"): 0.75,
                                   ("2.0.1+cu118", "2.13.0+cu130"): 81.2 / 60})
    assert not [k for k in steps if k[0] == "1x320-ce-long fused"]  # 2 measured versions
    assert not [k for k in steps if k[0] == "4x320-ctc-long cudnn"]  # 600, 660 (noisy), 590
    markdown = (versions_report / "report.md").read_text()
    assert "## Series: each metric across the versions, and its steps" in markdown
    assert ("| ms per batch | 1x320-ce-long cudnn | 1.13.1+cu116 → 2.0.1+cu118 | 0.75x | "
            "80.0 → 60.0 ms |") in markdown
    assert "1x320-ce-long fused (ms per batch): fewer than three versions measured" in markdown


# --------------------------------------------------------------------------- several sweeps, links


def _links(markdown: str) -> list[str]:
    return re.findall(r"\]\((http[^)]+)\)", markdown)


def test_every_row_links_to_its_runs_in_the_mlflow_ui(store, versions_report):
    markdown = (versions_report / "report.md").read_text()
    html = (versions_report / "report.html").read_text()
    experiment_id = MlflowClient(store.tracking_uri).get_experiment_by_name(
        VERSIONS).experiment_id
    base = f"http://127.0.0.1:5000/#/experiments/{experiment_id}/runs/"
    side = "?workflowType=machine_learning"  # the runs side of MLflow 3's UI
    linked = {url.removeprefix(base).removesuffix(side) for url in _links(markdown)
              if url.startswith(base) and url.endswith(side)}
    # Every decided trial of the sweep is reachable from a row (speed, LM, did-not-run rows).
    decided = {t.run_id for t in store.versions.decided}
    assert decided <= linked | {store.versions.parent_run_id}
    assert store.versions.parent_run_id in linked  # the subtitle names the sweep's run
    # The HTML turns them into real anchors, and says how to serve the UI for this store.
    assert f'<a href="{base}{store.versions.parent_run_id}{side}">' in html
    assert f"mlflow ui --backend-store-uri {store.tracking_uri}" in markdown
    trials = read_csv(versions_report / "trials.csv")
    assert all(row["url"] == base + row["run_id"] + side for row in trials)


def test_all_sweeps_pools_both_sweeps_and_links_both(store, tmp_path):
    out = tmp_path / "both"
    assert command.main(["--experiment", VERSIONS, "--tracking-uri", store.tracking_uri,
                        "--all-sweeps", "--out", str(out), "--no-log",
                        "--mlflow-ui", "http://mlflow.example:8080/"]) == 0
    markdown = (out / "report.md").read_text()
    assert "## Sweeps" in markdown and "2 sweeps" in markdown
    newest, older = store.versions.parent_run_id, store.older_versions.parent_run_id
    for parent in (newest, older):
        assert re.search(rf"\]\(http://mlflow\.example:8080/#/experiments/\d+/runs/{parent}"
                         r"\?workflowType=machine_learning\)",
                         markdown), parent
    trials = read_csv(out / "trials.csv")
    expected = {t.run_id for t in store.versions.decided} | {
        t.run_id for t in store.older_versions.decided}
    assert {t["run_id"] for t in trials} == expected
    assert {t["sweep_id"] for t in trials} == {newest, older}
    sweeps_csv = read_csv(out / "sweeps.csv")
    assert [row["run_id"] for row in sweeps_csv] == [newest, older]  # newest first
    assert sweeps_csv[1]["trials"] == "1" and sweeps_csv[1]["ok"] == "1"
    # The older sweep's repeat of the baseline counts in the baseline's speed figure.
    speed = [row for row in read_csv(out / "speed.csv") if row["image"] == BASE
             and row["bench"] == "1x320-ce-long" and row["impl"] == "cudnn"]
    assert int(speed[0]["n_repeats"]) == 4  # 3 of the newest sweep + 1 of the older

    # Naming both with --sweep (any order, prefixes) is the same report.
    again = tmp_path / "named"
    assert command.main(["--experiment", VERSIONS, "--tracking-uri", store.tracking_uri,
                        "--sweep", older[:8], newest, "--out", str(again), "--no-log",
                        "--mlflow-ui", "http://mlflow.example:8080/",
                        "--format", "csv"]) == 0
    assert read_csv(again / "trials.csv") == trials


def test_one_unknown_sweep_among_several_is_one_line(store, tmp_path, capsys):
    code = command.main(["--experiment", VERSIONS, "--tracking-uri", store.tracking_uri,
                         "--sweep", store.versions.parent_run_id, "zzzz", "--out",
                         str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("report: error: ") and "no sweep 'zzzz'" in err
    assert err.count("\n") == 1 and list(tmp_path.iterdir()) == []


def test_no_links_leaves_the_report_without_addresses(store, tmp_path):
    assert command.main(["--experiment", VERSIONS, "--tracking-uri", store.tracking_uri,
                        "--no-links", "--out", str(tmp_path), "--no-log",
                        "--format", "md"]) == 0
    assert _links((tmp_path / "report.md").read_text()) == []


# --------------------------------------------------------------------------- busy, num_threads


def test_busy_timings_are_judged_where_the_grid_left_num_threads_out(store, tmp_path):
    # The shipped versions and nightly grids leave config.num_threads out: MLflow holds the
    # param as "null", and a trial's own threads are then its node's CPUs (versweep.cpus).
    records = SweepRecords(store.tracking_uri, "no-threads")
    specs = [_spec("rnn_bench", image, {"bench": "1x320-ce-long", "impl": "cudnn"}, repeat)
             for image in (BASE, NEW) for repeat in (0, 1)]
    assert all(spec.config_dict["num_threads"] is None for spec in specs)
    parent = records.open_sweep(Sweep(
        name="no-threads", path=Path("/home/me/no-threads.toml"), text='name = "x"\n',
        description="", backend="docker", device="auto", trial_timeout_s=60.0, retries=0,
        max_concurrent=1, trials=tuple(specs)), resume=False)
    noisy = None
    for spec in specs:
        run_id = records.start_trial(parent, spec)
        records.log_event(run_id, _env_event(spec.image, "rnn_bench", spec.config_dict))
        records.log_event(run_id, {"v": 1, "event": "result",
                                   "metrics": {"ms_per_batch_median": 80.0},
                                   "samples": [0.08, 0.081, 0.079]})
        # Two CPUs: 1.9 of them busy is the trial itself; 2.9 is other work beside it.
        busy_cpus = "2.90" if (spec.image, spec.repeat) == (NEW, 1) else "1.90"
        noisy = run_id if busy_cpus == "2.90" else noisy
        records.finish_trial(run_id, "ok", extra_tags={"versweep.busy_cpus": busy_cpus,
                                                        "versweep.cpus": "2"})
    records.close_sweep(parent, {"ok": 4}, None)
    assert MlflowClient(store.tracking_uri).get_run(noisy).data.params["num_threads"] == "null"

    assert command.main(["--experiment", "no-threads", "--tracking-uri", store.tracking_uri,
                        "--out", str(tmp_path), "--no-log", "--format", "md,csv"]) == 0
    busy = {row["run_id"]: row["busy"] for row in read_csv(tmp_path / "trials.csv")}
    assert busy == {run_id: str(run_id == noisy) for run_id in busy} and len(busy) == 4
    assert "1 timing trial(s) ran while other work kept the node's CPUs busy" in (
        tmp_path / "report.md").read_text()


def test_a_param_or_tag_number_is_none_for_every_missing_spelling():
    for missing in (None, "", "null", "None", "n/a", "nan"):
        assert sections.number(missing) is None, missing
    assert sections.number("8") == 8.0 and sections.number("1.90") == 1.9


# --------------------------------------------------------------------------- writing --out


def _tree(folder: Path) -> dict[str, bytes | None]:
    """Every path under ``folder`` (hidden ones too): a file's bytes, None for a folder."""
    return {str(p.relative_to(folder)): None if p.is_dir() else p.read_bytes()
            for p in sorted(folder.rglob("*"))}


@pytest.mark.parametrize("blocker", ["report.html", "plots"])
def test_a_report_that_cannot_be_written_whole_leaves_out_as_it_was(store, tmp_path, capsys,
                                                                    blocker):
    # --out holds files of its own (docs/versions-cpu: a README beside the report); a folder
    # where report.html goes, or a file where plots/ goes, is found before anything moves in.
    out = tmp_path / "out"
    (out / "evidence").mkdir(parents=True)
    (out / "README.md").write_text("mine\n")
    (out / "evidence" / "notes.txt").write_text("kept\n")
    if blocker == "plots":
        (out / "plots").write_text("not a folder\n")
    else:
        (out / blocker).mkdir()
    before = _tree(out)
    code = command.main(["--experiment", VERSIONS, "--tracking-uri", store.tracking_uri,
                         "--out", str(out), "--no-log"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("report: error: cannot write"), err
    assert err.count("\n") == 1 and "Traceback" not in err and blocker in err
    assert _tree(out) == before  # no report.md, no plots, no CSV: nothing moved in
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no staging folder left

    (out / blocker).rmdir() if blocker != "plots" else (out / blocker).unlink()
    assert command.main(["--experiment", VERSIONS, "--tracking-uri", store.tracking_uri,
                        "--out", str(out), "--no-log"]) == 0
    after = _tree(out)
    assert after["README.md"] == b"mine\n" and after["evidence/notes.txt"] == b"kept\n"
    assert {"report.md", "report.html", "trials.csv"} <= set(after)
    assert any(name.startswith("plots/") for name in after)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]

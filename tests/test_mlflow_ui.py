"""versweep's records in MLflow's own web UI, opened in a real headless Chromium.

A real ``mlflow server`` serves a store filled by a real sweep (the command a user runs, a
private Ray, the local backend) of a small grid: two ptb_lm trials, one of which diverges,
and two rnn_bench trials. The workers are a stand-in interpreter that speaks the worker
protocol without torch (the ``$VERSWEEP_PYTHON`` of the local backend), so the store holds
every tag, param, metric and artifact a sweep writes, in seconds. A second sweep of the same
grid is recorded through sweeps/records as its trials would record it (no second Ray start),
so that the same trials appear twice in the experiment.

What a person sees (MLflow 3.17.2; tests/mlflow_ui.py says how the UI decides): the runs
table, not the GenAI overview; the experiment's description; trial runs whose names no two
share, across sweeps too; the key metric columns through the saved view and the link of
tests/mlflow_ui.py; a diverged trial's status on its run page.

Skipped without Chromium (tests/needs.py), failed instead under VERSWEEP_REQUIRE_CHROMIUM=1.
"""

from __future__ import annotations

import json
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest
from chromium import Chromium, require_chromium
from mlflow_ui import (
    CLOSE_ASSISTANT,
    HEADER_COLUMNS,
    ON_GENAI_OVERVIEW,
    RUN_NAME_CELLS,
    RUN_NAMES_WHOLE,
    RUNS_TABLE_ROWS,
    VIEW_NAME,
    WORKFLOW_SELECTED,
    bare_experiment_link,
    cell_text,
    column,
    ensure_key_view,
    expand_run,
    key_columns,
    run_link,
    runs_link,
    warm_up,
)
from sweeping import end_processes_mentioning, running_mlflow_server, sweep_runs, versweep

pytestmark = pytest.mark.needs("chromium")

EXPERIMENT = "ui"

GRID = textwrap.dedent("""
    [sweep]
    name = "ui"
    description = "Two workloads, one trial diverging: what the MLflow UI shows"
    backend = "local"
    device = "cpu"
    trial_timeout_s = 60
    retries = 0
    max_concurrent = 2

    [[group]]
    workload = "ptb_lm"
    axes.learning_rate = [1.0, 100.0]
    config.preset = "small"
    config.num_threads = 1

    [[group]]
    workload = "rnn_bench"
    axes.bench = ["1x320-ce-short", "1x320-ce-long"]
    config.impl = "cudnn"
    config.num_threads = 1
""")

# The workers: the protocol's events for each workload, without torch. ptb_lm at learning
# rate 100 reports a training perplexity past its bound, so the host records it `diverged`.
STANDIN = r'''#!{python} -S
import json, sys
if sys.argv[1:2] == ["-c"]:
    print("2.99.0+standin")
    sys.exit(0)
workload, config = sys.argv[3], json.loads(sys.argv[5])
events = [{{"event": "env", "torch": "2.99.0+standin", "cuda": None, "cudnn": None,
           "python": "%d.%d.%d" % sys.version_info[:3], "device": "cpu",
           "workload": workload, "config": config}}]
if workload == "ptb_lm":
    lr = float(config.get("learning_rate", 1.0))
    train = 1.5e18 if lr > 10 else 120.0
    events += [{{"event": "metric", "step": 1, "metrics": {{
                   "train_perplexity": train, "valid_perplexity": 130.0 + lr,
                   "words_per_second": 5000.0, "perplexity_bound": 100000.0}}}},
               {{"event": "result", "metrics": {{"test_perplexity": 125.0 + lr,
                                               "best_valid_perplexity": 130.0 + lr,
                                               "epochs_run": 1, "vocab_size": 10000}}}}]
else:
    ms = 2.5 if config.get("bench") == "1x320-ce-short" else 9.0
    events += [{{"event": "metric", "step": 5, "metrics": {{"chunk_ms_per_batch_median": ms,
                                                          "loss": 4.2}}}},
               {{"event": "result", "metrics": {{"ms_per_batch_median": ms,
                                               "sequences_per_second": 1000.0 / ms}},
                "samples": [ms / 1000.0] * 4}}]
for event in events:
    event["v"] = 1
    sys.stdout.write(json.dumps(event) + "\n")
    sys.stdout.flush()
'''

WIDTH, HEIGHT = 1600, 1400


class Store:
    """The served store: the server's URL, the experiment, its sweeps' runs."""

    def __init__(self, url: str, experiment_id: str, parents: list, children: list,
                 view_by_records: bool):
        self.url, self.experiment_id = url, experiment_id
        self.parents, self.children = parents, children
        self.real_sweep = min(parents, key=lambda run: run.info.start_time)  # the command's
        self.view_by_records = view_by_records  # the records carried the view themselves

    def has_column(self, column_id: str) -> bool:
        """Whether some trial run has the metric or tag ``column_id`` names."""
        kind, name = column_id.split(".", 1)
        name = name.strip("`")
        return any(name in (c.data.metrics if kind == "metrics" else c.data.tags)
                   for c in self.children)

    def trials(self, workload: str | None = None, status: str | None = None) -> list:
        return [c for c in self.children
                if workload in (None, c.data.tags.get("versweep.workload"))
                and status in (None, c.data.tags.get("versweep.status"))]


def record_a_second_sweep(uri: str, grid: Path) -> None:
    """The same grid's trials once more, as a second sweep run records them (through
    sweeps/records, the events the stand-in sends), without a second Ray start."""
    from sweeps.grid.load import load_sweep
    from sweeps.records.store import SweepRecords

    sweep = load_sweep(str(grid))
    records = SweepRecords(uri, EXPERIMENT)
    parent = records.open_sweep(sweep, resume=False)
    summary = {"ok": 0, "unsupported": 0, "failed": 0, "diverged": 0, "stopped": 0}
    for spec in sweep.trials:
        run_id = records.start_trial(parent, spec)
        records.log_event(run_id, {"event": "env", "torch": "2.99.0+standin", "device": "cpu",
                                   "workload": spec.workload, "config": spec.config_dict})
        diverged = spec.config_dict.get("learning_rate") == 100.0
        metric = ({"test_perplexity": 180.0} if spec.workload == "ptb_lm"
                  else {"ms_per_batch_median": 3.0})
        if not diverged:
            records.log_event(run_id, {"event": "result", "metrics": metric})
        status = "diverged" if diverged else "ok"
        records.finish_trial(run_id, status, message="train_perplexity 1.5e+18 is beyond the "
                             "bound 1e+05" if diverged else "")
        summary[status] += 1
    records.close_sweep(parent, summary, None)


@pytest.fixture(scope="module")
def store(tmp_path_factory, ray_tmp_module):
    home = tmp_path_factory.mktemp("mlflow-ui")
    python = home / "standin-python"
    python.write_text(STANDIN.format(python=sys.executable))
    python.chmod(0o755)
    grid = home / "ui.toml"
    grid.write_text(GRID)
    uri = f"sqlite:///{home / 'mlflow.db'}"
    done = versweep(["--grid", str(grid), "--tracking-uri", uri], cwd=home,
                    ray_tmp=ray_tmp_module, timeout=300, VERSWEEP_PYTHON=str(python))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    # A second sweep of the same grid: the same trials, told apart by their names.
    record_a_second_sweep(uri, grid)
    client, parents, children = sweep_runs(uri, EXPERIMENT)
    experiment_id = parents[0].info.experiment_id
    written = ensure_key_view(client, experiment_id, ["ptb_lm", "rnn_bench"])
    with running_mlflow_server(home, home / "mlflow.db") as url:
        warm_up(url)
        served = Store(url, experiment_id, parents, children, view_by_records=not written)
        served.home = home
        yield served


@pytest.fixture(scope="module")
def ray_tmp_module():
    """A private Ray temp dir for the module's sweeps (tests/sweeping.py's ray_tmp, once)."""
    path = tempfile.mkdtemp(prefix="vsray-", dir="/tmp")
    yield path
    end_processes_mentioning(path, remove=True)


@pytest.fixture
def browser():
    """A fresh browser per test: the UI keeps a person's choices in localStorage."""
    chromium = Chromium(require_chromium())
    yield chromium
    chromium.close()


def open_runs_table(browser: Chromium, link: str):
    tab = browser.open(link, width=WIDTH, height=HEIGHT)
    tab.wait_until(f"{RUNS_TABLE_ROWS} > 0", timeout=90, what="the runs table's rows")
    tab.evaluate(CLOSE_ASSISTANT)
    return tab


def expand_sweeps(tab, store: Store) -> list[dict]:
    """Open every sweep's row; the name cells of all rows, once each trial row is drawn."""
    for parent in store.parents:
        tab.wait_until(expand_run(parent.info.run_id), timeout=30,
                       what=f"the expander of sweep run {parent.info.run_id}")
    want = len(store.parents) + len(store.children)
    tab.wait_until(f"{RUN_NAME_CELLS}.length >= {want}", timeout=30,
                   what=f"{want} rows (every sweep and its trials)")
    return tab.evaluate(RUN_NAME_CELLS)


# --------------------------------------------------------------------------- the tests


def test_the_runs_link_opens_the_runs_table_not_the_genai_overview(browser, store):
    tab = open_runs_table(browser, runs_link(store.url, store.experiment_id, view=False))
    assert not tab.evaluate(ON_GENAI_OVERVIEW)
    assert tab.evaluate(WORKFLOW_SELECTED) == "machine_learning"
    names = {cell["name"] for cell in tab.evaluate(RUN_NAME_CELLS)}
    assert {p.info.run_name for p in store.parents} <= names


def test_a_fresh_browser_meets_the_genai_overview_at_the_bare_experiment_link(browser, store):
    # MLflow 3.17's own behaviour, the reason versweep's links name the runs tab and the
    # Model training side: mlflow.experimentKind=custom_model_development does not decide.
    tab = browser.open(bare_experiment_link(store.url, store.experiment_id), width=WIDTH,
                       height=HEIGHT)
    tab.wait_until(ON_GENAI_OVERVIEW, timeout=60, what="the GenAI overview")
    assert tab.evaluate(WORKFLOW_SELECTED) == "genai"


def test_the_link_versweep_gives_opens_the_runs_table_with_the_key_columns(browser, store):
    from sweeps.records.layout import experiment_url

    tab = browser.open(experiment_url(store.url, store.experiment_id), width=WIDTH,
                       height=HEIGHT)
    tab.wait_until(f"{RUNS_TABLE_ROWS} > 0 || {ON_GENAI_OVERVIEW}", timeout=90,
                   what="the runs table or the overview")
    assert not tab.evaluate(ON_GENAI_OVERVIEW)
    # A column no run has (CUDA and cuDNN on a CPU machine) the UI leaves out of the table.
    wanted = {c for c in key_columns(["ptb_lm", "rnn_bench"]) if store.has_column(c)}
    assert wanted and wanted <= set(tab.evaluate(HEADER_COLUMNS))


def test_the_records_carry_the_key_metrics_view(store):
    assert store.view_by_records


def test_the_key_metrics_view_shows_each_workloads_best_metric_and_the_status(browser, store):
    tab = open_runs_table(browser, runs_link(store.url, store.experiment_id))
    wanted = [c for c in key_columns(["ptb_lm", "rnn_bench"]) if store.has_column(c)]
    # On a CPU there is no CUDA or cuDNN: those tags are left out, so are their columns.
    assert wanted == [column("metrics", "test_perplexity"),
                      column("metrics", "ms_per_batch_median"),
                      column("tags", "versweep.status"), column("tags", "versweep.torch")]
    tab.wait_until(f"{json.dumps(wanted)}.every(c => {HEADER_COLUMNS}.includes(c))",
                   timeout=30, what=f"the columns {wanted}")
    assert VIEW_NAME in tab.text()  # the view is named where a person picks views

    expand_sweeps(tab, store)
    lm = store.trials("ptb_lm", "ok")[0]
    bench = store.trials("rnn_bench", "ok")[0]
    diverged = store.trials("ptb_lm", "diverged")[0]
    checks = {(lm.info.run_id, column("metrics", "test_perplexity")):
              f"{lm.data.metrics['test_perplexity']:g}",
              (bench.info.run_id, column("metrics", "ms_per_batch_median")):
              f"{bench.data.metrics['ms_per_batch_median']:g}",
              (lm.info.run_id, column("tags", "versweep.status")): "ok",
              (diverged.info.run_id, column("tags", "versweep.status")): "diverged",
              (lm.info.run_id, column("tags", "versweep.torch")): "2.99.0+standin"}
    for (run_id, col), text in checks.items():
        tab.wait_until(f"{json.dumps(text)} === {cell_text(run_id, col)}", timeout=20,
                       what=f"{text!r} in column {col} of run {run_id}")
    # The view makes the name column wide enough: every run's name is read whole.
    names = tab.evaluate(RUN_NAMES_WHOLE)
    assert len(names) == len(store.parents) + len(store.children), names
    assert all(n["whole"] for n in names), [n["name"] for n in names if not n["whole"]]


def test_no_two_trial_runs_share_a_name_in_the_runs_table(browser, store):
    tab = open_runs_table(browser, runs_link(store.url, store.experiment_id, view=False))
    cells = expand_sweeps(tab, store)
    trial_ids = {c.info.run_id for c in store.children}
    shown = [cell for cell in cells if cell["run_id"] in trial_ids]
    assert len(store.parents) == 2 and len(trial_ids) == 8
    assert {cell["run_id"] for cell in shown} == trial_ids  # every trial is listed ...
    names = [cell["name"] for cell in shown]
    assert len(set(names)) == len(names), sorted(names)  # ... under a name of its own
    # The same trial of the two sweeps: one label, each sweep's short id after it.
    lm_names = sorted(n for n in names if n.startswith("ptb_lm small") and "100" in n)
    assert len(lm_names) == 2 and lm_names[0].split(" · ")[0] == lm_names[1].split(" · ")[0]
    assert {n.split(" · ")[1] for n in lm_names} == {p.info.run_id[:6] for p in store.parents}


def test_the_experiment_description_is_shown_above_the_runs_table(browser, store):
    tab = open_runs_table(browser, runs_link(store.url, store.experiment_id))
    tab.wait_until(f"document.body.innerText.includes('versweep experiment {EXPERIMENT}')",
                   timeout=30, what="the experiment's description")
    assert "records of the grid ui (ui.toml)" in tab.text()


def test_a_diverged_trials_run_page_shows_its_status_and_why(browser, store):
    diverged = store.trials("ptb_lm", "diverged")
    assert len(diverged) == 2  # one per sweep
    run = next(r for r in diverged
               if r.data.tags["mlflow.parentRunId"] == store.real_sweep.info.run_id)
    tab = browser.open(run_link(store.url, store.experiment_id, run.info.run_id),
                       width=WIDTH, height=HEIGHT)
    tab.evaluate(CLOSE_ASSISTANT)
    tab.wait_until(f"document.body.innerText.includes({json.dumps(run.info.run_name)})",
                   timeout=60, what="the run's name")
    text = tab.wait_until(
        "document.body.innerText.includes('versweep.status') && document.body.innerText",
        timeout=30, what="the run's tags")
    assert "versweep.status: diverged" in " ".join(text.split()).replace(" :", ":")
    assert "is beyond the bound" in text  # versweep.message: why it diverged


def test_a_sweeps_run_page_counts_its_trials_by_status(browser, store):
    parent = store.real_sweep
    tab = browser.open(run_link(store.url, store.experiment_id, parent.info.run_id),
                       width=WIDTH, height=HEIGHT)
    text = tab.wait_until("document.body.innerText.includes('4 trials') && "
                          "document.body.innerText", timeout=60, what="the sweep's counts")
    assert "3 ok" in text and "1 diverged" in text
    # Its trials are listed on its page, by their names (read by the page after the run).
    names = [child.info.run_name for child in store.children
             if child.data.tags["mlflow.parentRunId"] == parent.info.run_id]
    assert len(names) == 4
    tab.wait_until(f"{json.dumps(names)}.every(n => document.body.innerText.includes(n))",
                   timeout=30, what=f"the sweep's trials {names}")


def test_the_report_of_both_sweeps_links_to_each_and_the_links_open_them(browser, store,
                                                                       tmp_path):
    """versweep report --all-sweeps, opened in Chromium: a link to each sweep's run, each of
    which opens that run's page in the served MLflow UI; every trial row links too."""
    from chromium import file_url

    from analysis import command

    uri = f"sqlite:///{store.home / 'mlflow.db'}"
    out = tmp_path / "report"
    assert command.main(["--experiment", EXPERIMENT, "--tracking-uri", uri, "--all-sweeps",
                         "--mlflow-ui", store.url, "--out", str(out), "--no-log",
                         "--format", "html"]) == 0
    page = browser.open(file_url(out / "report.html"), width=WIDTH, height=HEIGHT)
    hrefs = page.wait_until("[...document.querySelectorAll('a[href^=\"http\"]')]"
                            ".map(a => a.href)", timeout=30, what="the report's links")
    for parent in store.parents:
        wanted = run_link(store.url, store.experiment_id, parent.info.run_id)
        assert wanted in hrefs, (wanted, hrefs[:5])
        tab = browser.open(wanted, width=WIDTH, height=HEIGHT)
        tab.evaluate(CLOSE_ASSISTANT)
        tab.wait_until(f"document.body.innerText.includes({json.dumps(parent.info.run_name)})",
                       timeout=60, what=f"the sweep run {parent.info.run_name}")
    linked = {h for h in hrefs if "/runs/" in h}
    assert {run_link(store.url, store.experiment_id, c.info.run_id)
            for c in store.children} <= linked

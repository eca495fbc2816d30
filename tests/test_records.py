"""A sweep's MLflow records, written by sweeps/records/store.py, read back as the MLflow UI does.

Every test runs against a real store: the embedded SQLite file a user gets by
default, and a real ``mlflow server`` on loopback started once per session.
Environment events come from the real worker (``python -m workers env``).
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path

import pytest
from conftest import run_worker
from mlflow import MlflowClient
from mlflow.entities import ViewType
from sweeping import free_port, running_mlflow_server

from sweeps.errors import UserError
from sweeps.grid.spec import Sweep, TrialSpec
from sweeps.records.layout import trial_name
from sweeps.records.store import (
    SweepRecords,
    default_tracking_uri,
    mlflow_ui_command,
    records_location,
    resolve_tracking_uri,
)
from workers.workloads import resolve_workload_config

ROOT = Path(__file__).resolve().parent.parent

GRID_TEXT = textwrap.dedent("""\
    # a tiny grid, as a user writes it
    name = "recordtest"
    backend = "local"
    """)


# --------------------------------------------------------------------------- fixtures


class Server:
    """A running ``mlflow server``: its URL and the SQLite file behind it."""

    def __init__(self, url: str, db: Path, log: Path):
        self.url = url
        self.db = db
        self.log = log

    def requests(self, endpoint: str) -> int:
        """How many requests to ``endpoint`` the server has logged so far."""
        return self.log.read_text(errors="replace").count(endpoint)


@pytest.fixture(scope="session")
def empty_store(tmp_path_factory) -> Path:
    """A new MLflow SQLite database, created once: copies of it spare each test the
    seconds mlflow spends creating tables and running its migrations."""
    db = tmp_path_factory.mktemp("empty-store") / "mlflow.db"
    MlflowClient(f"sqlite:///{db}").search_experiments(max_results=1)
    return db


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory, empty_store):
    """A real ``mlflow server`` on 127.0.0.1 with a free port, for the whole session."""
    home = tmp_path_factory.mktemp("mlflow-server")
    db = home / "server.db"
    shutil.copyfile(empty_store, db)
    with running_mlflow_server(home, db, workers=2) as url:
        yield Server(url, db, home / "server.log")


@pytest.fixture(params=["sqlite", "server"])
def tracking_uri(request, tmp_path, empty_store):
    """The embedded SQLite default in a fresh directory, or the session's mlflow server."""
    if request.param == "sqlite":
        shutil.copyfile(empty_store, tmp_path / "mlflow.db")
        return default_tracking_uri(tmp_path)
    return request.getfixturevalue("mlflow_server").url


@pytest.fixture(scope="module")
def env_event():
    """The env event of the real worker on this machine (it imports torch: run it once)."""
    run = run_worker("env", env_trial(0).config_dict)
    assert run.returncode == 0, run.stderr
    return run


@pytest.fixture
def experiment():
    """An experiment name of its own, so tests sharing the server never see each other."""
    return f"recordtest-{uuid.uuid4().hex[:8]}"


def make_sweep(tmp_path: Path, trials: tuple[TrialSpec, ...], name: str = "recordtest") -> Sweep:
    grid = tmp_path / f"{name}.toml"
    grid.write_text(GRID_TEXT)
    return Sweep(name=name, path=grid, text=GRID_TEXT, description="records test grid",
                 backend="local", device="cpu", trial_timeout_s=60.0, retries=1,
                 max_concurrent=None, trials=trials)


def env_trial(repeat: int) -> TrialSpec:
    config = resolve_workload_config("env", {"seed": 1234 + repeat, "device": "cpu"})
    return TrialSpec("env", "local", tuple(sorted(config.items())), repeat, 0)


def bench_trial(impl: str) -> TrialSpec:
    config = resolve_workload_config("rnn_bench", {
        "bench": "1x320-ce-short", "impl": impl, "batches": 4, "warmup_batches": 1,
        "batch_size": 2, "seq_len": 3, "input_size": 5, "hidden_size": 4, "device": "cpu"})
    return TrialSpec("rnn_bench", "local", tuple(sorted(config.items())), 0, 1)


def runs_of(client: MlflowClient, experiment_name: str) -> list:
    experiment = client.get_experiment_by_name(experiment_name)
    return client.search_runs([experiment.experiment_id], run_view_type=ViewType.ALL,
                              max_results=1000)


def artifact_text(client: MlflowClient, run_id: str, path: str, tmp_path: Path) -> str:
    local = client.download_artifacts(run_id, path, str(tmp_path))
    return Path(local).read_text()


# --------------------------------------------------------------------------- layout


def test_a_sweep_reads_back_as_the_design_lays_it_out(tracking_uri, experiment, tmp_path,
                                                      env_event):
    ok, unsupported, diverged, failed = env_trial(0), bench_trial("cudnn"), env_trial(1), \
        bench_trial("fused")
    sweep = make_sweep(tmp_path, (ok, unsupported, diverged, failed))
    records = SweepRecords(tracking_uri, experiment)
    parent = records.open_sweep(sweep, resume=False)

    # ok: the real worker's env event, ten epochs of step metrics, a result with samples.
    run = env_event
    env_event = run.one("env")
    ok_run = records.start_trial(parent, ok)
    records.log_event(ok_run, env_event)
    for step in range(10):
        records.log_event(ok_run, {"v": 1, "event": "metric", "step": step,
                                   "metrics": {"valid_perplexity": 100.0 - step,
                                               "words_per_second": 1000.0 + step,
                                               "broken": None}})
    records.log_event(ok_run, {"v": 1, "event": "result",
                               "metrics": {"test_perplexity": 91.5, "not_a_number": None},
                               "samples": [0.5, 0.25, 0.125]})
    records.finish_trial(ok_run, "ok", log_text=run.stdout + run.stderr)

    unsupported_run = records.start_trial(parent, unsupported)
    reason = "nn.CTCLoss needs torch>=1.0 and warpctc_pytorch is not installed"
    records.log_event(unsupported_run, {"v": 1, "event": "unsupported", "reason": reason})
    records.finish_trial(unsupported_run, "unsupported", message=reason)

    diverged_run = records.start_trial(parent, diverged)
    records.log_event(diverged_run, {"v": 1, "event": "metric", "step": 0,
                                     "metrics": {"train_perplexity": 5000.0}})
    records.log_event(diverged_run, {"v": 1, "event": "error", "kind": "diverged",
                                     "message": "loss is nan at epoch 1"})
    records.finish_trial(diverged_run, "diverged", message="loss is nan at epoch 1")

    # failed: a crash whose stderr tail is longer than an MLflow tag may be.
    stderr_tail = "Traceback (most recent call last):\n" + "  frame\n" * 2000 + \
        "RuntimeError: CUDA error: an illegal memory access was encountered\n"
    failed_run = records.start_trial(parent, failed)
    records.finish_trial(failed_run, "failed", message=stderr_tail, log_text=stderr_tail,
                         extra_tags={"versweep.attempts": "2"})

    records.close_sweep(parent, {"ok": 1, "unsupported": 1, "diverged": 1, "failed": 1},
                        {"trial_key": ok.key, "run_id": ok_run, "name": ok.name,
                         "metric": "test_perplexity", "mode": "min", "value": 91.5,
                         "config": ok.config_dict})

    # Read it back with a fresh client, as the MLflow UI does.
    client = MlflowClient(tracking_uri)
    runs = {r.info.run_id: r for r in runs_of(client, experiment)}
    assert len(runs) == 5

    sweep_run = runs[parent]
    assert sweep_run.info.run_name.startswith("recordtest ")
    assert sweep_run.info.status == "FINISHED"
    assert sweep_run.data.tags["versweep.kind"] == "sweep"
    assert sweep_run.data.tags["versweep.sweep"] == "recordtest"
    assert sweep_run.data.tags["versweep.backend"] == "local"
    assert sweep_run.data.tags["versweep.grid_sha256"] == \
        hashlib.sha256(GRID_TEXT.encode()).hexdigest()
    assert artifact_text(client, parent, "recordtest.toml", tmp_path / "grid") == GRID_TEXT
    assert {f"versweep.summary.{s}": "1" for s in ("ok", "unsupported", "diverged", "failed")}\
        .items() <= sweep_run.data.tags.items()
    assert sweep_run.data.tags["versweep.best.trial_key"] == ok.key
    assert sweep_run.data.tags["versweep.best.run_id"] == ok_run
    assert json.loads(sweep_run.data.tags["versweep.best.config"]) == ok.config_dict
    assert sweep_run.data.metrics["best_test_perplexity"] == 91.5
    # Described in words for the MLflow UI: the sweep's description, then its counts.
    note = sweep_run.data.tags["mlflow.note.content"]
    assert note.startswith("records test grid\n\n**Trials** (finished ")
    assert note.endswith(": 4 trials: 1 ok, 1 unsupported, 1 diverged, 1 failed.")
    described = client.get_experiment_by_name(experiment)
    assert described.tags["mlflow.experimentKind"] == "custom_model_development"
    assert described.tags["mlflow.note.content"].startswith(
        f"**versweep** experiment `{experiment}`: the records of the grid `recordtest` "
        "(recordtest.toml).\n\nrecords test grid\n\nEach **parent run**")
    legend = json.loads(artifact_text(client, parent, "metrics.json", tmp_path / "legend"))
    assert set(legend) == {"env", "rnn_bench"}  # the sweep's own workloads
    assert legend["rnn_bench"]["ms_per_batch_median"]["unit"] == "ms"
    assert legend["rnn_bench"]["ms_per_batch_median"]["better"] == "lower"
    assert legend["rnn_bench"]["sequences_per_second"]["better"] == "higher"
    planned = json.loads(artifact_text(client, parent, "trials.json", tmp_path / "plan"))
    assert [t["key"] for t in planned] == [t.key for t in sweep.trials]

    children = {r.data.tags["versweep.trial_key"]: r for r in runs.values()
                if r.data.tags.get("mlflow.parentRunId") == parent}
    assert set(children) == {t.key for t in sweep.trials}
    for spec in sweep.trials:
        child = children[spec.key]
        assert child.info.run_name == f"{spec.name} · {parent[:6]}"
        assert trial_name(child.info.run_name, parent) == spec.name  # what readers show
        assert child.info.status == "FINISHED"  # every decided trial, whatever its result
        assert child.data.tags["versweep.workload"] == spec.workload
        assert child.data.tags["versweep.image"] == "local"
        assert child.data.tags["versweep.repeat"] == str(spec.repeat)
        assert child.data.params == {k: v if isinstance(v, str) else json.dumps(v)
                                     for k, v in spec.config_dict.items()}
    assert children[unsupported.key].info.run_name == \
        f"rnn_bench 1x320-ce-short cudnn @ local #0 · {parent[:6]}"

    good = children[ok.key]
    assert good.data.tags["versweep.status"] == "ok"
    assert good.data.tags["versweep.torch"] == env_event["torch"]
    assert good.data.tags["versweep.host"] == env_event["host"]
    assert good.data.tags["versweep.python"] == env_event["python"]
    assert good.data.tags["versweep.env.flags.num_threads"] == \
        str(env_event["flags"]["num_threads"])
    assert good.data.tags["versweep.env.flags.tf32_matmul"] == "false"
    # Tag hygiene: nothing empty, nothing said twice (a shortcut is not also versweep.env.*).
    for child in children.values():
        tags = child.data.tags
        assert not [k for k, v in tags.items() if v in ("", "null", "None", "{}", "[]")], tags
        shortcuts = {k[len("versweep."):] for k in tags if k.count(".") == 1}
        assert not [k for k in tags if k.startswith("versweep.env.")
                    and k[len("versweep.env."):] in shortcuts | {"workload"}], tags
    history = client.get_metric_history(ok_run, "valid_perplexity")
    assert sorted((m.step, m.value) for m in history) == [(s, 100.0 - s) for s in range(10)]
    assert good.data.metrics["test_perplexity"] == 91.5
    assert "broken" not in good.data.metrics and "not_a_number" not in good.data.metrics
    assert {a.path for a in client.list_artifacts(ok_run)} == {"worker.log", "samples.json"}
    log = artifact_text(client, ok_run, "worker.log", tmp_path / "ok")
    assert '"event": "env"' in log
    samples = json.loads(artifact_text(client, ok_run, "samples.json", tmp_path / "ok"))
    assert samples == {"unit": "s", "values": [0.5, 0.25, 0.125],
                       "description": "seconds per measured batch (forward, backward and "
                                      "update), in the order run, the warm-up batches dropped"}

    skipped = children[unsupported.key]
    assert skipped.data.tags["versweep.status"] == "unsupported"
    assert skipped.data.tags["versweep.reason"] == reason

    nan = children[diverged.key]
    assert nan.data.tags["versweep.status"] == "diverged"
    assert nan.data.tags["versweep.error_kind"] == "diverged"
    assert nan.data.metrics["train_perplexity"] == 5000.0

    crash = children[failed.key]
    assert crash.data.tags["versweep.status"] == "failed"
    assert crash.data.tags["versweep.attempts"] == "2"
    message = crash.data.tags["versweep.message"]
    assert len(message) <= 8000 and message.startswith("...[truncated]")
    assert message.endswith("an illegal memory access was encountered\n")
    assert artifact_text(client, failed_run, "worker.log", tmp_path / "crash") == stderr_tail


def test_embedded_store_keeps_artifacts_next_to_the_database(tmp_path, experiment,
                                                             empty_store):
    shutil.copyfile(empty_store, tmp_path / "mlflow.db")
    uri = default_tracking_uri(tmp_path)
    records = SweepRecords(uri, experiment)
    parent = records.open_sweep(make_sweep(tmp_path, (env_trial(0),)), resume=False)
    run_id = records.start_trial(parent, env_trial(0))
    records.finish_trial(run_id, "ok", log_text="hello from the worker\n", samples=[1.0],
                         artifacts={"environment.txt": "torch==2.13.0\n"})

    location = MlflowClient(uri).get_experiment_by_name(experiment).artifact_location
    assert location.startswith((tmp_path / "mlartifacts").as_uri())
    logs = list((tmp_path / "mlartifacts").rglob("worker.log"))
    assert [p.read_text() for p in logs] == ["hello from the worker\n"]
    freezes = list((tmp_path / "mlartifacts").rglob("environment.txt"))
    assert [p.read_text() for p in freezes] == ["torch==2.13.0\n"]
    parent_tags = MlflowClient(uri).get_run(parent).data.tags
    assert parent_tags["versweep.trial_order"].startswith("interleaved: repeat by repeat")
    assert str(tmp_path / "mlflow.db") in records_location(uri)
    assert mlflow_ui_command(uri) == f"mlflow ui --backend-store-uri sqlite:///{tmp_path}/mlflow.db"


def test_mlflow_ui_on_the_embedded_database_serves_its_artifacts(mlflow_server, experiment,
                                                                 tmp_path):
    # `mlflow ui --backend-store-uri sqlite:///...` is an mlflow server on that file: write
    # into the server's own database file as the embedded default does, then ask the
    # server for the artifact the way the UI's artifact view does.
    records = SweepRecords(f"sqlite:///{mlflow_server.db}", experiment)
    parent = records.open_sweep(make_sweep(tmp_path, (env_trial(0),)), resume=False)
    run_id = records.start_trial(parent, env_trial(0))
    records.finish_trial(run_id, "ok", log_text="visible in the UI\n")

    listing_url = (f"{mlflow_server.url}/ajax-api/2.0/mlflow/artifacts/list?"
                   + urllib.parse.urlencode({"run_id": run_id}))
    with urllib.request.urlopen(listing_url, timeout=10) as answer:
        listed = [f["path"] for f in json.load(answer)["files"]]
    assert listed == ["worker.log"]
    artifact_url = (f"{mlflow_server.url}/get-artifact?"
                    + urllib.parse.urlencode({"path": "worker.log", "run_uuid": run_id}))
    with urllib.request.urlopen(artifact_url, timeout=10) as answer:
        assert answer.read().decode() == "visible in the UI\n"


def test_hundreds_of_steps_cost_a_few_round_trips(mlflow_server, experiment, tmp_path):
    records = SweepRecords(mlflow_server.url, experiment)
    parent = records.open_sweep(make_sweep(tmp_path, ()), resume=False)
    run_id = records.start_trial(parent, env_trial(0))
    before = mlflow_server.requests("/runs/log-batch")
    steps = 300
    for step in range(steps):  # a benchmark's chunks, milliseconds apart
        records.log_event(run_id, {"v": 1, "event": "metric", "step": step,
                                   "metrics": {"ms_per_batch": 2.0 + step % 7}})
    records.log_event(run_id, {"v": 1, "event": "result", "metrics": {"ms_per_batch_mean": 5.0}})
    records.finish_trial(run_id, "ok")
    time.sleep(0.5)  # let the server write its access log
    round_trips = mlflow_server.requests("/runs/log-batch") - before
    assert round_trips <= 10, f"{round_trips} log-batch requests for {steps} steps"
    history = MlflowClient(mlflow_server.url).get_metric_history(run_id, "ms_per_batch")
    assert sorted(m.step for m in history) == list(range(steps))


def test_nested_and_overlong_config_values_become_params_mlflow_accepts(tmp_path, experiment,
                                                                       empty_store):
    shutil.copyfile(empty_store, tmp_path / "mlflow.db")
    config = {"lr_schedule": {"milestones": [5, 10], "gamma": 0.5}, "data_dir": "/d" * 4000,
              "labels_per_sample": None, "check": True}
    spec = TrialSpec("ptb_lm", "local", tuple(sorted(config.items())), 0, 0)
    records = SweepRecords(default_tracking_uri(tmp_path), experiment)
    parent = records.open_sweep(make_sweep(tmp_path, (spec,)), resume=False)
    run_id = records.start_trial(parent, spec)
    records.finish_trial(run_id, "ok")

    params = MlflowClient(default_tracking_uri(tmp_path)).get_run(run_id).data.params
    assert params["lr_schedule.milestones.0"] == "5"
    assert params["lr_schedule.milestones.1"] == "10"
    assert params["lr_schedule.gamma"] == "0.5"
    assert params["labels_per_sample"] == "null" and params["check"] == "true"
    assert len(params["data_dir"]) == 6000 and params["data_dir"].endswith("...[truncated]")
    assert params["data_dir"].startswith("/d/d/d")


def test_records_sent_to_another_process_open_the_store_there(tmp_path, experiment,
                                                              empty_store):
    # Ray pickles what a trainable closes over; the copy must work on its own.
    shutil.copyfile(empty_store, tmp_path / "mlflow.db")
    records = SweepRecords(default_tracking_uri(tmp_path), experiment)
    parent = records.open_sweep(make_sweep(tmp_path, ()), resume=False)
    copy = pickle.loads(pickle.dumps(records))
    run_id = copy.start_trial(parent, env_trial(3))
    copy.finish_trial(run_id, "ok")
    assert records.finished_trial_keys(parent) == {env_trial(3).key: "ok"}


# --------------------------------------------------------------------------- resume


def test_resume_finds_the_sweep_and_kills_stale_trial_runs(tracking_uri, experiment, tmp_path):
    done, interrupted, untouched = env_trial(0), env_trial(1), env_trial(2)
    sweep = make_sweep(tmp_path, (done, interrupted, untouched))

    # First driver: one trial decided, one in flight when the driver is killed.
    first = SweepRecords(tracking_uri, experiment)
    parent = first.open_sweep(sweep, resume=False)
    done_run = first.start_trial(parent, done)
    first.finish_trial(done_run, "ok")
    stale_run = first.start_trial(parent, interrupted)
    first.log_event(stale_run, {"v": 1, "event": "metric", "step": 0, "metrics": {"x": 1.0}})
    # The driver dies here: no finish_trial, no close_sweep. Its trial process lives on
    # (a Ray worker of the dead driver) and will try to finish its run late.
    leftover_trial_process = first

    second = SweepRecords(tracking_uri, experiment)
    assert second.open_sweep(sweep, resume=True) == parent
    client = MlflowClient(tracking_uri)
    assert client.get_run(parent).info.status == "RUNNING"
    assert second.finished_trial_keys(parent) == {done.key: "ok"}

    for spec in (interrupted, untouched):
        run_id = second.start_trial(parent, spec)
        second.finish_trial(run_id, "unsupported" if spec is untouched else "ok")
    # The leftover finishes after the resumed sweep ran the trial again: its run was
    # superseded and stays KILLED, so the key still has exactly one FINISHED run.
    leftover_trial_process.finish_trial(stale_run, "ok")
    assert client.get_run(stale_run).data.tags["versweep.superseded"] == "true"
    assert second.finished_trial_keys(parent) == {done.key: "ok", interrupted.key: "ok",
                                                  untouched.key: "unsupported"}
    second.close_sweep(parent, {"ok": 2, "unsupported": 1}, None)

    assert client.get_run(parent).info.status == "FINISHED"
    assert client.get_run(stale_run).info.status == "KILLED"
    trials = second.list_trials(parent)
    finished = [t["key"] for t in trials if t["run_status"] == "FINISHED"]
    assert sorted(finished) == sorted(t.key for t in sweep.trials)  # one each, none twice
    assert [t["run_status"] for t in trials if t["key"] == interrupted.key] == \
        ["KILLED", "FINISHED"]


def test_resume_marks_every_run_a_killed_driver_left_running_killed(tracking_uri, experiment,
                                                                    tmp_path):
    # A search never samples an interrupted config again, so start_trial never meets its
    # stale run: --resume itself must end it, or it stays RUNNING for good.
    done, interrupted = env_trial(0), env_trial(1)
    sweep = make_sweep(tmp_path, (done, interrupted))
    first = SweepRecords(tracking_uri, experiment)
    parent = first.open_sweep(sweep, resume=False)
    first.finish_trial(first.start_trial(parent, done), "ok")
    stale_run = first.start_trial(parent, interrupted)  # then the driver is killed

    second = SweepRecords(tracking_uri, experiment)
    assert second.open_sweep(sweep, resume=True) == parent
    assert second.mark_interrupted_trials(parent) == 1
    client = MlflowClient(tracking_uri)
    stale = client.get_run(stale_run)
    assert stale.info.status == "KILLED"
    assert stale.data.tags["versweep.message"].endswith("resumed with --resume")
    assert second.finished_trial_keys(parent) == {done.key: "ok"}  # decided runs untouched
    assert second.mark_interrupted_trials(parent) == 0
    first.finish_trial(stale_run, "ok")  # the old trial process, late: stays KILLED
    assert client.get_run(stale_run).info.status == "KILLED"


def test_resume_prefers_the_newest_unfinished_sweep(tracking_uri, experiment, tmp_path):
    sweep = make_sweep(tmp_path, (env_trial(0),))
    records = SweepRecords(tracking_uri, experiment)
    interrupted = records.open_sweep(sweep, resume=False)
    time.sleep(0.01)  # distinct start times
    completed = records.open_sweep(sweep, resume=False)
    records.close_sweep(completed, {}, None)
    assert records.open_sweep(sweep, resume=True) == interrupted

    records.close_sweep(interrupted, {}, None)
    time.sleep(0.01)
    newest = records.open_sweep(sweep, resume=False)
    records.close_sweep(newest, {}, None)
    assert records.open_sweep(sweep, resume=True) == newest  # all finished: the newest


def test_resume_refuses_a_sweep_written_by_a_newer_versweep(tracking_uri, experiment,
                                                            tmp_path):
    from sweeps.records.layout import SCHEMA_TAG, SCHEMA_VERSION

    sweep = make_sweep(tmp_path, (env_trial(0),))
    records = SweepRecords(tracking_uri, experiment)
    parent = records.open_sweep(sweep, resume=False)
    assert records.client.get_run(parent).data.tags[SCHEMA_TAG] == str(SCHEMA_VERSION)
    records.client.set_tag(parent, SCHEMA_TAG, str(SCHEMA_VERSION + 1))
    with pytest.raises(UserError, match=rf"^--resume: sweep run {parent} was written by a "
                                        r"newer versweep \(records layout"):
        records.open_sweep(sweep, resume=True)
    assert records.client.get_run(parent).data.tags.get("versweep.resumes") is None


@pytest.mark.parametrize("situation", ["no experiment", "no sweep of that name"])
def test_resume_with_nothing_to_resume_is_one_clear_line(tracking_uri, experiment, tmp_path,
                                                         situation):
    if situation == "no sweep of that name":
        SweepRecords(tracking_uri, experiment).open_sweep(
            make_sweep(tmp_path, (), name="other"), resume=False)
    records = SweepRecords(tracking_uri, experiment)
    with pytest.raises(UserError) as raised:
        records.open_sweep(make_sweep(tmp_path, ()), resume=True)
    message = str(raised.value)
    assert "\n" not in message
    assert "'recordtest'" in message and experiment in message and "without --resume" in message


# --------------------------------------------------------------------------- concurrency

WRITER = textwrap.dedent("""\
    # One trial process: open the store, say so, wait for the sweep's parent run, write.
    import json, sys
    from sweeps.records.store import SweepRecords
    from sweeps.grid.spec import TrialSpec

    uri, experiment, writer = sys.argv[1:4]
    trials, steps = int(sys.argv[4]), int(sys.argv[5])
    records = SweepRecords(uri, experiment)
    print("ready", records.experiment_id(create=True), flush=True)
    parent = sys.stdin.readline().strip()
    for t in range(trials):
        spec = TrialSpec("env", "local", (("seed", 100 * int(writer) + t),), t, int(writer))
        run_id = records.start_trial(parent, spec)
        for step in range(steps):
            records.log_event(run_id, {"v": 1, "event": "metric", "step": step,
                                       "metrics": {"loss": 1.0 / (step + 1), "step_seconds": 0.1,
                                                   "words_per_second": float(step)}})
            records.flush(run_id)  # one write per step, as when epochs end minutes apart
        records.log_event(run_id, {"v": 1, "event": "result", "metrics": {"final": 1.0},
                                   "samples": [0.1] * steps})
        records.finish_trial(run_id, "ok", log_text="writer %s trial %d\\n" % (writer, t))
    print(json.dumps({"writer": writer, "done": True}))
    """)


@pytest.fixture(params=["sqlite", "server"])
def new_store_uri(request, tmp_path):
    """A SQLite file nobody has opened yet, or the session's mlflow server."""
    if request.param == "sqlite":
        return default_tracking_uri(tmp_path)
    return request.getfixturevalue("mlflow_server").url


def test_processes_write_trials_to_one_store_at_once(new_store_uri, experiment, tmp_path):
    # The writers first open the store together: for SQLite a database that does not
    # exist yet, which mlflow 3.17 alone creates without a lock (several processes doing
    # that at once fail, and can leave the file broken); and they create the experiment
    # together. Then each writes its trials while the others do.
    writers, trials, steps = 4, 2, 15
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, new_store_uri, experiment, str(w),
                               str(trials), str(steps)],
                              cwd=ROOT, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
             for w in range(writers)]
    ready = [p.stdout.readline().split() for p in procs]
    failed_to_open = [p.communicate()[1][-3000:] for p, line in zip(procs, ready, strict=True)
                      if not line]
    assert not failed_to_open, failed_to_open[0]
    assert len({experiment_id for _, experiment_id in ready}) == 1  # one experiment, not four

    records = SweepRecords(new_store_uri, experiment)
    parent = records.open_sweep(make_sweep(tmp_path, ()), resume=False)
    outcomes = [(p.communicate(parent + "\n", timeout=180), p.returncode) for p in procs]
    for (out, err), code in outcomes:
        assert code == 0 and '"done": true' in out, err[-3000:]

    client = MlflowClient(new_store_uri)
    written = records.list_trials(parent)
    assert len(written) == writers * trials
    assert all(t["run_status"] == "FINISHED" and t["status"] == "ok" for t in written)
    for trial in written:
        history = client.get_metric_history(trial["run_id"], "loss")
        assert sorted(m.step for m in history) == list(range(steps))
        assert trial["metrics"]["final"] == 1.0
    assert len(records.finished_trial_keys(parent)) == writers * trials


# --------------------------------------------------------------------------- tracking URIs


def test_tracking_uri_comes_from_the_flag_then_the_environment_then_the_default(
        tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert resolve_tracking_uri(None, tmp_path) == f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert resolve_tracking_uri(None, tmp_path) == "http://127.0.0.1:5000"
    # A relative SQLite path means the directory the user ran in, not a Ray trial's.
    assert resolve_tracking_uri("sqlite:///runs/x.db", tmp_path) == \
        f"sqlite:///{tmp_path}/runs/x.db"
    assert resolve_tracking_uri("records.db", tmp_path) == f"sqlite:///{tmp_path}/records.db"
    # ~ is the user's home in a SQLite URI as in a bare path, not a folder named "~" here.
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert resolve_tracking_uri("sqlite:///~/x.db", tmp_path) == \
        f"sqlite:///{tmp_path}/home/x.db"
    assert resolve_tracking_uri("~/y.db", tmp_path) == f"sqlite:///{tmp_path}/home/y.db"
    assert mlflow_ui_command("http://127.0.0.1:5000") == "open http://127.0.0.1:5000"
    assert "tracking server http://127.0.0.1:5000" in records_location("http://127.0.0.1:5000")


@pytest.mark.parametrize("value", ["ftp://somewhere/store", "sqlite://", "sqlite:///:memory:",
                                   "notauri", "file:///tmp/store"])
def test_an_unusable_tracking_uri_is_one_clear_line(tmp_path, monkeypatch, value):
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    with pytest.raises(UserError) as raised:
        resolve_tracking_uri(value, tmp_path)
    assert "\n" not in str(raised.value) and "--tracking-uri" in str(raised.value)


def test_a_store_that_cannot_open_is_one_line_in_seconds_not_mlflows_retries(tmp_path):
    # MLflow retries an engine it cannot make for about two minutes, then a traceback;
    # each of these is one line at once, and nothing is written in the wrong place.
    text = tmp_path / "notes.db"
    text.write_text("not a database\n")
    database = f"postgresql+psycopg2://u@127.0.0.1:{free_port()}/db"
    cases = {
        f"sqlite:///{text}": "is not a SQLite database",
        "sqlite:////proc/versweep-test.db": "cannot open the SQLite store",
        "mysql://u@127.0.0.1:1/db": "database driver 'MySQLdb' is not installed",
        database: "cannot reach the database of MLflow store",
        "sqlite:////dev/null": "/dev/null is not a regular file",
        # A Unix socket where no PostgreSQL listens: checked too, not MLflow's retries.
        f"postgresql+psycopg2://u@/db?host={tmp_path}": "no PostgreSQL socket "
                                                       f"{tmp_path}/.s.PGSQL.5432",
    }
    for uri, expected in cases.items():
        started = time.monotonic()
        with pytest.raises(UserError) as raised:
            SweepRecords(uri, "nowhere")
        message = str(raised.value)
        assert "\n" not in message and expected in message, (uri, message)
        assert time.monotonic() - started < 15, uri
    assert text.read_text() == "not a database\n"


def test_an_unreachable_server_is_one_clear_line():
    # Checked before MLflow's client would spend minutes retrying a refused connection.
    with pytest.raises(UserError) as raised:
        SweepRecords(f"http://127.0.0.1:{free_port()}", "nowhere")
    message = str(raised.value)
    assert "\n" not in message and "cannot reach the MLflow tracking server" in message


# --------------------------------------------------------------------------- odd input


def sqlite_copy(tmp_path: Path, empty_store: Path) -> str:
    shutil.copyfile(empty_store, tmp_path / "mlflow.db")
    return default_tracking_uri(tmp_path)


def test_a_metric_event_without_a_step_is_recorded_at_the_next_step(tmp_path, experiment,
                                                                    empty_store):
    # "step": null (or none at all) must not crash the writer, nor pile every such
    # value onto one step: it goes one step after the last recorded one (0 at first).
    uri = sqlite_copy(tmp_path, empty_store)
    records = SweepRecords(uri, experiment)
    parent = records.open_sweep(make_sweep(tmp_path, ()), resume=False)
    run_id = records.start_trial(parent, env_trial(0))
    for step, loss in ((None, 4.0), (None, 3.0), (5, 2.0), ("missing", 1.5)):
        event = {"v": 1, "event": "metric", "metrics": {"loss": loss}}
        if step != "missing":
            event["step"] = step
        records.log_event(run_id, event)
    records.log_event(run_id, {"v": 1, "event": "result", "metrics": {"final_loss": 1.0}})
    records.finish_trial(run_id, "ok")
    client = MlflowClient(uri)
    history = sorted((m.step, m.value) for m in client.get_metric_history(run_id, "loss"))
    assert history == [(0, 4.0), (1, 3.0), (5, 2.0), (6, 1.5)]
    assert [m.step for m in client.get_metric_history(run_id, "final_loss")] == [6]
    assert client.get_run(run_id).info.status == "FINISHED"


@pytest.mark.parametrize("value", ["plain-0f3a", "o'brien", 'say "hi"', "back\\slash"])
def test_quote_makes_a_filter_literal_that_matches_exactly_its_value(tmp_path, empty_store,
                                                                     experiment, value):
    # MLflow's filter grammar has no escape character: a backslash is kept as it is.
    from sweeps.records.store import quote

    uri = sqlite_copy(tmp_path, empty_store)
    client = MlflowClient(uri)
    experiment_id = client.create_experiment(experiment)
    wanted = client.create_run(experiment_id, tags={"t": value}).info.run_id
    for other in ("o\\'brien", "plain", "say", "back\\\\slash"):
        client.create_run(experiment_id, tags={"t": other})
    found = client.search_runs([experiment_id], filter_string=f"tags.t = {quote(value)}")
    assert [run.info.run_id for run in found] == [wanted]


def test_a_trial_key_with_a_quote_finds_its_decided_run(tmp_path, empty_store, experiment):
    records = SweepRecords(sqlite_copy(tmp_path, empty_store), experiment)
    parent = records.open_sweep(make_sweep(tmp_path, ()), resume=False)
    run_id = records.start_trial(parent, env_trial(0))
    records.tag_run(run_id, {"versweep.trial_key": "o'brien"})
    records.finish_trial(run_id, "ok")
    assert records.decided_run(parent, "o'brien") == run_id
    assert records.decided_run(parent, "o") is None


def test_every_mlflow_filter_value_goes_through_quote():
    # A value put between quotes by hand (a run id, a trial key) breaks, or changes, the
    # filter when it holds a quote; records.quote is the one way to write one.
    import re

    by_hand = re.compile(r"""(?:tags|attributes|params|metrics)\.[`\w.]+`?\s*(?:=|!=|LIKE)\s*"""
                         r"""['"]\{""", re.IGNORECASE)
    offenders = []
    for path in sorted([*(ROOT / "sweeps").rglob("*.py"), *(ROOT / "analysis").rglob("*.py")]):
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if by_hand.search(line):
                offenders.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert offenders == []


def test_descriptions_keep_a_users_own_and_count_each_run_of_the_sweep(tracking_uri, experiment,
                                                                      tmp_path):
    """The experiment's description is written once (a user's own stays); a resumed sweep's
    counts replace the earlier ones, and an interrupted one says how to go on."""
    client = MlflowClient(tracking_uri)
    experiment_id = client.create_experiment(experiment)
    client.set_experiment_tag(experiment_id, "mlflow.note.content", "our nightly numbers")
    sweep = make_sweep(tmp_path, (env_trial(0),))
    records = SweepRecords(tracking_uri, experiment)
    parent = records.open_sweep(sweep, resume=False)
    records.close_sweep(parent, {"ok": 0, "failed": 0}, None, interrupted=True)
    note = client.get_run(parent).data.tags["mlflow.note.content"]
    assert note.startswith("records test grid\n\n**Trials** (interrupted (resume it with "
                           "--resume) ") and note.endswith(": 0 trials: 0 ok, 0 failed.")
    assert records.open_sweep(sweep, resume=True) == parent
    records.close_sweep(parent, {"ok": 1, "failed": 0}, None)
    note = client.get_run(parent).data.tags["mlflow.note.content"]
    assert note.count("**Trials**") == 1 and note.endswith(": 1 trials: 1 ok, 0 failed.")
    tags = client.get_experiment(experiment_id).tags
    assert tags["mlflow.note.content"] == "our nightly numbers"
    assert tags["mlflow.experimentKind"] == "custom_model_development"


# --------------------------------------------------------------------------- UI addresses


@pytest.mark.parametrize(("tracking_uri", "chosen", "base"), [
    ("sqlite:////tmp/x/mlflow.db", None, "http://127.0.0.1:5000"),
    ("http://127.0.0.1:5001", None, "http://127.0.0.1:5001"),
    ("https://alice:s3cret@mlflow.example.org/tracking/", None,
     "https://mlflow.example.org/tracking"),  # a token in the URI never reaches a report
    ("sqlite:////tmp/x/mlflow.db", "http://ui.example:8080/", "http://ui.example:8080"),
])
def test_the_ui_a_report_links_to(tracking_uri, chosen, base):
    from sweeps.records.layout import run_url, ui_base

    assert ui_base(tracking_uri, chosen) == base
    assert run_url(base, "3", "abc") == \
        f"{base}/#/experiments/3/runs/abc?workflowType=machine_learning"


# --------------------------------------------------------------------------- source, datasets


def test_every_run_names_the_projects_git_revision_as_its_source(tracking_uri, experiment,
                                                                tmp_path):
    import subprocess

    from sweeps.records.store import PROJECT_ROOT, source_tags

    head = subprocess.run(["git", "-C", str(PROJECT_ROOT), "rev-parse", "HEAD"],
                          capture_output=True, text=True)
    if head.returncode != 0:
        pytest.skip("versweep is not a git checkout here")
    records = SweepRecords(tracking_uri, experiment)
    sweep = make_sweep(tmp_path, (env_trial(0),))
    parent = records.open_sweep(sweep, resume=False)
    child = records.start_trial(parent, sweep.trials[0])
    client = MlflowClient(tracking_uri)
    for run_id in (parent, child):
        tags = client.get_run(run_id).data.tags
        assert tags["mlflow.source.git.commit"] == head.stdout.strip()
        assert tags["mlflow.source.type"] == "LOCAL"
        assert tags["versweep.git_dirty"] in ("true", "false")
        assert "@" not in tags.get("mlflow.source.git.repoURL", "")
    assert source_tags()["mlflow.source.name"] == "sweeps/run.py"  # the UI shows "run.py"


def test_a_real_corpus_is_the_trials_mlflow_dataset_and_a_synthetic_one_is_not(
        tracking_uri, experiment, tmp_path):
    from workers.ptb_data import CANONICAL_BLOB_IDS

    records = SweepRecords(tracking_uri, experiment)
    sweep = make_sweep(tmp_path, (env_trial(0), env_trial(1)))
    parent = records.open_sweep(sweep, resume=False)
    real, synthetic = (records.start_trial(parent, t) for t in sweep.trials)
    records.log_event(real, {"v": 1, "event": "env", "torch": "2.13.0", "data": {
        "synthetic": False, "source": "/data/ptb", "canonical_ptb": True,
        "git_blob_sha1": dict(CANONICAL_BLOB_IDS)}})
    records.log_event(synthetic, {"v": 1, "event": "env", "torch": "2.13.0", "data": {
        "synthetic": True, "source": "synthetic(words=1000, vocab=50, seed=0)"}})
    client = MlflowClient(tracking_uri)
    inputs = client.get_run(real).inputs.dataset_inputs
    assert len(inputs) == 1
    dataset = inputs[0].dataset
    assert dataset.name == "ptb" and json.loads(dataset.source) == {"uri": "/data/ptb"}
    assert json.loads(dataset.profile)["canonical_ptb"] is True
    assert {t.key: t.value for t in inputs[0].tags} == {"mlflow.data.context": "train"}
    assert client.get_run(synthetic).inputs.dataset_inputs == []


def test_the_key_view_gains_a_new_workloads_columns_and_keeps_the_old(tmp_path):
    """The experiment's saved runs-table view: each workload's best metric and the status
    and version tags; a later sweep of another workload adds its column, keeps the rest."""
    from sweeps.records.store import key_view

    bench_only = make_sweep(tmp_path, (bench_trial("cudnn"),))
    first = key_view(None, bench_only, now_ms=1000)
    envelope = json.loads(first)
    assert envelope["name"] == "versweep: key metrics" and envelope["createdAt"] == 1000
    assert json.loads(envelope["state"])["selectedColumns"] == [
        "metrics.`ms_per_batch_median`", "tags.`versweep.status`", "tags.`versweep.torch`",
        "tags.`versweep.cuda`", "tags.`versweep.cudnn`"]
    # The run name column is made wide enough for the sweep's names, and the table's
    # columns are ordered (MLflow applies a width only to a column its state orders).
    state = json.loads(envelope["state"])
    longest = len(bench_trial("cudnn").name) + len(" · 3f9a1c")
    assert state["columnWidths"] == {"attributes.`Run Name`": 7 * longest + 60}
    assert state["columnOrder"] == ["attributes.`Run Name`", "runDateAndNestInfo", "duration",
                                    *state["selectedColumns"]]
    assert key_view(first, bench_only, now_ms=2000) is None  # nothing new: not rewritten
    with_env = make_sweep(tmp_path, (env_trial(0), bench_trial("fused")))
    assert key_view(first, with_env) is None  # env has no best metric
    # A user's own column, added in the UI's view, stays; a broken view is replaced.
    state = json.loads(envelope["state"])
    state["selectedColumns"].insert(0, "params.`hidden_size`")
    edited = json.dumps({**envelope, "state": json.dumps(state)})
    assert key_view(edited, bench_only) is None
    repaired = json.loads(key_view("{not json", bench_only))
    assert json.loads(repaired["state"])["selectedColumns"][0] == "metrics.`ms_per_batch_median`"


class _AnswerDroppingProxy:
    """An HTTP proxy in front of a tracking server that, for the requests to create a run
    whose numbers (1, 2, ...) are in ``drop``, passes the request on (the server commits
    the run) and then closes the connection without the answer: a server killed between
    its commit and its reply."""

    def __init__(self, upstream: str, drop: set[int]):
        import http.server
        import threading

        proxy = self
        self.creates = 0
        self.dropped = 0

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def _forward(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                request = urllib.request.Request(
                    upstream + self.path, data=body if self.command != "GET" else None,
                    method=self.command,
                    headers={k: v for k, v in self.headers.items()
                             if k.lower() not in ("host", "content-length", "connection")})
                try:
                    with urllib.request.urlopen(request, timeout=30) as answer:
                        status, headers, data = answer.status, answer.headers, answer.read()
                except urllib.error.HTTPError as error:
                    status, headers, data = error.code, error.headers, error.read()
                if self.path.split("?")[0].endswith("/runs/create"):
                    proxy.creates += 1
                    if proxy.creates in drop:
                        proxy.dropped += 1
                        self.close_connection = True
                        return  # committed upstream; the answer never comes back
                self.send_response(status)
                for key, value in headers.items():
                    if key.lower() not in ("transfer-encoding", "connection",
                                           "content-length"):
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PATCH = do_DELETE = do_PUT = _forward

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def test_a_create_whose_answer_was_lost_leaves_one_run_not_two(mlflow_server, experiment,
                                                                tmp_path):
    # The server takes the parent's and the first trial's create and dies before it
    # answers; the client sends each again (MLflow's own retries, then retrying()). Each
    # must end as exactly one run: the cause of "inconsistent records" in the outage test.
    # Create 1 is the parent's (2: its resend), 3 the first trial's (4: its resend).
    proxy = _AnswerDroppingProxy(mlflow_server.url, drop={1, 3})
    try:
        records = SweepRecords(proxy.url, experiment)
        trials = (env_trial(0), env_trial(1))
        parent = records.open_sweep(make_sweep(tmp_path, trials), resume=False)
        for spec in trials:
            run_id = records.start_trial(parent, spec)
            records.finish_trial(run_id, "ok", log_text="done\n")
        records.close_sweep(parent, {"ok": 2}, None)
    finally:
        proxy.close()
    assert (proxy.dropped, proxy.creates) == (2, 5)
    client = MlflowClient(mlflow_server.url)
    found = client.get_experiment_by_name(experiment)
    runs = client.search_runs([found.experiment_id], run_view_type=ViewType.ACTIVE_ONLY)
    assert sorted(r.info.status for r in runs) == ["FINISHED"] * 3, [
        (r.info.run_name, r.info.status) for r in runs]
    assert sorted(r.data.tags.get("versweep.kind") for r in runs) == ["sweep", "trial",
                                                                      "trial"]

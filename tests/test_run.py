"""`python sweeps/run.py` as a user runs it: real Ray, real workers, real MLflow.

Every sweep here runs the real command in a child process, in a fresh working
directory, with its own Ray temp dir (so parallel test runs never share a Ray
cluster), and then reads what it recorded the way a user would: through MLflow.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time

import pytest
from loopback_cluster import ray_cli
from sweeping import (
    RUN,
    env_grid,
    free_port,
    own_pids_mentioning,
    running_mlflow_server,
    sweep_env,
    sweep_runs,
    versweep,
)


def artifact_names(client, run_id: str) -> set[str]:
    return {a.path for a in client.list_artifacts(run_id)}


SEARCH_GRID = textwrap.dedent("""
    [sweep]
    name = "tiny_search"
    backend = "local"
    device = "cpu"
    trial_timeout_s = 120
    max_concurrent = 1

    [search]
    workload = "ptb_lm"
    config.hidden_size = 16
    config.num_layers = 1
    config.num_steps = 5
    config.batch_size = 4
    config.max_epochs = 3
    config.max_steps_per_epoch = 5
    config.max_eval_steps = 3
    config.synthetic_words = 3000
    config.synthetic_vocab = 50
    config.num_threads = 1
    metric = "valid_perplexity"
    mode = "min"
    num_samples = 2
    sampler = "tpe"
    seed = 0

    [search.space.learning_rate]
    type = "loguniform"
    low = 0.01
    high = 100.0

    [search.scheduler]
    type = "asha"
    grace_period = 1
    reduction_factor = 2
""")


def test_the_smoke_grid_runs_end_to_end_into_a_local_store(tmp_path, ray_tmp):
    done = versweep(["--grid", "smoke"], cwd=tmp_path, ray_tmp=ray_tmp)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    assert "trials: 6 ok, 0 unsupported, 0 failed, 0 diverged, 0 stopped" in done.stdout
    assert f"see them: mlflow ui --backend-store-uri {uri}" in done.stdout
    assert re.search(r"then open http://127\.0\.0\.1:5000/#/experiments/\d+/runs\?"
                     r"workflowType=machine_learning&viewStateShareKey=versweep", done.stdout)
    assert re.search(r"ptb_lm\s+test_perplexity [\d.]+", done.stdout)
    assert "Number of trials: 6/6" in done.stdout  # Ray Tune's progress table

    client, parents, children = sweep_runs(uri, "smoke")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    parent = parents[0]
    assert parent.data.tags["versweep.summary.ok"] == "6"
    assert "smoke.toml" in artifact_names(client, parent.info.run_id)
    assert len(children) == 6
    assert len({c.data.tags["versweep.trial_key"] for c in children}) == 6
    for child in children:
        assert child.info.status == "FINISHED"
        assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert child.data.tags["versweep.status"] == "ok"
        assert child.data.tags["versweep.device"] == "cpu"
        assert float(child.data.tags["versweep.startup_seconds"]) > 0
        assert "worker.log" in artifact_names(client, child.info.run_id)
        # The run's duration in the MLflow UI is at least the trial's own wall time (the
        # run is created while the worker starts, but dated from the trial's start).
        duration = (child.info.end_time - child.info.start_time) / 1000
        assert duration >= float(child.data.tags["versweep.wall_seconds"]) - 0.01
        # Named by the trial and its sweep's run.
        assert child.info.run_name.endswith(f" · {parent.info.run_id[:6]}")
    assert "_trainable_" not in done.stdout  # Tune's table shows the trials' own names
    lm = [c for c in children if c.data.tags["versweep.workload"] == "ptb_lm"]
    assert len(lm) == 1 and lm[0].data.metrics["test_perplexity"] > 1
    history = client.get_metric_history(lm[0].info.run_id, "valid_perplexity")
    assert sorted({m.step for m in history}) == [1, 2]  # one value per epoch
    bench = [c for c in children if c.data.tags["versweep.workload"] == "rnn_bench"]
    assert all(c.data.metrics["ms_per_batch_median"] > 0 for c in bench)
    assert all("samples.json" in artifact_names(client, c.info.run_id) for c in bench)
    # The parent run holds the best of each workload's comparison group, linked from its
    # description: the language model's, and one per benchmark variant.
    bests = {k.removesuffix(".run_id"): v for k, v in parent.data.tags.items()
             if k.startswith("versweep.best.") and k.endswith(".run_id")
             and k != "versweep.best.run_id"}
    assert "versweep.best.ptb_lm" in bests and bests["versweep.best.ptb_lm"] == lm[0].info.run_id
    assert len(bests) == 1 + len({(c.data.params["bench"], c.data.params["impl"])
                                  for c in bench})
    assert parent.data.metrics["best.ptb_lm.test_perplexity"] == \
        lm[0].data.metrics["test_perplexity"]
    note = parent.data.tags["mlflow.note.content"]
    assert (f"(#/experiments/{parent.info.experiment_id}/runs/{lm[0].info.run_id}"
            "?workflowType=machine_learning)") in note
    view = json.loads(client.get_experiment(parent.info.experiment_id).tags[
        "mlflow.sharedViewState.versweep"])
    assert view["name"] == "versweep: key metrics"
    columns = json.loads(view["state"])["selectedColumns"]
    assert sorted(columns[:2]) == ["metrics.`ms_per_batch_median`", "metrics.`test_perplexity`"]
    assert columns[2:] == ["tags.`versweep.status`", "tags.`versweep.torch`",
                           "tags.`versweep.cuda`", "tags.`versweep.cudnn`"]


def test_a_dry_run_of_the_versions_grid_prints_every_trial_and_starts_nothing(tmp_path,
                                                                              ray_tmp):
    from sweeps.grid.load import load_sweep

    expected = load_sweep("versions").trials
    done = versweep(["--grid", "versions", "--dry-run"], cwd=tmp_path, ray_tmp=ray_tmp)
    assert done.returncode == 0, done.stderr
    rows = [line for line in done.stdout.splitlines() if re.match(r"^\d+\s.* @ ", line)]
    assert len(rows) == len(expected) > 1000
    assert f"{len(expected)} trials; nothing started (dry run)" in done.stdout
    assert "each trial asks Ray for 1 GPU + 1 CPU" in done.stdout
    assert expected[0].name in rows[0] and expected[-1].name in rows[-1]
    # What the plan already knows is unsupported is shown, with the worker's own words.
    old_ctc = [row for row in rows if "4x320-ctc-long" in row and "@ torch-0.4." in row]
    assert old_ctc and all(row.rstrip().endswith(
        "unsupported: nn.CTCLoss needs torch>=1.0 and warpctc_pytorch is not installed "
        f"(torch-0.4.{row.split('@ torch-0.4.')[1][0]}-cu90 has torch "
        f"0.4.{row.split('@ torch-0.4.')[1][0]})") for row in old_ctc)
    assert f"{len(old_ctc)} of {len(expected)} trials are unsupported here" in done.stdout
    assert os.listdir(tmp_path) == []  # no MLflow store, no Ray results
    assert os.listdir(ray_tmp) == []  # no Ray session


def test_backend_local_runs_a_docker_grid_on_the_hosts_own_torch(capsys):
    from sweeps.execute.sweep import run_sweep

    assert run_sweep("nightly", backend="local", dry_run=True) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if re.match(r"^\d+\s.* @ ", line)]
    assert rows and all(" @ local #" in row for row in rows)
    assert "backend local" in out


def test_the_console_entry_point_takes_the_same_arguments(capsys):
    from sweeps.cli import main

    assert main(["--grid", "smoke", "--dry-run"]) == 0
    assert "6 trials; nothing started (dry run)" in capsys.readouterr().out


@pytest.mark.parametrize("args, message", [
    (["--grid", "{bad}"], r"bad\.toml: sweep\.bakend: unknown key \(did you mean 'backend'\?\)"),
    (["--grid", "smoke", "--backend", "lokal"], r"smoke\.toml: sweep\.backend: 'lokal' is not "
                                                r"one of local, docker, venv "
                                                r"\(did you mean 'local'"),
    pytest.param(["--grid", "versions"],
                 r"image\(s\) versweep:torch-0\.4\.0-cu90, .* not on this node; "
                 r"get them with: python images/build\.py pull torch-0\.4\.0-cu90 ",
                 id="versions-images-missing", marks=pytest.mark.needs("docker")),
    pytest.param(["--grid", "versions"],
                 r"the Docker daemon does not answer at unix:///nonexistent/docker\.sock",
                 id="versions-no-daemon"),
    (["--grid", "versions", "--matrix", "nope.toml"], r"--matrix 'nope\.toml': no such file"),
    (["--grid", "smoke", "--resume"], r"--resume: no earlier run of sweep 'smoke'"),
    (["--grid", "smoke", "--set", "sweep.max_concurent=1"], r"sweep\.max_concurent: unknown "
                                                            r"key"),
    (["--grid", "smoke", "--max-concurrent", "0"], r"argument --max-concurrent: 0 must be at "
                                                    r"least 1"),
])
def test_a_user_error_is_one_line_and_exit_2(request, tmp_path, ray_tmp, args, message):
    bad = tmp_path / "bad.toml"
    bad.write_text('[sweep]\nname = "bad"\nbakend = "local"\n\n[[group]]\nworkload = "env"\n')
    args = [a.replace("{bad}", str(bad)) for a in args]
    # Where a test asks for no engine, it points at one that surely does not answer.
    engine = request.node.get_closest_marker("needs") is not None
    env = sweep_env(ray_tmp) if engine else sweep_env(
        ray_tmp, DOCKER_HOST="unix:///nonexistent/docker.sock")
    done = subprocess.run([sys.executable, str(RUN), *args], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2
    errors = [line for line in done.stderr.splitlines() if line.startswith("versweep: error:")]
    assert len(errors) == 1 and re.search(message, errors[0]), done.stderr
    assert "Traceback" not in done.stderr
    assert os.listdir(ray_tmp) == []  # a bad grid never starts a trial


def test_a_search_records_its_best_trial_and_resume_continues_the_same_study(tmp_path,
                                                                            ray_tmp):
    import optuna

    grid = tmp_path / "tiny_search.toml"
    grid.write_text(SEARCH_GRID)
    first = versweep(["--grid", str(grid)], cwd=tmp_path, ray_tmp=ray_tmp)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert re.search(r"best trial by valid_perplexity: [\d.e+]+ ", first.stdout)

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client, parents, children = sweep_runs(uri, "tiny_search")
    assert len(parents) == 1 and len(children) == 2
    tags = parents[0].data.tags
    assert tags["versweep.best.metric"] == "valid_perplexity"
    best = [c for c in children if c.info.run_id == tags["versweep.best.run_id"]]
    assert len(best) == 1
    # The space reaches learning rates at which the tiny model diverges (a perplexity past
    # 10 x its vocabulary): such a trial is a result, with the bound in its message, and
    # the search goes on.
    assert {c.data.tags["versweep.status"] for c in children} <= {"ok", "stopped", "diverged"}
    assert all("beyond the bound" in c.data.tags["versweep.message"] for c in children
               if c.data.tags["versweep.status"] == "diverged")
    stopped = [c for c in children if c.data.tags["versweep.status"] == "stopped"]
    assert all(c.data.tags["versweep.message"].startswith("stopped early by ASHA at step")
               for c in stopped)

    storage = f"sqlite:///{tmp_path}/optuna.db"
    studies = optuna.get_all_study_summaries(storage)
    assert len(studies) == 1 and studies[0].n_trials == 2
    # Every trial named by its searched value and its sweep's run, in MLflow and in Tune's
    # progress table (not Tune's '_trainable_<id>').
    short = parents[0].info.run_id[:6]
    for child in children:
        rate = float(child.data.params["learning_rate"])
        assert child.info.run_name == f"ptb_lm small learning_rate={rate:.4g} @ local #0 · {short}"
        assert f"ptb_lm small learning_rate={rate:.4g} @ local #0" in first.stdout
    assert len({c.info.run_name for c in children}) == 2
    assert "_trainable_" not in first.stdout

    more = versweep(["--grid", str(grid), "--resume", "--set", "search.num_samples=4"],
                    cwd=tmp_path, ray_tmp=ray_tmp)
    assert more.returncode == 0, more.stdout[-3000:] + more.stderr[-3000:]
    assert "2 trial(s) already decided" in more.stdout
    studies = optuna.get_all_study_summaries(storage)
    assert len(studies) == 1 and studies[0].n_trials == 4  # the same study, grown
    client, parents, children = sweep_runs(uri, "tiny_search")
    assert len(parents) == 1 and len(children) == 4
    assert all(c.info.status == "FINISHED" for c in children)
    assert len({c.data.tags["versweep.trial_key"] for c in children}) == 4


def test_asha_stops_a_poor_trial_early_and_the_search_records_it(tmp_path, ray_tmp):
    # TPE's first samples are random draws from its seed and CPU training is deterministic,
    # so with one trial at a time the same learning rates meet the same ASHA rungs.
    grid = tmp_path / "asha.toml"
    grid.write_text(SEARCH_GRID.replace('name = "tiny_search"', 'name = "asha"')
                    .replace("num_samples = 2", "num_samples = 4")
                    .replace("config.max_epochs = 3", "config.max_epochs = 4"))
    done = versweep(["--grid", str(grid)], cwd=tmp_path, ray_tmp=ray_tmp)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert re.search(r"trials: \d+ ok, .* [1-9]\d* stopped", done.stdout), done.stdout[-2000:]

    client, _, children = sweep_runs(f"sqlite:///{tmp_path}/mlflow.db", "asha")
    stopped = [c for c in children if c.data.tags["versweep.status"] == "stopped"]
    finished = [c for c in children if c.data.tags["versweep.status"] == "ok"]
    assert stopped and finished
    for run in stopped:
        assert run.data.tags["versweep.message"].startswith("stopped early by ASHA at step")
        assert run.info.status == "FINISHED"  # ASHA's stop is a decision: resume skips it
        epochs = {m.step for m in client.get_metric_history(run.info.run_id,
                                                            "valid_perplexity")}
        assert 1 <= len(epochs) < 4  # its worker was stopped before the last epoch
        assert "test_perplexity" not in run.data.metrics
    for run in finished:
        history = client.get_metric_history(run.info.run_id, "valid_perplexity")
        assert {m.step for m in history} == {1, 2, 3, 4}
        assert "test_perplexity" in run.data.metrics


@pytest.fixture
def mlflow_server(tmp_path):
    """A real `mlflow server` on loopback, with its own store; its URL."""
    store = tmp_path / "server"
    store.mkdir()
    with running_mlflow_server(store, store / "mlflow.db") as url:
        yield url


def test_a_sweep_records_into_a_real_mlflow_server(tmp_path, ray_tmp, mlflow_server):
    grid = tmp_path / "two.toml"
    grid.write_text(env_grid("two", [1, 2]))
    done = versweep(["--grid", str(grid), "--tracking-uri", mlflow_server,
                     "--experiment", "on-a-server"], cwd=tmp_path, ray_tmp=ray_tmp)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert f"see them: open {mlflow_server}" in done.stdout
    assert not (tmp_path / "mlflow.db").exists()
    client, parents, children = sweep_runs(mlflow_server, "on-a-server")
    assert len(parents) == 1 and len(children) == 2
    for child in children:
        assert child.info.status == "FINISHED" and child.data.tags["versweep.status"] == "ok"
        assert "worker.log" in artifact_names(client, child.info.run_id)


def test_ctrl_c_stops_the_workers_records_the_trial_as_stopped_and_exits_130(tmp_path,
                                                                            ray_tmp):
    grid = tmp_path / "long.toml"
    # synthetic_words=3001 marks this test's workers in the process table.
    grid.write_text(textwrap.dedent("""
        [sweep]
        name = "long"
        backend = "local"
        device = "cpu"
        max_concurrent = 1

        [[group]]
        workload = "ptb_lm"
        axes.seed = [1, 2]
        config.hidden_size = 16
        config.num_layers = 1
        config.num_steps = 5
        config.batch_size = 4
        config.epochs = 10000          # the most the config takes: runs until stopped
        config.synthetic_words = 3001
        config.synthetic_vocab = 50
        config.num_threads = 1
    """))
    driver = subprocess.Popen([sys.executable, str(RUN), "--grid", str(grid), "--num-cpus", "2"],
                              cwd=tmp_path, env=sweep_env(ray_tmp), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    try:
        deadline = time.monotonic() + 240
        while True:  # until the first trial has logged an epoch
            assert driver.poll() is None, driver.communicate()
            assert time.monotonic() < deadline, "no epoch logged in 240 s"
            if (tmp_path / "mlflow.db").exists():
                try:
                    _, _, children = sweep_runs(uri, "long")
                except AssertionError:
                    children = []
                if any("valid_perplexity" in c.data.metrics for c in children):
                    break
            time.sleep(1)
        assert own_pids_mentioning('"synthetic_words":3001')
        driver.send_signal(signal.SIGINT)
        out, err = driver.communicate(timeout=180)
    finally:
        if driver.poll() is None:
            driver.kill()
    assert driver.returncode == 130, out[-3000:] + err[-3000:]
    assert "sweep interrupted" in out
    assert "Traceback" not in err
    deadline = time.monotonic() + 20
    while own_pids_mentioning('"synthetic_words":3001') and time.monotonic() < deadline:
        time.sleep(0.5)
    assert own_pids_mentioning('"synthetic_words":3001') == []
    _, parents, children = sweep_runs(uri, "long")
    started = [c for c in children if "valid_perplexity" in c.data.metrics]
    assert started and all(c.data.tags["versweep.status"] == "stopped" for c in started)
    # An interruption is not a decision: the runs end KILLED, so --resume runs them again.
    assert all(c.info.status == "KILLED" for c in started)
    assert [p.info.status for p in parents] == ["KILLED"]  # the sweep is not done either
    from sweeps.records.store import SweepRecords
    assert SweepRecords(uri, "long").finished_trial_keys(parents[0].info.run_id) == {}


def test_address_joins_an_existing_ray_cluster_and_leaves_it_running(tmp_path, ray_tmp):
    port = free_port()
    # The cluster and the sweep agree on no token authentication (Ray's default is a
    # token only the starting user's processes know about).
    env = sweep_env(ray_tmp, RAY_AUTH_MODE="disabled")
    started = subprocess.run([ray_cli(), "start", "--head", "--port", str(port), "--num-cpus", "2",
                              "--include-dashboard", "false", "--disable-usage-stats"],
                             env=env, capture_output=True, text=True, timeout=180)
    assert started.returncode == 0, started.stderr[-2000:]
    # The ray_tmp fixture ends this cluster's processes by pid afterwards (never `ray stop`,
    # which would end every Ray on the machine).
    grid = tmp_path / "two.toml"
    grid.write_text(env_grid("joined", [1, 2]))
    address = f"127.0.0.1:{port}"
    done = subprocess.run([sys.executable, str(RUN), "--grid", str(grid), "--address", address],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "trials: 2 ok" in done.stdout
    status = subprocess.run([ray_cli(), "status", "--address", address], env=env,
                            capture_output=True, text=True, timeout=120)
    assert status.returncode == 0 and "CPU" in status.stdout  # still there for the next sweep


def test_an_address_with_no_cluster_is_one_line_and_exit_2(tmp_path, ray_tmp):
    grid = tmp_path / "two.toml"
    grid.write_text(env_grid("nowhere", [1, 2]))
    done = subprocess.run([sys.executable, str(RUN), "--grid", str(grid), "--address",
                           f"127.0.0.1:{free_port()}"], cwd=tmp_path, env=sweep_env(ray_tmp),
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 2, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    assert re.search(r"^versweep: error: cannot join the Ray cluster at 127\.0\.0\.1:\d+: ",
                     done.stderr, re.MULTILINE)


def test_a_grid_runs_in_batches_of_tune_experiments_each_trial_once(tmp_path, ray_tmp,
                                                                    monkeypatch):
    """Tune keeps every trial of an experiment in the driver: a grid runs in batches
    (GRID_BATCH_TRIALS), and batching must neither lose nor repeat a trial."""
    import io

    from sweeps.execute import tune as sweep_tune
    from sweeps.execute.sweep import run_sweep

    monkeypatch.setenv("VERSWEEP_GRID_BATCH", "2")
    monkeypatch.setenv("RAY_TMPDIR", ray_tmp)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    grid = tmp_path / "batches.toml"
    grid.write_text(textwrap.dedent("""
        [sweep]
        name = "batches"
        backend = "local"
        device = "cpu"

        [[group]]
        workload = "env"
        axes.seed = [1, 2, 3]
        """))
    out = io.StringIO()
    try:
        assert run_sweep(str(grid), cwd=tmp_path, num_cpus=2, out=out) == 0, out.getvalue()
    finally:
        sweep_tune.shutdown()
    assert "trials: 3 ok, 0 unsupported, 0 failed, 0 diverged, 0 stopped" in out.getvalue()
    experiments = sorted(p.name for p in (tmp_path / "ray_results").iterdir()
                         if p.name.startswith("batches-"))
    assert len(experiments) == 2  # 2 + 1 trials
    _, parents, children = sweep_runs(f"sqlite:///{tmp_path}/mlflow.db", "batches")
    assert len(parents) == 1 and parents[0].data.tags["versweep.summary.ok"] == "3"
    keys = [c.data.tags["versweep.trial_key"] for c in children]
    assert len(keys) == len(set(keys)) == 3
    assert all(c.info.status == "FINISHED" for c in children)


@pytest.mark.parametrize("value", ["0", "-3", "many", "2.5"])
def test_a_bad_grid_batch_is_one_line_before_anything_starts(tmp_path, ray_tmp, value):
    done = versweep(["--grid", "smoke"], cwd=tmp_path, ray_tmp=ray_tmp,
                    VERSWEEP_GRID_BATCH=value)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"versweep: error: VERSWEEP_GRID_BATCH={value!r} is not a whole number of trials "
        "above 0; set it to e.g. 500, or unset it"]
    assert os.listdir(tmp_path) == [] and os.listdir(ray_tmp) == []

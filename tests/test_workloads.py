"""The workload plug-in contract, one suite run over every workload (sweeps/workloads).

Each plug-in (the shipped env, ptb_lm, rnn_bench and the example seq_copy) must say
exactly what its worker half reports: every metric it declares per step arrives in
`metric` events, every metric it declares in the result arrives in the `result`, and
nothing arrives that it does not declare (so a metric added to a worker without its
unit and direction fails here). A user's directory that is not a workload is one
clear line.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from sweeps import workloads
from sweeps.errors import UserError
from sweeps.workloads.base import LOWER, Metric, Workload

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "workloads" / "seq_copy"

# A tiny config per workload: each runs in seconds on one CPU thread.
TINY = {
    "env": {},
    "ptb_lm": {"preset": "small", "hidden_size": 8, "num_steps": 4, "batch_size": 2,
               "max_epochs": 2, "max_steps_per_epoch": 3, "synthetic_words": 800,
               "synthetic_vocab": 30},
    "rnn_bench": {"bench": "1x320-ce-short", "impl": "fused", "batch_size": 2, "seq_len": 4,
                  "input_size": 5, "hidden_size": 6, "batches": 6, "warmup_batches": 2,
                  "chunk_batches": 2},
    "seq_copy": {"steps": 20, "report_every": 10, "hidden_size": 8},
}
PLUGINS = {**workloads.SHIPPED, "seq_copy": workloads.load_dir(EXAMPLE)}


def run_worker(plugin: Workload, config: dict) -> list[dict]:
    args = [sys.executable, "-m", "workers", plugin.name, "--config",
            json.dumps({**config, "device": "cpu", "num_threads": 1})]
    if plugin.source is not None:
        args += ["--workload-dir", str(plugin.source)]
    done = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    return [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]


@pytest.mark.parametrize("name", sorted(PLUGINS))
def test_the_plugin_declares_exactly_what_its_worker_reports(name):
    plugin = PLUGINS[name]
    # The host's own check first, as the grid does; the worker resolves it the same way.
    config = workloads.resolve_config(plugin, {**TINY[name], "device": "cpu", "num_threads": 1})
    events = run_worker(plugin, config)
    per_step = set().union(*(e["metrics"] for e in events if e["event"] == "metric"))
    result = next(e for e in events if e["event"] == "result")["metrics"]
    assert per_step == set(plugin.step_metrics), "declare per_step metrics as the worker sends"
    assert set(result) == set(plugin.result_metrics), "declare result metrics as the worker sends"
    env = next(e for e in events if e["event"] == "env")
    assert env["workload"] == name and env["config"] == json.loads(json.dumps(config))


@pytest.mark.parametrize("name", sorted(PLUGINS))
def test_the_plugin_names_its_trials_and_keys_from_its_own_config(name):
    plugin = PLUGINS[name]
    config = workloads.resolve_config(plugin, TINY[name])
    assert plugin.label(config).startswith(name)
    schema = workloads.schema(plugin)
    assert set(plugin.key_columns) <= set(schema) and set(plugin.label_keys) <= set(schema)
    assert set(plugin.best_per) <= set(schema)
    if plugin.best_metric is not None:
        assert plugin.best_metric in plugin.result_metrics
    assert plugin.best_group(config).startswith(name)


def test_labels_leave_out_defaults_and_best_follows_the_metric_direction():
    bench = workloads.get("rnn_bench")
    assert bench.label({"bench": "1x320-ce-long", "impl": "cudnn", "cell": "lstm"}) == \
        "rnn_bench 1x320-ce-long cudnn"
    assert bench.label({"bench": "1x320-ce-long", "impl": "basic", "cell": "gru"}) == \
        "rnn_bench 1x320-ce-long basic gru"
    assert bench.lower_is_better("ms_per_batch_median")
    assert not bench.lower_is_better("sequences_per_second")
    copier = PLUGINS["seq_copy"]
    assert not copier.lower_is_better("accuracy") and copier.lower_is_better("loss")


def test_a_metric_must_be_reported_somewhere_and_a_best_metric_must_exist():
    with pytest.raises(ValueError, match="neither per step nor in the result"):
        Metric("x", "", LOWER, per_step=False, in_result=False)
    with pytest.raises(ValueError, match="best_metric 'y' is not one of its metrics"):
        Workload(name="w", description="", metrics=(Metric("x", "", LOWER),), best_metric="y")
    with pytest.raises(ValueError, match="unknown report section"):
        Workload(name="w", description="", metrics=(), report_sections=("plots",))


def test_an_unknown_shipped_workload_is_one_line():
    with pytest.raises(UserError, match=r"^workload 'ptb' is unknown; shipped workloads: env, "
                                        r"ptb_lm, rnn_bench"):
        workloads.get("ptb")


@pytest.mark.parametrize("layout, message", [
    ({}, r"missing: workload\.py, config\.py, worker\.py"),
    ({"workload.py": "X = 1\n", "config.py": "SCHEMA = {}\n", "worker.py": ""},
     r"workload\.py: defines no WORKLOAD = Workload"),
    ({"workload.py": "raise RuntimeError('boom')\n", "config.py": "SCHEMA = {}\n",
      "worker.py": ""}, r"workload\.py: importing it failed: RuntimeError: boom"),
    ({"workload.py": "from sweeps.workloads.base import Workload\n"
                     "WORKLOAD = Workload(name='other', description='', metrics=())\n",
      "config.py": "SCHEMA = {}\n", "worker.py": ""},
     r"WORKLOAD\.name is 'other' but its directory is 'mine'"),
    ({"workload.py": "from sweeps.workloads.base import Workload\n"
                     "WORKLOAD = Workload(name='mine', description='', metrics=())\n",
      "config.py": "X = 1\n", "worker.py": ""}, r"config\.py: defines no SCHEMA dict"),
])
def test_a_directory_that_is_not_a_workload_is_one_line(tmp_path, layout, message):
    directory = tmp_path / "mine"
    directory.mkdir()
    for name, text in layout.items():
        (directory / name).write_text(text)
    with pytest.raises(UserError, match=message) as raised:
        workloads.load_dir(directory)
    assert "\n" not in str(raised.value)


def test_a_workload_may_not_take_a_shipped_name(tmp_path):
    (tmp_path / "ptb_lm").mkdir()
    for name in ("workload.py", "config.py", "worker.py"):
        (tmp_path / "ptb_lm" / name).write_text("")
    with pytest.raises(UserError, match="'ptb_lm' is a shipped workload"):
        workloads.load_dir(tmp_path / "ptb_lm")


def test_the_worker_refuses_a_directory_of_another_workload():
    done = subprocess.run([sys.executable, "-m", "workers", "ptb_lm", "--workload-dir",
                           str(EXAMPLE)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "is not the directory of workload 'ptb_lm'" in done.stdout


def test_the_example_workload_runs_through_a_sweep_and_a_report(tmp_path, ray_tmp):
    """examples/seq_copy.toml as a user runs it: the plug-in from its directory, end to end."""
    from sweeping import versweep

    done = versweep(["--grid", str(ROOT / "examples" / "seq_copy.toml"),
                     "--set", "group.*.config.steps=20", "--set", "group.*.config.report_every=10"],
                    cwd=tmp_path, ray_tmp=ray_tmp)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "trials: 4 ok" in done.stdout
    assert re.search(r"seq_copy gru\s+accuracy [\d.]+\s+seq_copy gru @ local #\d", done.stdout)
    assert "seq_copy lstm @ local #1" in done.stdout or "seq_copy lstm @ local #0" in done.stdout

    report = subprocess.run([sys.executable, str(ROOT / "analysis" / "report.py"),
                             "--experiment", "seq-copy", "--format", "md,csv",
                             "--out", str(tmp_path / "report"),
                             "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert report.returncode == 0, report.stderr[-3000:]
    text = (tmp_path / "report" / "report.md").read_text()
    assert "## seq_copy: results per image" in text
    assert "| image | torch | ok/trials | loss ↓ | accuracy ↑ | ms_per_step_median (ms) ↓ |" in text
    rows = (tmp_path / "report" / "metrics_seq_copy.csv").read_text().splitlines()
    assert rows[0].startswith("variant,image,torch,n_ok,n_trials,loss_mean,loss_std,")
    assert len(rows) == 3 and all(",local," in row and ",2,2," in row for row in rows[1:])


def test_the_docker_backend_mounts_a_users_workload_and_points_the_worker_at_it():
    """No engine needed: the command and the options a container would be created with."""
    from sweeps.execute.backends.docker import WORKLOAD_MOUNT, DockerBackend
    from sweeps.grid.load import load_sweep

    sweep = load_sweep(str(ROOT / "examples" / "seq_copy.toml"))
    spec = sweep.trials[0]
    assert spec.workload_dir == str(EXAMPLE) and spec.name == "seq_copy lstm @ local #0"
    backend = DockerBackend({})
    command = backend.command(spec)
    at = command.index("--workload-dir")
    assert command[:4] == ["python", "-m", "workers", "seq_copy"]
    assert command[at + 1] == f"{WORKLOAD_MOUNT}/seq_copy"
    mounts = {m["Target"]: m for m in backend.container_options(spec, [])["mounts"]}
    mount = mounts[f"{WORKLOAD_MOUNT}/seq_copy"]
    assert mount["Source"] == str(EXAMPLE) and mount["ReadOnly"] is True

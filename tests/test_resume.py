"""Resume is idempotent: a driver killed with SIGKILL mid-sweep, then `--resume`.

The user's story: a sweep is running, the machine's session dies (kill -9 of the
driver: no chance to clean up). Running the same command with --resume must finish
the sweep so that every trial key has exactly one FINISHED child run, and no trial
that had finished before the kill runs again.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time

import pytest
from needs import need
from sweeping import (
    ROOT,
    RUN,
    assert_nothing_lost,
    end_processes_mentioning,
    env_grid,
    fault_figures,
    own_pids_mentioning,
    sweep_env,
    sweep_runs,
    versweep,
)

GRID = env_grid("resumable", [1, 2, 3, 4, 5, 6, 7, 8])


def finished_children(uri: str) -> list:
    try:
        _, _, children = sweep_runs(uri, "resumable")
    except AssertionError:  # the experiment does not exist yet
        return []
    return [c for c in children if c.info.status == "FINISHED"]


def test_a_sweep_killed_with_sigkill_resumes_without_running_a_trial_twice(tmp_path, ray_tmp):
    grid = tmp_path / "resumable.toml"
    grid.write_text(GRID)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    driver = subprocess.Popen([sys.executable, str(RUN), "--grid", str(grid), "--num-cpus", "2"],
                              cwd=tmp_path, env=sweep_env(ray_tmp), stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300
        while len(finished_children(uri)) < 2:
            assert driver.poll() is None, "the sweep ended before it could be killed"
            assert time.monotonic() < deadline, "fewer than 2 trials finished in 300 s"
            time.sleep(0.5)
        os.kill(driver.pid, signal.SIGKILL)
        driver.wait()
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait()

    # The killed driver's local Ray cluster (and the trial it was running) may outlive it
    # for a moment; end it the way a dead machine would, so that nothing finishes after
    # the snapshot below. Only this test's processes mention its private Ray temp dir.
    deadline = time.monotonic() + 30
    while own_pids_mentioning(ray_tmp) and time.monotonic() < deadline:
        end_processes_mentioning(ray_tmp)
        time.sleep(0.5)
    assert own_pids_mentioning(ray_tmp) == []

    before = {c.data.tags["versweep.trial_key"]: c.info.run_id for c in finished_children(uri)}
    assert 2 <= len(before) < 8, "the kill must land mid-sweep"

    resumed = versweep(["--grid", str(grid), "--resume"], cwd=tmp_path, ray_tmp=ray_tmp)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    decided_line = [line for line in resumed.stdout.splitlines() if "already decided" in line]
    assert decided_line == [f"{len(before)} trial(s) already decided; they will not run again"], (
        decided_line, sorted(before))
    assert "trials: 8 ok" in resumed.stdout

    _, parents, children = sweep_runs(uri, "resumable")
    assert len(parents) == 1  # resumed the same sweep run, no second one
    finished = [c for c in children if c.info.status == "FINISHED"]
    keys = [c.data.tags["versweep.trial_key"] for c in finished]
    assert len(keys) == 8 and len(set(keys)) == 8  # every key exactly once
    assert all(c.data.tags["versweep.status"] == "ok" for c in finished)
    for key, run_id in before.items():
        runs_of_key = [c for c in children if c.data.tags["versweep.trial_key"] == key]
        assert [c.info.run_id for c in runs_of_key] == [run_id]  # never ran again
    # A trial the kill interrupted is left KILLED, with its successor FINISHED.
    for child in children:
        assert child.info.status in ("FINISHED", "KILLED")
    from sweeps.grid.load import load_sweep

    assert_nothing_lost(fault_figures(uri, "resumable", [t.key for t in load_sweep(
        str(grid)).trials], result_metric="device_check_value"))


# ---------------------------------------------------------------- searches and venv sweeps
# benchmarks/fault_driver_kill.py runs the fault (a real sweep, its driver SIGKILLed, its Ray
# ended by pid as a dead machine's is, then --resume) and counts the figures from the store
# (benchmarks/fault_figures.py); docs/reliability.md quotes its runs.

KILL_SCRIPT = ROOT / "benchmarks" / "fault_driver_kill.py"


def _kill_module():
    spec = importlib.util.spec_from_file_location("fault_driver_kill", KILL_SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _assert_resumed_losing_nothing(figures: dict) -> None:
    shown = json.dumps(figures, indent=1)  # a string: pytest would cut a dict short
    print("FIGURES", json.dumps({k: v for k, v in figures.items() if k != "resume_tail"}))
    assert figures["resume_exit_code"] == 0, shown
    # A --resume that failed (the local Ray timed out at start on a loaded machine) said so
    # in one line, no traceback, and the next --resume finished the sweep.
    failed = [code for code in figures["resume_exit_codes"] if code != 0]
    assert len(figures["resume_errors"]) == len(failed), shown
    assert figures["resume_tracebacks"] == 0, shown
    assert_nothing_lost(figures)
    assert figures["rerun_after_decided"] == 0, shown  # a decided trial never ran again
    before = figures["finished_before_kill"]
    assert figures["resume_said"] == (
        f"{before} trial(s) already decided; they will not run again" if before else None), shown


# 7 minutes at a load of 16 on 2 cores (two Ray starts and 4+ language-model trials).
@pytest.mark.slow
def test_a_search_killed_with_sigkill_resumes_its_study_to_num_samples(tmp_path, ray_tmp):
    """What --resume guarantees for an Optuna search: the trials decided before the kill
    are not run again; the study (same name, same storage) continues, with every trial the
    killed driver left RUNNING settled from the records (decided: COMPLETE with its value or
    PRUNED; interrupted: FAIL, and sampled anew), so nothing stays RUNNING; and the sweep
    decides exactly num_samples trials in all."""
    figures = _kill_module().measure(tmp_path / "kill", kind="search", trials=4,
                                     kill_at="running:1", ray_tmp=ray_tmp, say=lambda _: None)
    _assert_resumed_losing_nothing(figures)
    assert 1 <= figures["finished_before_kill"] < 4, figures
    study = figures["study_trials"]
    assert "RUNNING" not in study and "WAITING" not in study, study
    # Decided trials: one study trial each; an interrupted one is FAIL (at most the one
    # that ran when the driver died: max_concurrent = 1).
    assert study.get("COMPLETE", 0) + study.get("PRUNED", 0) == 4, study
    assert study.get("FAIL", 0) <= 1, study
    log = (tmp_path / "kill" / "driver-resume.log").read_text()
    if study.get("FAIL", 0):
        assert "versweep: Optuna study " in log and "(trials a killed driver left running)" in log
    if figures["child_runs"] > 4:  # the run the kill cut off: KILLED, not left RUNNING
        assert "trial run(s) left running by the stopped driver marked KILLED" in log, log


@pytest.mark.slow
@pytest.mark.parametrize("kill_at", ["building", "running:1"])
def test_a_venv_sweep_killed_mid_build_or_mid_trial_resumes_and_never_uses_a_half_build(
        tmp_path, ray_tmp, kill_at):
    """The venv backend: the driver killed while the first trial builds the environment (a
    slowed uv: the build is still installing) or while a trial runs in it. --resume deletes
    the crashed build's directory, builds the environment whole, and uses only that."""
    from test_venv import slow_uv

    figures = _kill_module().measure(
        tmp_path / "kill", kind="venv", trials=3, kill_at=kill_at, ray_tmp=ray_tmp,
        extra_env={"VERSWEEP_UV": slow_uv(tmp_path, 8)} if kill_at == "building" else None,
        say=lambda _: None)
    if "cannot be reached" in "".join(figures.get("resume_tail", [])):
        need("package-index")
    _assert_resumed_losing_nothing(figures)
    assert figures["half_built_used"] == 0 and figures["building_left"] == 0, figures
    assert len(figures["env_paths_used"]) == 1, figures
    if kill_at == "building":
        assert figures["building_left_by_kill"] == 1 and figures["finished_before_kill"] == 0
        log = (tmp_path / "kill" / "driver-resume.log").read_text()
        assert "left by a build or deletion that did not finish" in log, log[-3000:]


def test_a_local_ray_that_times_out_at_start_is_one_line_and_the_sweep_resumable(
        tmp_path, monkeypatch, capsys):
    """On a machine loaded far beyond its cores Ray's own start can time out ("The current
    node timed out during startup", seen in these fault runs): one line, exit 1, and the
    sweep's parent run ends interrupted, so the same command with --resume continues it."""
    from sweeps.cli import main
    from sweeps.execute import tune

    def timed_out(**kwargs):
        raise Exception("The current node timed out during startup. This could happen "
                        "because some of the raylet failed to startup or the GCS has "
                        "become overloaded.")

    monkeypatch.setattr(tune.ray, "init", timed_out)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    grid = tmp_path / "resumable.toml"
    grid.write_text(GRID)
    assert main(["--grid", str(grid), "--num-cpus", "1"], script="run") == 1
    everything = capsys.readouterr().err
    assert "Traceback" not in everything
    err = [line for line in everything.splitlines() if line.startswith("versweep")]
    assert err == ["versweep: error: the local Ray did not start: The current node timed out "
                   "during startup. This could happen because some of the raylet failed to "
                   "startup or the GCS has become overloaded.; once this machine has room, "
                   "continue with --resume"], err
    _, [parent], children = sweep_runs(f"sqlite:///{tmp_path}/mlflow.db", "resumable")
    assert parent.info.status == "KILLED" and children == []  # interrupted: --resume takes it

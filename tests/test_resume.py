"""Resume is idempotent: a driver killed with SIGKILL mid-sweep, then `--resume`.

The user's story: a sweep is running, the machine's session dies (kill -9 of the
driver: no chance to clean up). Running the same command with --resume must finish
the sweep so that every trial key has exactly one FINISHED child run, and no trial
that had finished before the kill runs again.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from sweeping import (
    ENV_GRID,
    RUN,
    end_processes_mentioning,
    own_processes_mentioning,
    sweep_env,
    sweep_runs,
    versweep,
)

GRID = ENV_GRID.format(name="resumable", seeds=[1, 2, 3, 4, 5, 6, 7, 8])


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
    while own_processes_mentioning(ray_tmp) and time.monotonic() < deadline:
        end_processes_mentioning(ray_tmp)
        time.sleep(0.5)
    assert own_processes_mentioning(ray_tmp) == []

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

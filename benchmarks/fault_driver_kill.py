"""Fault: the sweep's driver is killed with SIGKILL mid-sweep, then the same command with --resume.

The real parts: a real sweep (``python sweeps/run.py``, its own local Ray, a SQLite MLflow
store) of one of three kinds:

- ``grid``: ``env`` trials on the local backend (the host's torch), one per seed;
- ``search``: an Optuna TPE search (with ASHA) over a tiny ``ptb_lm``'s learning rate and
  hidden size, ``--trials`` samples, on the local backend;
- ``venv``: ``env`` trials on the venv backend (torch 2.13.0, Python 3.11) in an empty
  ``$VERSWEEP_ENVS_DIR``, so the first trial builds the environment (uv, its cache warm).

The driver is killed (SIGKILL: no clean-up) at ``--kill-at``: ``finished:N`` once N trials
have finished, ``building`` while the venv environment is being built (a ``.building-*``
directory exists), ``running`` while a trial's run is RUNNING after N=``--after`` finished.
Its Ray processes are then ended the way a dead machine ends them (SIGKILL by pid: every
process mentioning this run's private Ray temp dir), and ``--resume`` is run once.

Then the figures, counted from the store (benchmarks/fault_figures.py): trials finished,
lost, duplicated, inconsistent records; for a venv sweep, whether a half-built environment
was ever used (a trial run whose ``versweep.env_path`` is not a whole environment, or a
``.building-*`` directory left).

    python benchmarks/fault_driver_kill.py --kind search --trials 6 --kill-at finished:2

tests/test_resume.py runs ``measure`` and asserts lost, duplicated and inconsistent are 0.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
import tempfile
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import fault_figures  # noqa: E402  (the figures of every fault)
import fault_sweep  # noqa: E402  (how every fault starts its sweep)

EXPERIMENT = "killed"
VENV_IMAGE = "torch-2.13.0-cpu"

# The sweep of each kind: benchmarks/fault_sweep.py's smallest sweep, or a small search.
GRIDS = {
    "grid": lambda trials: fault_sweep.env_grid(EXPERIMENT, range(1, trials + 1)),
    "venv": lambda trials: fault_sweep.env_grid(EXPERIMENT, range(1, trials + 1),
                                                backend="venv", images=[VENV_IMAGE],
                                                timeout_s=300),
    "search": lambda trials: textwrap.dedent("""
        [sweep]
        name = "killed"
        backend = "local"
        device = "cpu"
        trial_timeout_s = 120
        max_concurrent = 1

        [search]
        workload = "ptb_lm"
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
        num_samples = {trials}
        sampler = "tpe"
        seed = 0

        [search.space.learning_rate]
        type = "loguniform"
        low = 0.01
        high = 100.0

        [search.space.hidden_size]
        type = "choice"
        values = [8, 16, 24]

        [search.scheduler]
        type = "asha"
        grace_period = 1
        reduction_factor = 2
    """).format(trials=trials),
}
# An ok trial's result metric: the env workload's, the language model's test perplexity.
RESULT_METRIC = {"grid": "device_check_value", "venv": "device_check_value",
                 "search": "test_perplexity"}


def end_processes_of(ray_tmp: str, timeout: float = 30) -> None:
    """SIGKILL every process of this user that mentions ``ray_tmp`` (only this run's do)."""
    left = fault_sweep.end_processes_of(ray_tmp, timeout)
    if left:
        raise RuntimeError(f"processes of {ray_tmp} still alive: {left}")


def _children(uri: str) -> list:
    from sweeps.records.store import open_client

    client = open_client(uri)
    found = client.get_experiment_by_name(EXPERIMENT)
    if found is None:
        return []
    return client.search_runs([found.experiment_id], "tags.`versweep.kind` = 'trial'",
                              max_results=10000)


def _finished(uri: str) -> int:
    return sum(1 for c in _children(uri) if c.info.status == "FINISHED")


def _kill_point_reached(kill_at: str, after: int, uri: str, envs: Path) -> bool:
    if kill_at == "building":
        return any(envs.glob(".building-*"))
    done = _finished(uri)
    if kill_at == "running":
        return done >= after and any(c.info.status == "RUNNING" for c in _children(uri))
    return done >= after


def measure(home: Path, *, kind: str = "grid", trials: int = 6, kill_at: str = "finished:2",
            ray_tmp: str | None = None, envs_dir: Path | None = None,
            extra_env: dict | None = None, resumes: int = 3, say=print) -> dict:
    """Run the fault once in ``home``; return the figures (see the module's docstring)."""
    home.mkdir(parents=True, exist_ok=True)
    point, _, count_text = kill_at.partition(":")
    after = int(count_text or 0)
    grid = home / "killed.toml"
    grid.write_text(GRIDS[kind](trials))
    uri = f"sqlite:///{home}/mlflow.db"
    envs = envs_dir or home / "envs"
    own_ray_tmp = ray_tmp is None
    ray_tmp = ray_tmp or tempfile.mkdtemp(prefix="vsray-", dir="/tmp")
    env = fault_sweep.sweep_env(ray_tmp, VERSWEEP_ENVS_DIR=str(envs), **(extra_env or {}))
    figures: dict = {"kind": kind, "trials": trials, "kill_at": kill_at}
    try:
        started = time.monotonic()
        driver = fault_sweep.launch(home, grid, EXPERIMENT, env)
        fault_sweep.wait_until(driver, home, lambda: _kill_point_reached(point, after, uri, envs),
                               f"the kill point {kill_at}", limit_s=900, poll_s=0.2)
        os.kill(driver.pid, signal.SIGKILL)
        driver.wait()
        end_processes_of(ray_tmp)  # the machine is gone: its Ray and trials too
        before = {c.data.tags["versweep.trial_key"]: c.info.run_id
                  for c in _children(uri) if c.info.status == "FINISHED"}
        figures["finished_before_kill"] = len(before)
        figures["building_left_by_kill"] = len(list(envs.glob(".building-*")))
        say(f"driver killed: {len(before)} trial(s) finished, "
            f"{figures['building_left_by_kill']} build(s) in progress")
        # Where --resume itself fails (one line: e.g. the local Ray timed out at start on
        # an overloaded machine), the same command is run again, as a user would.
        figures["resume_exit_codes"] = []
        log = ""
        for _ in range(resumes):
            resumed = fault_sweep.launch(home, grid, EXPERIMENT, env, "--resume")
            figures["resume_exit_codes"].append(resumed.wait(timeout=900))
            log += (home / "driver-resume.log").read_text(errors="replace")
            if figures["resume_exit_codes"][-1] == 0:
                break
        figures["resume_exit_code"] = figures["resume_exit_codes"][-1]
        figures["sweep_wall_s"] = round(time.monotonic() - started, 1)
        figures["resume_tail"] = [line for line in log.splitlines()
                                  if not line.startswith(("|", "+"))][-12:]
        (home / "driver-resume.log").write_text(log)  # every --resume's output
        decided = [line for line in log.splitlines() if "already decided" in line]
        figures["resume_said"] = decided[0] if decided else None
        figures["resume_errors"] = [line for line in log.splitlines()
                                    if line.startswith("versweep: error:")]
        figures["resume_tracebacks"] = log.count("Traceback (most recent call last)")
        after_runs = _children(uri)
        # A trial decided before the kill must never run again.
        figures["rerun_after_decided"] = sum(
            1 for c in after_runs if c.data.tags.get("versweep.trial_key") in before
            and c.info.run_id != before[c.data.tags["versweep.trial_key"]])
        from sweeps.records.store import open_client

        figures.update(fault_figures.count(open_client(uri), EXPERIMENT,
                                           fault_sweep.planned_keys(grid),
                                           result_metric=RESULT_METRIC[kind], expected=trials))
        if kind == "venv":
            figures.update(_venv_figures(after_runs, envs))
        if kind == "search":
            figures.update(_study_figures(home))
    finally:
        if own_ray_tmp:
            end_processes_of(ray_tmp)
            shutil.rmtree(ray_tmp, ignore_errors=True)
    return figures


def _venv_figures(runs: list, envs: Path) -> dict:
    """Whether a half-built environment was used or left behind."""
    from sweeps.envs.store import EnvStore

    store = EnvStore(envs, budget="100g")
    used = {c.data.tags.get("versweep.env_path") for c in runs} - {None}
    broken = [path for path in used
              if ".building-" in path or store.problem(Path(path).name) is not None]
    return {"env_paths_used": sorted(used), "half_built_used": len(broken),
            "building_left": len(list(envs.glob(".building-*")))}


def _study_figures(home: Path) -> dict:
    """The Optuna study's trials by state (the study lives next to the SQLite store)."""
    import optuna

    storage = f"sqlite:///{home}/optuna.db"
    states: dict[str, int] = {}
    for summary in optuna.get_all_study_summaries(storage):
        study = optuna.load_study(study_name=summary.study_name, storage=storage)
        for trial in study.trials:
            states[trial.state.name] = states.get(trial.state.name, 0) + 1
    return {"study_trials": states}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kind", choices=sorted(GRIDS), default="grid")
    parser.add_argument("--trials", type=int, default=6)
    parser.add_argument("--kill-at", default="finished:2",
                        help="finished:N, running:N (a trial RUNNING after N finished), building")
    parser.add_argument("--keep", action="store_true", help="keep the working directory")
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="vskill-"))
    try:
        figures = measure(home, kind=args.kind, trials=args.trials, kill_at=args.kill_at)
    finally:
        if not args.keep:
            shutil.rmtree(home, ignore_errors=True)
    print(json.dumps(figures, indent=1))
    if args.keep:
        print(f"kept: {home}")
    bad = figures["lost"] + figures["duplicated"] + figures["inconsistent"]
    bad += figures["rerun_after_decided"] + figures.get("half_built_used", 0)
    return 0 if bad == 0 and figures["resume_exit_code"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())

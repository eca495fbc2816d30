"""Run one sweep: ``versweep run --grid smoke`` (and ``python sweeps/run.py --grid smoke``).

The CLI (sweeps/cli.py) parses arguments and calls ``run_sweep``, a plain function that
tests call too. ``run_sweep`` loads and validates the grid, prints the trial table for
``--dry-run`` (no Ray, no MLflow), otherwise opens (or resumes) the sweep's parent run,
runs the trials under Ray Tune (sweeps/execute/tune.py), closes the parent run with the counts
and the best trial, and prints the summary.

Exit codes: 0 every trial reached a decision and none failed (unsupported and diverged
are results); 1 some trial failed (CI should notice); 2 a user error (bad grid, unknown
backend, no torch, no sweep to resume); 130 interrupted with Ctrl-C.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

from sweeps.errors import EXIT_FAILED as EXIT_TRIALS_FAILED
from sweeps.errors import EXIT_INTERRUPTED, EXIT_OK, UserError
from sweeps.progress import every_s
from sweeps.status import Status
from sweeps.validate import without_password


def run_sweep(grid: str, *, backend: str | None = None, experiment: str | None = None,
              tracking_uri: str | None = None, address: str | None = None,
              resume: bool = False, dry_run: bool = False, overrides: Sequence[str] = (),
              max_concurrent: int | None = None, cwd: Path | None = None,
              num_cpus: int | None = None, matrix: str | Path | None = None,
              out: TextIO | None = None) -> int:
    """Run (or with ``dry_run`` only show) the sweep of grid ``grid``; return the exit code.

    Raises UserError for everything a user can fix (the CLI prints it as one line).
    """
    from sweeps import validate
    from sweeps.execute.backends import BACKENDS, get_backend
    from sweeps.grid.load import load_sweep

    out = out if out is not None else sys.stdout
    cwd = Path(cwd) if cwd is not None else Path.cwd()
    if backend is not None:
        # Through the grid, so the trials' images follow the backend (local: the host's
        # torch) and the recorded grid text says which backend ran.
        overrides = [*overrides, f"sweep.backend={backend}"]
    # Every input is checked before anything exists: no store, parent run or Ray instance
    # until all of them are known to be good (docs/reliability.md, "Bad input").
    if matrix is not None:  # read only for images, but a bad one is refused on any backend
        from sweeps.grid.matrix import load_matrix

        validate.read_text(matrix, "--matrix")
        load_matrix(Path(matrix))  # a syntax error or a grid given by mistake: one line
    sweep = load_sweep(grid, overrides, **({"matrix_path": Path(matrix)} if matrix else {}))
    backend_name = sweep.backend
    max_concurrent = max_concurrent or sweep.max_concurrent
    experiment = (validate.name(experiment, "--experiment") if experiment is not None
                  else sweep.name)
    if address is not None:
        address = validate.ray_address(address, "--address")
    joined = address or os.environ.get("RAY_ADDRESS")
    if num_cpus is not None and joined:
        where = "--address" if address else "$RAY_ADDRESS"
        raise UserError(f"--num-cpus sizes the local Ray this command starts, but it joins the "
                        f"cluster at {joined} ({where}), whose nodes' own `ray start "
                        "--num-cpus` decide; drop --num-cpus (or --address)")
    every_s()  # a bad $VERSWEEP_PROGRESS_EVERY_S is one line before anything
    if dry_run:
        # The table is shown without touching the backend, so a grid can be checked
        # before its images exist or where no Docker engine runs.
        if backend_name not in BACKENDS:
            get_backend(backend_name)  # the one-line error that lists the valid names
        from sweeps.plan.table import format_trial_table

        out.write(format_trial_table(sweep, backend_name, max_concurrent) + "\n")
        return EXIT_OK
    runner = get_backend(backend_name, sweep)
    from sweeps.records.store import (
        SweepRecords,
        check_writable,
        credentials_to_environment,
        nothing_to_resume,
        resolve_tracking_uri,
        store_exists,
        store_wait_limit,
    )

    # Credentials leave the URI here, before it reaches any record, Ray or console.
    tracking_uri = credentials_to_environment(resolve_tracking_uri(tracking_uri, cwd))
    check_writable(tracking_uri)
    store_wait_limit()  # a bad $VERSWEEP_STORE_WAIT_S is one line before anything
    if resume and not store_exists(tracking_uri):
        raise nothing_to_resume(sweep.name, experiment, tracking_uri)  # and create none
    if address is not None:
        validate.ray_address_reachable(address, "--address")

    from sweeps.execute import tune as sweep_tune
    from sweeps.plan.resources import address_given

    sweep_tune.grid_batch_trials()  # a bad $VERSWEEP_GRID_BATCH is one line before anything

    timings: dict[str, float] = {}
    # On a cluster whose nodes advertise images, those nodes must hold them, not this one
    # (a KubeRay head may have no Docker at all): routing checks them before Tune starts.
    # Anywhere else the images must be here. Either way before any record is opened, and
    # a cluster that refuses this driver (no token, another Ray) is refused before it too.
    routed = False
    if backend_name == "docker" and address_given(address):
        routed, timings["ray"] = sweep_tune.join_and_check_routing(address, num_cpus)
    elif address_given(address):
        timings["ray"] = sweep_tune.start_ray(address, num_cpus)
    runner.preflight(sweep, on_this_node=not routed)

    records = SweepRecords(tracking_uri, experiment)
    parent_run_id = records.open_sweep(sweep, resume=resume)
    decided = records.finished_trial_keys(parent_run_id) if resume else {}
    # Runs a killed driver left RUNNING end KILLED now (a search never samples their
    # configs again, so nothing else would end them).
    interrupted_runs = records.mark_interrupted_trials(parent_run_id) if resume else 0
    out.write(f"sweep '{sweep.name}': {'resuming' if resume else 'new'} parent run "
              f"{parent_run_id} in experiment '{experiment}' at "
              f"{without_password(tracking_uri)}\n")
    if decided:
        out.write(f"{len(decided)} trial(s) already decided; they will not run again\n")
    if interrupted_runs:
        out.write(f"{interrupted_runs} trial run(s) left running by the stopped driver "
                  "marked KILLED\n")
    out.flush()

    started = time.monotonic()
    try:
        tune_run = sweep_tune.run_tune(
            sweep, backend=backend_name, tracking_uri=tracking_uri, experiment=experiment,
            parent_run_id=parent_run_id, skip_keys=set(decided),
            storage_dir=cwd / "ray_results", max_concurrent=max_concurrent, address=address,
            num_cpus=num_cpus, study_storage=_study_storage(tracking_uri, cwd),
            samples_done=len(decided),
            on_ray_started=lambda seconds: timings.setdefault("ray", seconds))
    except Exception:
        # Refused before any trial ran (no node can run a trial), or anything else that
        # stopped Tune: the parent run ends as interrupted, never left RUNNING, and
        # --resume can start it again.
        records.close_sweep(parent_run_id, {}, None, interrupted=True)
        sweep_tune.shutdown()
        raise
    sweep_tune.shutdown()

    trial_records = list(tune_run.records)
    if decided:
        trial_records += _earlier_records(records, parent_run_id, sweep, decided,
                                          ran={r.key for r in trial_records})
    _close(sweep, records, parent_run_id, trial_records, tune_run, experiment=experiment,
           tracking_uri=tracking_uri, out=out)
    out.write(f"timings: ray start {tune_run.ray_start_seconds:.2f} s, trials "
              f"{tune_run.tune_seconds:.2f} s (after Ray started), "
              f"total {time.monotonic() - started:.2f} s\n")
    out.flush()
    if tune_run.interrupted:
        return EXIT_INTERRUPTED
    if any(r.status == Status.FAILED and not r.from_earlier_run for r in trial_records):
        return EXIT_TRIALS_FAILED
    return EXIT_OK


def _earlier_records(records, parent_run_id: str, sweep, decided: dict,
                     ran: set[str]) -> list:
    """The records of the trials decided before this --resume, for the counts and the best."""
    from sweeps.execute.summary import TrialRecord

    specs = {t.key: t for t in sweep.trials}
    found = []
    for trial in records.list_trials(parent_run_id, finished_only=True):
        if trial["key"] in ran or trial["key"] not in decided:
            continue
        ran.add(trial["key"])
        spec = specs.get(trial["key"])
        config = spec.config_dict if spec else dict(trial["params"])
        found.append(TrialRecord(
            key=trial["key"], name=trial["name"], workload=trial["workload"] or "",
            status=decided[trial["key"]], config=config, metrics=trial["metrics"],
            run_id=trial["run_id"], from_earlier_run=True,
            workload_dir=spec.workload_dir if spec else None))
    return found


def _close(sweep, records, parent_run_id: str, trial_records: list, tune_run, *,
           experiment: str, tracking_uri: str, out: TextIO) -> None:
    """Tag the parent run with the counts and the best trial, end it, print the summary."""
    from sweeps.execute.summary import (
        best_by_metric,
        best_of_sweep,
        best_per_workload,
        count_statuses,
        format_summary,
    )
    from sweeps.records.store import mlflow_ui_command, records_location

    search_best = None
    if sweep.search is not None:
        search_best = best_by_metric(trial_records, sweep.search.metric, sweep.search.mode)
        best = search_best
    else:
        best = best_of_sweep(trial_records)
    bests = [{"group": b.group, "metric": b.metric, "value": b.value,
              "run_id": b.trial.run_id or "", "name": b.trial.name}
             for b in best_per_workload(trial_records)]
    records.close_sweep(parent_run_id, count_statuses(trial_records),
                        best.as_tags() if best else None, interrupted=tune_run.interrupted,
                        bests=bests)
    out.write(format_summary(trial_records, where=records_location(tracking_uri),
                             ui_command=mlflow_ui_command(tracking_uri), experiment=experiment,
                             parent_run_id=parent_run_id, search_best=search_best,
                             searched=tuple(p.name for p in sweep.search.space)
                             if sweep.search is not None else (),
                             interrupted=tune_run.interrupted,
                             runs_url=_runs_url(records, parent_run_id)) + "\n")


def _runs_url(records, parent_run_id: str) -> str:
    """The runs table's address, for the summary; "" where it cannot be known."""
    try:
        return records.runs_table_url(parent_run_id)
    except Exception:  # noqa: BLE001  (an address in a summary is never worth a failed sweep)
        return ""


def _study_storage(tracking_uri: str, cwd: Path) -> str:
    """Where the Optuna study lives: next to a SQLite MLflow store, else in the working dir."""
    prefix = "sqlite:///"
    if tracking_uri.startswith(prefix):
        return prefix + str(Path(tracking_uri[len(prefix):]).parent / "optuna.db")
    return prefix + str(cwd / "optuna.db")

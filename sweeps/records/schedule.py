"""MLflow records of scheduled runs: one run per firing of a schedule.

Layout (beside the sweeps' own experiments, in the same tracking store):

    experiment  versweep-schedule
    └── run "<job id>" (or "<grid> <time> skipped")
            tags versweep.kind=schedule, versweep.grid, versweep.schedule ("0 3 * * *",
                 "every 20s" or "once"), versweep.cron (a cron schedule's
                 expression), versweep.fired_at, versweep.address,
                 versweep.entrypoint, versweep.job_id, versweep.job_status,
                 versweep.job_message, versweep.job_exit_code, versweep.job_started_at,
                 versweep.job_ended_at, versweep.sweep_experiment,
                 versweep.sweep_parent_run_id, versweep.skip_reason, versweep.blocking_job_id

A firing that submitted a job stays RUNNING until the job ends, then ends FINISHED
(SUCCEEDED), FAILED or KILLED (STOPPED, or LOST: the cluster forgot the job). A
skipped firing (a sweep of the same grid was still going) is a FINISHED run with
versweep.job_status=SKIPPED and the reason.

One experiment for every grid, so ``schedule.py list`` reads one place; each run
names its sweep's experiment and parent run, where the trials are.

This module writes through ``sweeps.records.store.open_client`` (the store opened safely,
under the SQLite lock) and the client's own methods, so sweeps/records/store.py stays the
only module that imports mlflow.
"""

from __future__ import annotations

import datetime
import functools
from typing import Any

from sweeps.records.layout import SCHEMA_TAG, SCHEMA_VERSION
from sweeps.records.store import MAX_TAG_VALUE_LENGTH, SweepRecords, quote, retrying, truncate

SCHEDULE_EXPERIMENT = "versweep-schedule"

SKIPPED = "SKIPPED"

# How a job's end becomes the MLflow run's end.
# LOST: the cluster no longer knows the job (its head restarted without its history).
_RUN_END = {"SUCCEEDED": "FINISHED", "FAILED": "FAILED", "STOPPED": "KILLED", "LOST": "KILLED"}


def iso_utc(seconds: float) -> str:
    """``2026-11-22T03:00:00Z`` for a time in seconds since the epoch."""
    moment = datetime.datetime.fromtimestamp(seconds, datetime.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


class ScheduleRecords:
    """Writes and reads the ``versweep-schedule`` experiment of one tracking store."""

    def __init__(self, tracking_uri: str):
        self.tracking_uri = tracking_uri
        self._store = SweepRecords(tracking_uri, SCHEDULE_EXPERIMENT)
        self.client = self._store.client

    def record_submission(self, *, grid: str, job_id: str, fired_at: float, schedule: str,
                          address: str, entrypoint: str, sweep_experiment: str) -> str:
        """A RUNNING run for a firing that submitted job ``job_id``; returns its run id."""
        tags = self._firing_tags(grid, fired_at, schedule, address)
        tags.update({"versweep.job_id": job_id, "versweep.job_status": "PENDING",
                     "versweep.entrypoint": entrypoint,
                     "versweep.sweep_experiment": sweep_experiment})
        return self._create(job_id, tags, fired_at)

    def record_skip(self, *, grid: str, fired_at: float, schedule: str, address: str,
                    reason: str, blocking_job_id: str | None) -> str:
        """A FINISHED run for a firing that submitted nothing, and why; returns its run id."""
        tags = self._firing_tags(grid, fired_at, schedule, address)
        tags.update({"versweep.job_status": SKIPPED, "versweep.skip_reason": reason})
        if blocking_job_id:
            tags["versweep.blocking_job_id"] = blocking_job_id
        run_id = self._create(f"{grid} {iso_utc(fired_at)} skipped", tags, fired_at)
        retrying(functools.partial(self.client.set_terminated, run_id, "FINISHED"),
                  "finishing a skipped firing's run")
        return run_id

    def record_job_state(self, run_id: str, *, status: str, message: str = "",
                         exit_code: int | None = None, started_at: float | None = None,
                         ended_at: float | None = None,
                         sweep_parent_run_id: str | None = None) -> None:
        """Write what the cluster says about the firing's job; end the run once the job ended."""
        tags = {"versweep.job_status": status}
        if message:
            tags["versweep.job_message"] = message
        if exit_code is not None:
            tags["versweep.job_exit_code"] = str(exit_code)
        if started_at:
            tags["versweep.job_started_at"] = iso_utc(started_at)
        if ended_at:
            tags["versweep.job_ended_at"] = iso_utc(ended_at)
        if sweep_parent_run_id:
            tags["versweep.sweep_parent_run_id"] = sweep_parent_run_id
        for name, value in tags.items():
            retrying(functools.partial(self.client.set_tag, run_id, name,
                                        truncate(value, MAX_TAG_VALUE_LENGTH)),
                      "recording a scheduled job's state")
        if status in _RUN_END:
            end_ms = int(ended_at * 1000) if ended_at else None
            retrying(functools.partial(self.client.set_terminated, run_id, _RUN_END[status],
                                        end_ms),
                      "finishing a scheduled job's run")

    def firings(self, grid: str | None = None) -> list[dict[str, Any]]:
        """Every recorded firing (of ``grid``, or all), oldest first, as plain dicts.

        Each has run_id, run_status (MLflow's), start_time (seconds) and tags.
        """
        experiment_id = self._store.experiment_id(create=False)
        if experiment_id is None:
            return []
        query = "tags.`versweep.kind` = 'schedule'"
        if grid:
            query += f" and tags.`versweep.grid` = {quote(grid)}"
        runs: list = []
        token = None
        while True:
            page = retrying(functools.partial(
                self.client.search_runs, [experiment_id], filter_string=query,
                max_results=1000, page_token=token), "reading the schedule's runs")
            runs.extend(page)
            token = page.token
            if not token:
                break
        runs.sort(key=lambda run: (run.info.start_time or 0, run.info.run_id))
        return [{"run_id": run.info.run_id, "run_status": run.info.status,
                 "start_time": (run.info.start_time or 0) / 1000,
                 "tags": dict(run.data.tags)} for run in runs]

    def sweep_parent_run(self, experiment: str, job_id: str) -> str | None:
        """The parent run a job's sweep tagged with ``versweep.job_id``, if it did so."""
        found = retrying(functools.partial(self.client.get_experiment_by_name, experiment),
                          "looking up the sweep's experiment")
        if found is None:
            return None
        runs = retrying(functools.partial(
            self.client.search_runs, [found.experiment_id],
            filter_string=(f"tags.`versweep.kind` = 'sweep' and "
                           f"tags.`versweep.job_id` = {quote(job_id)}"),
            max_results=1), "looking up the sweep's parent run")
        return runs[0].info.run_id if runs else None

    # ----------------------------------------------------------------- internals

    @staticmethod
    def _firing_tags(grid: str, fired_at: float, schedule: str, address: str) -> dict[str, str]:
        tags = {SCHEMA_TAG: str(SCHEMA_VERSION), "versweep.kind": "schedule",
                "versweep.grid": grid,
                "versweep.schedule": schedule, "versweep.fired_at": iso_utc(fired_at),
                "versweep.address": address}
        if schedule != "once" and not schedule.startswith("every "):
            tags["versweep.cron"] = schedule  # the expression alone, for a cron schedule
        return tags

    def _create(self, name: str, tags: dict[str, str], fired_at: float) -> str:
        experiment_id = self._store.experiment_id(create=True)
        assert experiment_id is not None, "experiment_id(create=True) returns an id"
        tags = {name_: truncate(value, MAX_TAG_VALUE_LENGTH) for name_, value in tags.items()}
        run = retrying(functools.partial(
            self.client.create_run, experiment_id, start_time=int(fired_at * 1000), tags=tags,
            run_name=name), "recording a firing")
        return run.info.run_id

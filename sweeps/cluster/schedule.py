"""Scheduled sweeps: submit ``sweeps/run.py`` to a Ray cluster as a Ray Job on a schedule.

    python sweeps/schedule.py --grid nightly --address http://HEAD:8265 --cron "0 3 * * *"
    python sweeps/schedule.py --grid nightly --address http://HEAD:8265 --every 6h
    python sweeps/schedule.py --grid nightly --address http://HEAD:8265 --once
    python sweeps/schedule.py list [--address http://HEAD:8265] [--grid nightly]

The first two run in the foreground as a small scheduler (under systemd or tmux); each
firing submits ``python sweeps/run.py --grid G --tracking-uri URI ...`` as a Ray Job.
``--once`` submits now, follows the job's output and exits with the sweep's exit code:
the form for a Kubernetes CronJob (sweeps/cluster/), or for a person at a terminal.

Never two of the same grid at once: before submitting, the scheduler asks the cluster
for jobs of this grid (by the job metadata ``versweep_grid``); if one is PENDING or
RUNNING, this firing is skipped, printed and recorded with the reason. Missed firings
(the scheduler was down, or busy) are not caught up: the next one is the next due.

Schedules:
  --cron "M H DOM MON DOW"  standard five-field cron, in UTC: numbers, *, a-b, lists,
                            steps (*/15, 1-30/5), month and weekday names (jan, mon), and
                            @hourly @daily @midnight @weekly @monthly @yearly @annually.
                            As in Vixie cron, when both day-of-month and day-of-week are
                            restricted a day matching either fires.
  --every 20s|15m|6h|1d     a fixed interval, first firing at once: for operations and
                            tests, where a cron minute is too coarse.

The code a job runs: by default this checkout is uploaded with the job (Ray's
``working_dir``, .gitignore respected), so the cluster runs exactly the code the
scheduler has; with ``--code-dir DIR`` nothing is uploaded and the job runs the
checkout already at DIR on the head node (e.g. baked into the node image). Either
way the head node's ``python`` (``--python``) must have versweep's dependencies.

Records: every firing is a run in the MLflow experiment ``versweep-schedule`` of the
same tracking store the sweeps record into (sweeps/records/schedule.py): the job id,
its status (updated when the job ends, and by ``list``), the schedule and the sweep's
parent run. Across machines use an MLflow server (``--tracking-uri http://...``): a
SQLite path means that file on the scheduler's machine and on the head node alike.

Exit codes: 0 the scheduler was stopped (SIGTERM), or ``--once``'s sweep succeeded or
was skipped because one of the same grid is still going; 2 a user error here (bad
cron, unknown grid, a grid whose dry run fails, an unreachable cluster), nothing
submitted; 130 Ctrl-C (submitted jobs keep running on the cluster). ``--once`` passes
on its sweep's own code: 1 failed trials or a crashed job, 2 the sweep's user error on
the cluster (e.g. its images are not on the node), 130 the job was stopped.
"""

from __future__ import annotations

import argparse
import calendar
import dataclasses
import datetime
import io
import os
import re
import shlex
import signal
import socket
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TextIO
from urllib.parse import urlparse

from sweeps import validate
from sweeps.columns import format_columns
from sweeps.errors import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USER_ERROR,
    ArgumentParser,
    UserError,
    one_line,
    positive_int,
)
from sweeps.paths import REPO_ROOT

if TYPE_CHECKING:
    from sweeps.cluster.jobs import JobState, RayJobs
    from sweeps.records.schedule import ScheduleRecords


# The recorded status of a job the cluster has forgotten.
LOST = "LOST"

# How often a running scheduler asks the cluster about the jobs it submitted, and how
# often --once checks on its job when it cannot stream the output.
POLL_SECONDS = 10.0

# What the sweep prints when it opens its parent run (sweeps/run.py), found in a job's
# output when the parent run carries no versweep.job_id tag.
_PARENT_RUN_LINE = re.compile(r"sweep '.*': (?:new|resuming) parent run ([0-9a-f]{32}) in "
                              r"experiment '(.*)' at ")

# Paths that never travel with an uploaded checkout, whatever .gitignore says.
_UPLOAD_EXCLUDES = [".git/", "ray_results/", "mlruns/", "mlartifacts/", "*.db",
                    ".mypy_cache/", ".pytest_cache/", ".ruff_cache/", "__pycache__/"]


# --------------------------------------------------------------------------- cron


_CRON_FIELDS = (  # name, lowest, highest
    ("minute", 0, 59), ("hour", 0, 23), ("day of month", 1, 31), ("month", 1, 12),
    ("day of week", 0, 7))
_MONTH_NAMES = {name.lower(): number for number, name in enumerate(calendar.month_abbr)
                if name}
_WEEKDAY_NAMES = {"sun": 0, "mon": 1, "tue": 2, "wed": 3, "thu": 4, "fri": 5, "sat": 6}
_CRON_MACROS = {"@yearly": "0 0 1 1 *", "@annually": "0 0 1 1 *", "@monthly": "0 0 1 * *",
                "@weekly": "0 0 * * 0", "@daily": "0 0 * * *", "@midnight": "0 0 * * *",
                "@hourly": "0 * * * *"}
# A schedule that has not fired within this many years never will (e.g. 30 February).
_CRON_HORIZON_YEARS = 5


@dataclass(frozen=True)
class CronSchedule:
    """A parsed five-field cron expression; times are UTC."""

    text: str
    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]  # 0 = Sunday
    days_restricted: bool  # the day-of-month field is not "*"
    weekdays_restricted: bool

    def day_matches(self, day: datetime.datetime) -> bool:
        """Vixie cron's rule: with both day fields restricted, either one may match."""
        in_month = day.day in self.days
        in_week = (day.weekday() + 1) % 7 in self.weekdays  # Python: Monday = 0
        if self.days_restricted and self.weekdays_restricted:
            return in_month or in_week
        return in_month and in_week

    def next_after(self, after: datetime.datetime) -> datetime.datetime:
        """The first firing strictly after ``after`` (an aware UTC time), on a whole minute."""
        moment = after.astimezone(datetime.UTC).replace(second=0, microsecond=0)
        moment += datetime.timedelta(minutes=1)
        horizon = moment + datetime.timedelta(days=366 * _CRON_HORIZON_YEARS)
        while moment <= horizon:
            if moment.month not in self.months:
                year, month = divmod(moment.month, 12)  # month 12 -> January of next year
                moment = moment.replace(year=moment.year + year, month=month + 1, day=1,
                                        hour=0, minute=0)
            elif not self.day_matches(moment):
                moment = (moment + datetime.timedelta(days=1)).replace(hour=0, minute=0)
            elif moment.hour not in self.hours:
                moment = (moment + datetime.timedelta(hours=1)).replace(minute=0)
            elif moment.minute not in self.minutes:
                moment += datetime.timedelta(minutes=1)
            else:
                return moment
        raise UserError(f"--cron '{self.text}': never fires (no such day in "
                        f"{_CRON_HORIZON_YEARS} years)")


def parse_cron(text: str) -> CronSchedule:
    """Parse a five-field cron expression (or an @macro); UserError naming the bad field."""
    expression = _CRON_MACROS.get(text.strip().lower(), text.strip())
    fields = expression.split()
    if len(fields) != 5:
        raise UserError(f"--cron '{text}': a cron expression has 5 fields (minute hour "
                        f"day-of-month month day-of-week), e.g. \"0 3 * * *\"; got {len(fields)}")
    values = []
    for raw, (name, low, high) in zip(fields, _CRON_FIELDS, strict=True):
        names = _MONTH_NAMES if name == "month" else _WEEKDAY_NAMES if name == "day of week" \
            else {}
        values.append(_cron_field(text, raw, name, low, high, names))
    weekdays = frozenset(0 if day == 7 else day for day in values[4])  # 7 is Sunday too
    return CronSchedule(text=text.strip(), minutes=values[0], hours=values[1], days=values[2],
                        months=values[3], weekdays=weekdays,
                        days_restricted=not fields[2].startswith("*"),
                        weekdays_restricted=not fields[4].startswith("*"))


def _cron_field(text: str, raw: str, name: str, low: int, high: int,
                names: dict[str, int]) -> frozenset[int]:
    def fail(why: str) -> UserError:
        return UserError(f"--cron '{text}': {name} field '{raw}': {why}")

    def number(word: str) -> int:
        if word.lower() in names:
            return names[word.lower()]
        if not word.isdigit():
            raise fail(f"'{word}' is not a number" + (" or a name" if names else ""))
        value = int(word)
        if not low <= value <= high:
            raise fail(f"{value} is outside {low}-{high}")
        return value

    chosen: set[int] = set()
    for item in raw.split(","):
        span, _, step_text = item.partition("/")
        step = 1
        if step_text:
            if not step_text.isdigit() or int(step_text) < 1:
                raise fail(f"step '{step_text}' must be a whole number of at least 1")
            step = int(step_text)
        if span == "*":
            first, last = low, high
        elif "-" in span:
            start, _, end = span.partition("-")
            first, last = number(start), number(end)
            if first > last:
                raise fail(f"range {span} runs backwards")
        else:
            first = number(span)
            last = high if step_text else first  # "5/15": from 5 on, every 15
        chosen.update(range(first, last + 1, step))
    return frozenset(chosen)


# The longest --every: a year (a rarer sweep is a cron line, or --once from a calendar).
MAX_EVERY_S = 366 * 86400


def parse_every(text: str) -> float:
    """``20s``, ``15m``, ``6h``, ``1d`` (or plain seconds) -> seconds; UserError otherwise."""
    found = re.fullmatch(r"\s*(-?\d+)\s*([smhd]?)\s*", text)
    if not found:
        raise UserError(f"--every {validate.shown(text)}: give a whole number with a unit, "
                        "e.g. 20s, 15m, 6h or 1d")
    seconds = int(found.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600,
                                     "d": 86400}[found.group(2)]
    if seconds < 1:
        raise UserError(f"--every '{text.strip()}': an interval must be at least 1 s "
                        "(a negative or zero one never fires); e.g. 20s, 15m, 6h or 1d")
    if seconds > MAX_EVERY_S:
        raise UserError(f"--every '{text.strip()}': at most 366d; for rarer sweeps use "
                        "--cron")
    return seconds


# --------------------------------------------------------------------------- one firing


@dataclass(frozen=True)
class Plan:
    """Everything a firing needs, validated once before the first one."""

    grid: str  # the sweep's name: the unit of "never two at once"
    grid_argument: str  # what the job's `run.py --grid` gets: a grid name or absolute path
    sweep_experiment: str
    tracking_uri: str
    address: str
    schedule: str  # "0 3 * * *", "every 20s" or "once", as recorded
    run_arguments: tuple[str, ...] = ()  # passed through to run.py
    code_dir: str | None = None  # run the checkout at this path on the head; else upload
    python: str = "python"

    def entrypoint(self) -> str:
        """The shell command the job runs."""
        command = shlex.join([self.python, "sweeps/run.py", "--grid", self.grid_argument,
                              "--tracking-uri", self.tracking_uri, *self.run_arguments])
        if self.code_dir is not None:
            return f"cd {shlex.quote(self.code_dir)} && {command}"
        return command

    def runtime_env(self, job_id: str) -> dict:
        """The job's runtime environment: its id for the sweep's records, maybe the code."""
        env: dict = {"env_vars": {"VERSWEEP_JOB_ID": job_id}}
        if self.code_dir is None:
            env["working_dir"] = str(REPO_ROOT)
            env["excludes"] = list(_UPLOAD_EXCLUDES)
        return env

    def job_id(self, fired_at: float) -> str:
        """A readable submission id: ``versweep-nightly-20261122T030000Z``."""
        from sweeps.cluster.jobs import submission_id_prefix

        stamp = datetime.datetime.fromtimestamp(fired_at, datetime.UTC)
        return f"{submission_id_prefix(self.grid)}{stamp:%Y%m%dT%H%M%SZ}"


@dataclass
class Firing:
    """What one firing did: its MLflow run, and the job it submitted (None: skipped)."""

    run_id: str
    job_id: str | None
    fired_at: float
    last_status: str = "PENDING"


def fire(plan: Plan, jobs: RayJobs, records: ScheduleRecords, fired_at: float,
         out: TextIO) -> Firing:
    """Submit the sweep now, or skip and say why if one of the same grid is still going."""
    from sweeps.cluster.jobs import JobExists

    stamp = _stamp(fired_at)
    going = [job for job in jobs.grid_jobs(plan.grid) if job.active]
    if going:
        blocking = going[-1]
        reason = (f"job {blocking.job_id} of grid '{plan.grid}' is still {blocking.status}; "
                  "never two of the same grid at once")
        run_id = records.record_skip(grid=plan.grid, fired_at=fired_at, schedule=plan.schedule,
                                     address=plan.address, reason=reason,
                                     blocking_job_id=blocking.job_id)
        _say(out, f"{stamp} {plan.grid}: skipped: {reason}")
        return Firing(run_id=run_id, job_id=None, fired_at=fired_at, last_status="SKIPPED")
    job_id = plan.job_id(fired_at)
    try:
        jobs.submit(submission_id=job_id, entrypoint=plan.entrypoint(), grid=plan.grid,
                    runtime_env=plan.runtime_env(job_id),
                    metadata={"versweep_schedule": plan.schedule,
                              "versweep_scheduler": f"{socket.gethostname()}:{os.getpid()}"})
    except JobExists:
        reason = f"the cluster already has job {job_id}: another scheduler submitted this firing"
        run_id = records.record_skip(grid=plan.grid, fired_at=fired_at, schedule=plan.schedule,
                                     address=plan.address, reason=reason, blocking_job_id=job_id)
        _say(out, f"{stamp} {plan.grid}: skipped: {reason}")
        return Firing(run_id=run_id, job_id=None, fired_at=fired_at, last_status="SKIPPED")
    run_id = records.record_submission(grid=plan.grid, job_id=job_id, fired_at=fired_at,
                                       schedule=plan.schedule, address=plan.address,
                                       entrypoint=plan.entrypoint(),
                                       sweep_experiment=plan.sweep_experiment)
    _say(out, f"{stamp} {plan.grid}: submitted job {job_id} (MLflow run {run_id} in "
              f"experiment 'versweep-schedule')")
    return Firing(run_id=run_id, job_id=job_id, fired_at=fired_at)


def refresh(jobs: RayJobs, records: ScheduleRecords, run_id: str, job_id: str,
            sweep_experiment: str, last_status: str | None = None) -> JobState | None:
    """Record the job's state from the cluster if it changed; with its end, the parent run.

    Returns the state; None when the cluster no longer knows the job, which is then
    recorded as LOST.
    """
    state = jobs.state(job_id)
    if state is None:
        # A head restarted without its job history: the job is not running any more.
        records.record_job_state(run_id, status=LOST, message=f"the cluster at {jobs.address} "
                                 "no longer knows this job (was its head restarted?)")
        return None
    if state.status == last_status and state.active:
        return state
    parent = None
    if not state.active:
        parent = (records.sweep_parent_run(sweep_experiment, job_id)
                  or parent_run_from_output(jobs.logs(job_id)))
    records.record_job_state(run_id, status=state.status, message=state.message,
                             exit_code=state.exit_code, started_at=state.start_time,
                             ended_at=state.end_time, sweep_parent_run_id=parent)
    return state


def parent_run_from_output(output: str) -> str | None:
    """The parent run id a sweep printed when it opened it (sweeps/run.py), or None."""
    found = _PARENT_RUN_LINE.search(output)
    return found.group(1) if found else None


def exit_code_of(state: JobState) -> int:
    """The sweep's exit code semantics for an ended job (see the module docstring)."""
    if state.status == "SUCCEEDED":
        return EXIT_OK
    if state.status == "STOPPED":
        return EXIT_INTERRUPTED
    if state.exit_code in (EXIT_FAILED, EXIT_USER_ERROR, EXIT_INTERRUPTED):
        return int(state.exit_code)
    return EXIT_FAILED  # a crash, or a job that never started (its runtime env failed)


# --------------------------------------------------------------------------- the commands


def make_plan(grid: str, *, address: str, schedule: str, tracking_uri: str | None = None,
              experiment: str | None = None, backend: str | None = None,
              overrides: Sequence[str] = (), max_concurrent: int | None = None,
              matrix: str | None = None, code_dir: str | None = None, python: str = "python",
              cwd: Path | None = None) -> Plan:
    """Validate the grid locally (its dry run must pass) and put the job's command together.

    Raises UserError for a grid that cannot run, before anything is submitted.
    """
    from sweeps.execute.sweep import run_sweep
    from sweeps.grid.load import load_sweep
    from sweeps.records.store import resolve_tracking_uri

    cwd = Path(cwd) if cwd is not None else Path.cwd()
    # The dry run the job would do first: the grid, its overrides, the backend's name.
    run_sweep(grid, backend=backend, experiment=experiment, overrides=overrides,
              max_concurrent=max_concurrent, matrix=matrix, dry_run=True, cwd=cwd,
              out=io.StringIO())
    sweep = load_sweep(grid, overrides, **({"matrix_path": Path(matrix)} if matrix else {}))
    is_path = "/" in grid or grid.endswith(".toml")
    arguments: list[str] = []
    if experiment:
        arguments += ["--experiment", experiment]
    if backend:
        arguments += ["--backend", backend]
    for item in overrides:
        arguments += ["--set", item]
    if max_concurrent:
        arguments += ["--max-concurrent", str(max_concurrent)]
    if matrix:
        arguments += ["--matrix", str((cwd / matrix).resolve())]
    return Plan(grid=sweep.name,
                grid_argument=str((cwd / grid).resolve()) if is_path else grid,
                sweep_experiment=experiment or sweep.name,
                tracking_uri=resolve_tracking_uri(tracking_uri, cwd), address=address,
                schedule=schedule, run_arguments=tuple(arguments),
                code_dir=str(Path(code_dir).expanduser()) if code_dir else None,
                python=python)


def run_once(plan: Plan, jobs: RayJobs, records: ScheduleRecords, out: TextIO) -> int:
    """Submit now, follow the job's output to its end, record it; return the exit code."""
    firing = fire(plan, jobs, records, time.time(), out)
    if firing.job_id is None:
        return EXIT_OK  # the sweep of this grid that is still going is this firing's run
    job_id = firing.job_id
    try:
        _say(out, f"following job {job_id} (Ctrl-C stops following; the job keeps running)")
        try:
            jobs.follow_logs(job_id, lambda text: (out.write(text), out.flush()))
        except Exception as exc:  # noqa: BLE001 - the stream is a convenience; polling decides
            _say(out, f"(cannot stream the job's output: {exc}; waiting for it to end)")
        state = jobs.state(job_id)
        while state is not None and state.active:
            time.sleep(2.0)
            state = jobs.state(job_id)
    except KeyboardInterrupt:
        _say(out, f"interrupted: job {job_id} keeps running on the cluster; follow it with "
                  f"`python sweeps/schedule.py list --address {plan.address}`, stop it with "
                  f"`ray job stop {job_id} --address {plan.address}`")
        return EXIT_INTERRUPTED
    state = refresh(jobs, records, firing.run_id, job_id, plan.sweep_experiment)
    if state is None:
        _say(out, f"job {job_id}: the cluster no longer knows it")
        return EXIT_FAILED
    _say(out, _ended_line(plan, records, firing.run_id, state))
    return exit_code_of(state)


def run_schedule(plan: Plan, jobs: RayJobs, records: ScheduleRecords, out: TextIO, *,
                 next_firing: Callable[[float], float], first_firing: float,
                 should_stop: Callable[[], bool] = lambda: False,
                 poll_seconds: float = POLL_SECONDS) -> int:
    """Fire at every due time until stopped; keep the records of submitted jobs current.

    ``next_firing(t)`` is the first firing after time ``t``. Returns EXIT_OK when
    ``should_stop`` says so (SIGTERM); Ctrl-C raises KeyboardInterrupt to the caller.
    """
    due = first_firing
    _say(out, f"scheduling grid '{plan.grid}' ({plan.schedule}, UTC) on {plan.address}; "
              f"first firing {_stamp(due)}; records in {plan.tracking_uri} experiment "
              "'versweep-schedule'. Ctrl-C stops the scheduler; submitted jobs keep running.")
    watching: dict[str, Firing] = {}  # job id -> its firing, until the job ends
    while not should_stop():
        # Jobs first: a job that just ended is recorded before the firing it let through.
        for job_id, firing in list(watching.items()):
            try:
                state = refresh(jobs, records, firing.run_id, job_id, plan.sweep_experiment,
                                firing.last_status)
            except Exception as exc:  # noqa: BLE001 - as for a firing, below
                _say(out, f"job {job_id}: cannot read its state now: {_one_line(exc)}")
                continue
            if state is None:
                watching.pop(job_id)
                continue
            if state.status != firing.last_status:
                firing.last_status = state.status
                if state.active:
                    _say(out, f"{_stamp(time.time())} {plan.grid}: job {job_id} {state.status}")
            if not state.active:
                watching.pop(job_id)
                _say(out, f"{_stamp(time.time())} {plan.grid}: "
                          + _ended_line(plan, records, firing.run_id, state))
        now = time.time()
        if now >= due:
            try:
                firing = fire(plan, jobs, records, due, out)
                if firing.job_id is not None:
                    watching[firing.job_id] = firing
            except Exception as exc:  # noqa: BLE001
                # The cluster or the store restarting must not end a scheduler meant to
                # run for months: say so, and fire again when the next one is due.
                _say(out, f"{_stamp(due)} {plan.grid}: firing failed: {_one_line(exc)}")
            due = next_firing(max(now, due))
            _say(out, f"next firing {_stamp(due)}")
        wait = min(poll_seconds, max(0.0, due - time.time()))
        _sleep_unless_stopped(wait, should_stop)
    _say(out, "scheduler stopped; submitted jobs keep running on the cluster")
    return EXIT_OK


def list_firings(*, tracking_uri: str | None = None, address: str | None = None,
                 grid: str | None = None, limit: int = 20, out: TextIO | None = None,
                 cwd: Path | None = None) -> int:
    """Print the recorded firings, the newest last; jobs not yet ended are asked about first."""
    from sweeps.cluster.jobs import RayJobs, dashboard_url
    from sweeps.records.schedule import ScheduleRecords, iso_utc
    from sweeps.records.store import resolve_tracking_uri, store_exists

    out = out if out is not None else sys.stdout
    uri = resolve_tracking_uri(tracking_uri, Path(cwd) if cwd is not None else Path.cwd())
    if address is not None:
        address = address.strip()
        dashboard_url(address)  # a malformed one is one line before the store is read
    if not store_exists(uri):  # listing reads; it never creates a store to find it empty
        out.write(f"no scheduled runs{f' of grid {grid!r}' if grid else ''} recorded in "
                  f"{uri} (no MLflow store there)\n")
        return EXIT_OK
    records = ScheduleRecords(uri)
    firings = records.firings(grid)[-limit:]
    clusters: dict[str, RayJobs | str] = {}  # address -> its job API, or why not
    unreached = set()
    for firing in firings:
        tags = firing["tags"]
        if firing["run_status"] != "RUNNING" or not tags.get("versweep.job_id"):
            continue
        where = address or tags.get("versweep.address", "")
        if where not in clusters:
            try:
                clusters[where] = RayJobs(where)
            except UserError as exc:
                clusters[where] = str(exc)
        cluster = clusters[where]
        if isinstance(cluster, str):
            unreached.add(where)
            continue
        try:
            refresh(cluster, records, firing["run_id"], tags["versweep.job_id"],
                    tags.get("versweep.sweep_experiment", tags.get("versweep.grid", "")))
        except (OSError, RuntimeError) as exc:  # the cluster went away between two calls
            clusters[where] = f"the Ray cluster at {where} stopped answering: {_one_line(exc)}"
            unreached.add(where)
    firings = records.firings(grid)[-limit:]  # again: the refreshed records
    if not firings:
        out.write(f"no scheduled runs{f' of grid {grid!r}' if grid else ''} recorded in "
                  f"{uri} (experiment 'versweep-schedule')\n")
        return EXIT_OK
    header = ["fired (UTC)", "grid", "status", "job id", "sweep parent run", "note"]
    rows = []
    for firing in firings:
        tags = firing["tags"]
        status = tags.get("versweep.job_status", "?")
        note = tags.get("versweep.skip_reason", "")
        if not note and tags.get("versweep.job_exit_code") not in (None, "0"):
            note = f"exit code {tags['versweep.job_exit_code']}: " \
                   f"{tags.get('versweep.job_message', '')}"
        if firing["run_status"] == "RUNNING" and \
                (address or tags.get("versweep.address", "")) in unreached:
            note = "as last recorded: cluster not reachable now"
        rows.append([tags.get("versweep.fired_at") or iso_utc(firing["start_time"]),
                     tags.get("versweep.grid", "?"), status, tags.get("versweep.job_id", "-"),
                     tags.get("versweep.sweep_parent_run_id", "-"), note])
    out.write(format_columns(header, rows) + "\n")
    for where in sorted(unreached):
        out.write(f"note: {clusters[where]}\n")
    return EXIT_OK


# --------------------------------------------------------------------------- helpers


def _ended_line(plan: Plan, records: ScheduleRecords, run_id: str, state: JobState) -> str:
    took = (f" after {state.end_time - state.start_time:.0f} s"
            if state.start_time and state.end_time else "")
    tags = records.client.get_run(run_id).data.tags
    parent = tags.get("versweep.sweep_parent_run_id")
    where = (f"; sweep parent run {parent} in experiment '{plan.sweep_experiment}'"
             if parent else "; no sweep parent run found")
    code = f" (exit code {state.exit_code})" if state.exit_code is not None else ""
    message = f": {state.message}" if state.status != "SUCCEEDED" and state.message else ""
    return f"job {state.job_id} {state.status}{code}{took}{message}{where}"


def _stamp(seconds: float) -> str:
    return datetime.datetime.fromtimestamp(seconds, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _say(out: TextIO, line: str) -> None:
    out.write(line + "\n")
    out.flush()


def _one_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    return lines[-1] if lines else type(error).__name__


def _sleep_unless_stopped(seconds: float, should_stop: Callable[[], bool]) -> None:
    end = time.monotonic() + seconds
    while not should_stop() and time.monotonic() < end:
        time.sleep(min(0.5, max(0.0, end - time.monotonic())))


def _is_loopback(address: str) -> bool:
    host = urlparse(address if "://" in address else "http://" + address).hostname or ""
    return host in ("localhost", "127.0.0.1", "::1") or host == socket.gethostname()


# --------------------------------------------------------------------------- command line


def build_parser(prog: str = "schedule.py") -> argparse.ArgumentParser:
    parser = ArgumentParser(
        help_hint=_hint(prog),
        prog=prog, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Submit a sweep (sweeps/run.py) to a Ray cluster as a Ray Job on a "
                    "schedule; never two of the same grid at once.",
        epilog="python sweeps/schedule.py list [--address A] [--tracking-uri URI] "
               "[--grid G] shows past firings.")
    parser.add_argument("--grid", required=True,
                        help="a grid name from sweeps/grids or the path of a .toml grid file")
    parser.add_argument("--address", required=True,
                        help="the Ray cluster's job API (its dashboard), e.g. http://HEAD:8265")
    when = parser.add_mutually_exclusive_group(required=True)
    when.add_argument("--cron", help='a five-field cron expression in UTC, e.g. "0 3 * * *"')
    when.add_argument("--every", help="a fixed interval, first firing now: 20s, 15m, 6h, 1d")
    when.add_argument("--once", action="store_true",
                      help="submit now, follow the job, exit with the sweep's exit code")
    parser.add_argument("--tracking-uri", help="MLflow tracking URI for the sweep and the "
                                               "schedule's records (default: "
                                               "$MLFLOW_TRACKING_URI, else ./mlflow.db)")
    parser.add_argument("--code-dir", help="run the versweep checkout already at this path "
                                           "on the head node instead of uploading this one")
    parser.add_argument("--python", default="python",
                        help="the Python on the cluster that runs sweeps/run.py "
                             "(default: python)")
    # Passed through to sweeps/run.py.
    parser.add_argument("--experiment", help="MLflow experiment of the sweep (default: the "
                                             "grid's name)")
    parser.add_argument("--backend", help="where workers run: local, docker or venv")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE", help="override a grid value (repeatable)")
    parser.add_argument("--max-concurrent", type=positive_int,
                        help="at most this many trials at once")
    parser.add_argument("--matrix", help="the image matrix the grid's images come from")
    return parser


def _hint(prog: str) -> str:
    return "python sweeps/schedule.py" if prog == "schedule.py" else prog


def build_list_parser(prog: str = "schedule.py") -> argparse.ArgumentParser:
    parser = ArgumentParser(help_hint=_hint(prog), prog=f"{prog} list",
                             description="Show the recorded firings of scheduled sweeps, the "
                                         "newest last, with their jobs' status.")
    parser.add_argument("--tracking-uri", help="MLflow tracking URI (default: "
                                               "$MLFLOW_TRACKING_URI, else ./mlflow.db)")
    parser.add_argument("--address", help="ask this cluster about jobs not yet ended (default: "
                                          "the address each firing recorded)")
    parser.add_argument("--grid", help="only this grid's firings (its sweep name)")
    parser.add_argument("--limit", type=positive_int, default=20,
                        help="show the last N firings (default 20)")
    return parser


def main(argv: Sequence[str] | None = None, prog: str = "schedule.py") -> int:
    """Parse ``argv`` and schedule, run once, or list; return the process exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    stop_requested = []
    previous = signal.signal(signal.SIGTERM, lambda *_: stop_requested.append(True))
    try:
        if argv[:1] == ["list"]:
            args = build_list_parser(prog).parse_args(argv[1:])
            return list_firings(tracking_uri=args.tracking_uri, address=args.address,
                                grid=args.grid, limit=args.limit)
        return _schedule_command(build_parser(prog).parse_args(argv),
                                 lambda: bool(stop_requested))
    except UserError as exc:
        sys.stderr.write(f"{prog}: error: {one_line(exc)}\n")
        return exc.exit_code
    except KeyboardInterrupt:
        sys.stderr.write(f"{prog}: interrupted; submitted jobs keep running on the cluster\n")
        return EXIT_INTERRUPTED
    finally:
        signal.signal(signal.SIGTERM, previous)


def _schedule_command(args: argparse.Namespace, should_stop: Callable[[], bool]) -> int:
    from sweeps.cluster.jobs import RayJobs
    from sweeps.records.schedule import ScheduleRecords

    # Everything a user can get wrong is checked before the cluster sees anything.
    cron = parse_cron(args.cron) if args.cron else None
    if cron is not None:
        cron.next_after(datetime.datetime.now(datetime.UTC))  # one that never fires is an error
    every = parse_every(args.every) if args.every else None
    schedule = args.cron.strip() if cron else f"every {args.every.strip()}" if every else "once"
    plan = make_plan(args.grid, address=args.address, schedule=schedule,
                     tracking_uri=args.tracking_uri, experiment=args.experiment,
                     backend=args.backend, overrides=args.overrides,
                     max_concurrent=args.max_concurrent, matrix=args.matrix,
                     code_dir=args.code_dir, python=args.python)
    jobs = RayJobs(args.address)
    plan = dataclasses.replace(plan, address=jobs.address)  # as the job API spells it
    records = ScheduleRecords(plan.tracking_uri)
    out = sys.stdout
    if plan.tracking_uri.startswith("sqlite:") and not _is_loopback(jobs.address):
        _say(out, f"note: the sweep records into {plan.tracking_uri} on the head node, the "
                  "schedule on this machine; use an MLflow server (--tracking-uri http://...) "
                  "when they are different machines")
    if args.once:
        return run_once(plan, jobs, records, out)
    if cron is not None:
        def next_cron(after: float) -> float:
            moment = datetime.datetime.fromtimestamp(after, datetime.UTC)
            return cron.next_after(moment).timestamp()

        return run_schedule(plan, jobs, records, out, next_firing=next_cron,
                            first_firing=next_cron(time.time()), should_stop=should_stop)
    assert every is not None
    start = time.time()

    def next_every(after: float) -> float:
        # Fixed rate from the start; firings missed while busy are not made up.
        return start + (int((after - start) // every) + 1) * every

    return run_schedule(plan, jobs, records, out, next_firing=next_every, first_firing=start,
                        should_stop=should_stop, poll_seconds=min(POLL_SECONDS, every / 2))


__all__ = ["CronSchedule", "Firing", "Plan", "fire", "list_firings", "make_plan", "main",
           "parse_cron", "parse_every", "refresh", "run_once", "run_schedule"]


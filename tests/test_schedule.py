"""Scheduled sweeps as a user runs them: a real Ray head with its job API, real Ray Jobs.

One Ray head per module, started with ``ray start --head`` and its dashboard (the job
API), on loopback ports nothing else uses, in a short private temp dir. Each test runs
``python sweeps/schedule.py`` in a child process and then checks what a user would:
its output and exit code, the records in MLflow, the jobs on the cluster, and what
``schedule.py list`` prints.
"""

from __future__ import annotations

import datetime
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from loopback_cluster import ray_cli
from sweeping import ROOT, end_processes_mentioning, env_grid, free_port, sweep_runs

SCHEDULE = ROOT / "sweeps" / "schedule.py"

JOB_ID = r"versweep-{grid}-\d{{8}}T\d{{6}}Z"


def clean_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    for name in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI"):
        env.pop(name, None)
    env.update(extra)
    return env


@pytest.fixture(scope="module")
def ray_head(tmp_path_factory):
    """A one-node Ray cluster with its job API; yields the dashboard's URL.

    Started from a working directory that lives as long as the cluster (Ray's
    processes keep it as their cwd). Afterwards every process of it, the jobs'
    drivers and trials included, is ended by pid: they all carry the temp dir in
    their environment (RAY_TMPDIR) or command line.
    """
    home = tmp_path_factory.mktemp("ray_head")
    temp_dir = tempfile.mkdtemp(prefix="vssch-", dir="/tmp")  # short: Unix socket paths
    dashboard = free_port()
    command = [ray_cli(), "start", "--head",
               "--node-ip-address", "127.0.0.1", "--port", str(free_port()),
               "--include-dashboard", "true", "--dashboard-host", "127.0.0.1",
               "--dashboard-port", str(dashboard), "--num-cpus", "2", "--num-gpus", "0",
               "--temp-dir", temp_dir, "--disable-usage-stats"]
    # Every other port Ray would otherwise take from its fixed defaults, which a
    # cluster of another test or another user on this machine may hold.
    for option in ("--ray-client-server-port", "--dashboard-agent-listen-port",
                   "--dashboard-agent-grpc-port", "--runtime-env-agent-port",
                   "--metrics-export-port", "--node-manager-port", "--object-manager-port"):
        command += [option, str(free_port())]
    try:
        started = subprocess.run(command, cwd=home, env=clean_env(RAY_TMPDIR=temp_dir),
                                 capture_output=True, text=True, timeout=240)
        assert started.returncode == 0, started.stdout[-3000:] + started.stderr[-3000:]
        yield f"http://127.0.0.1:{dashboard}"
    finally:
        end_processes_mentioning(temp_dir, remove=True)


def schedule(args: list[str], *, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run ``python sweeps/schedule.py ARGS`` in ``cwd`` and wait for it."""
    return subprocess.run([sys.executable, str(SCHEDULE), *args], cwd=cwd, env=clean_env(),
                          capture_output=True, text=True, timeout=timeout)


def schedule_runs(tracking_uri: str) -> list:
    """The runs of the schedule's experiment, oldest first."""
    from sweeps.records.store import open_client

    client = open_client(tracking_uri)
    found = client.get_experiment_by_name("versweep-schedule")
    assert found is not None, "no versweep-schedule experiment"
    runs = client.search_runs([found.experiment_id], max_results=1000)
    return sorted(runs, key=lambda run: run.info.start_time)


def test_once_runs_the_sweep_as_a_ray_job_and_records_it(ray_head, tmp_path, capsys):
    from sweeps.cluster.jobs import RayJobs
    from sweeps.cluster.schedule import main

    grid = tmp_path / "sched_once.toml"
    grid.write_text(env_grid("sched_once", [1, 2]))
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    done = schedule(["--once", "--grid", str(grid), "--address", ray_head,
                     "--tracking-uri", uri, "--python", sys.executable], cwd=tmp_path)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-4000:]
    job_id = re.search(r"submitted job (" + JOB_ID.format(grid="sched_once") + ")",
                       done.stdout).group(1)
    # The job's own output streams through: the sweep's summary.
    assert "trials: 2 ok, 0 unsupported, 0 failed" in done.stdout
    assert re.search(rf"job {job_id} SUCCEEDED \(exit code 0\) after \d+ s; sweep parent run "
                     r"[0-9a-f]{32} in experiment 'sched_once'", done.stdout), done.stdout[-2000:]

    # The sweep recorded its trials as any sweep does ...
    _, parents, children = sweep_runs(uri, "sched_once")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert len(children) == 2 and all(c.data.tags["versweep.status"] == "ok" for c in children)
    # ... and the firing is one run of the schedule's experiment that points at it.
    [firing] = schedule_runs(uri)
    tags = firing.data.tags
    assert firing.info.status == "FINISHED"
    assert tags["versweep.kind"] == "schedule" and tags["versweep.grid"] == "sched_once"
    assert tags["versweep.schedule"] == "once"
    assert tags["versweep.job_id"] == job_id and tags["versweep.job_status"] == "SUCCEEDED"
    assert tags["versweep.job_exit_code"] == "0"
    assert tags["versweep.sweep_parent_run_id"] == parents[0].info.run_id
    assert tags["versweep.sweep_experiment"] == "sched_once"

    # On the cluster: the job ran this checkout, uploaded with it, with the grid's name.
    info = RayJobs(ray_head).client.get_job_info(job_id)
    assert info.runtime_env["working_dir"].startswith("gcs://_ray_pkg_")
    assert info.metadata["versweep_grid"] == "sched_once"
    assert info.entrypoint.startswith(f"{sys.executable} sweeps/run.py --grid {grid} ")

    assert main(["list", "--tracking-uri", uri]) == 0
    listed = capsys.readouterr().out
    assert re.search(rf"sched_once\s+SUCCEEDED\s+{job_id}\s+{parents[0].info.run_id}",
                     listed), listed


def test_once_exits_with_the_sweeps_own_exit_code_when_the_job_fails(ray_head, tmp_path):
    # The versions grid passes its dry run here, but its docker images are not on this
    # node: the sweep in the job stops with a user error (exit 2) before any trial.
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    done = schedule(["--once", "--grid", "versions", "--address", ray_head,
                     "--tracking-uri", uri, "--python", sys.executable], cwd=tmp_path)
    assert done.returncode == 2, done.stdout[-3000:] + done.stderr[-3000:]
    assert "versweep: error: " in done.stdout  # the sweep's own one line, from the job
    job_id = re.search(r"submitted job (" + JOB_ID.format(grid="versions") + ")",
                       done.stdout).group(1)
    assert f"job {job_id} FAILED (exit code 2)" in done.stdout
    [firing] = schedule_runs(uri)
    assert firing.info.status == "FAILED"
    assert firing.data.tags["versweep.job_status"] == "FAILED"
    assert firing.data.tags["versweep.job_exit_code"] == "2"
    assert "versweep.sweep_parent_run_id" not in firing.data.tags  # it never opened one


def test_a_schedule_fires_again_but_never_while_its_sweep_is_still_going(ray_head, tmp_path,
                                                                          capsys):
    from sweeps.cluster.jobs import RayJobs
    from sweeps.cluster.schedule import main
    from sweeps.records.schedule import ScheduleRecords

    grid = tmp_path / "sched_every.toml"
    grid.write_text(env_grid("sched_every", [1]))
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    # A sweep job takes far longer than 5 s (its driver alone starts Ray Tune), so
    # firings come due while it still runs.
    log = tmp_path / "scheduler.log"
    with open(log, "w") as sink:
        scheduler = subprocess.Popen(
            [sys.executable, str(SCHEDULE), "--every", "5s", "--grid", str(grid),
             "--address", ray_head, "--tracking-uri", uri, "--python", sys.executable,
             "--code-dir", str(ROOT)],
            cwd=tmp_path, env=clean_env(), stdout=sink, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 300
        submitted: list = []
        while len(submitted) < 2:
            assert scheduler.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(2)
            if (tmp_path / "mlflow.db").exists():
                firings = ScheduleRecords(uri).firings("sched_every")
                submitted = [f for f in firings if f["tags"].get("versweep.job_id")]
        scheduler.send_signal(signal.SIGTERM)  # how systemd stops it
        assert scheduler.wait(timeout=60) == 0
    finally:
        if scheduler.poll() is None:
            scheduler.kill()
            scheduler.wait()
    output = log.read_text()
    assert "scheduler stopped; submitted jobs keep running on the cluster" in output

    firings = ScheduleRecords(uri).firings("sched_every")
    submitted = [f for f in firings if f["tags"].get("versweep.job_id")]
    first, second = (f["tags"] for f in submitted[:2])
    assert re.fullmatch(JOB_ID.format(grid="sched_every"), first["versweep.job_id"])
    assert first["versweep.entrypoint"].startswith(f"cd {ROOT} && ")  # --code-dir: no upload
    skipped = [f["tags"] for f in firings if f["tags"]["versweep.job_status"] == "SKIPPED"]
    assert skipped, output
    between = [s for s in skipped if first["versweep.fired_at"] < s["versweep.fired_at"]
               < second["versweep.fired_at"]]
    assert between, output  # the firings while the first sweep ran were skipped ...
    for tags in between:  # ... because of it, and said so
        assert tags["versweep.blocking_job_id"] == first["versweep.job_id"]
        assert re.fullmatch(rf"job {first['versweep.job_id']} of grid 'sched_every' is still "
                            r"(PENDING|RUNNING); never two of the same grid at once",
                            tags["versweep.skip_reason"])
        assert f"sched_every: skipped: {tags['versweep.skip_reason']}" in output
    # The scheduler followed the first job to its end and recorded it.
    assert submitted[0]["run_status"] == "FINISHED"
    assert first["versweep.job_status"] == "SUCCEEDED"
    assert re.fullmatch(r"[0-9a-f]{32}", first["versweep.sweep_parent_run_id"])

    # The cluster agrees: only the submitted jobs, and no two of them overlapped.
    jobs = RayJobs(ray_head).grid_jobs("sched_every")
    assert [job.job_id for job in jobs] == [f["tags"]["versweep.job_id"] for f in submitted]
    for earlier, later in zip(jobs, jobs[1:], strict=False):
        assert earlier.end_time is not None and later.start_time >= earlier.end_time

    # The second job was recorded PENDING when submitted; wait until the cluster has moved
    # it on (a busy machine may take a while to start it), so that what list shows can
    # only have come from the cluster.
    cluster_jobs = RayJobs(ray_head)
    deadline = time.monotonic() + 240
    while (state := cluster_jobs.state(second["versweep.job_id"])) is not None \
            and state.status == "PENDING":
        assert time.monotonic() < deadline, "the second job never left PENDING"
        time.sleep(1)
    # Every firing: on a loaded machine the first job runs for minutes and the firings it
    # skips (one every 5 s) push it out of list's default 20 rows.
    assert main(["list", "--tracking-uri", uri, "--grid", "sched_every", "--limit", "1000"]) == 0
    listed = capsys.readouterr().out
    assert re.search(rf"sched_every\s+SUCCEEDED\s+{first['versweep.job_id']}\s+[0-9a-f]{{32}}",
                     listed), listed
    assert re.search(rf"sched_every\s+SKIPPED\s+-\s+-\s+job {first['versweep.job_id']} of grid",
                     listed), listed
    # The job still going when the scheduler stopped: list asked the cluster about it.
    assert re.search(rf"sched_every\s+(RUNNING|SUCCEEDED)\s+{second['versweep.job_id']}", listed)


def test_list_shows_the_last_recorded_status_when_the_cluster_is_gone(tmp_path, capsys):
    from sweeps.cluster.schedule import main
    from sweeps.records.schedule import ScheduleRecords

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    gone = f"http://127.0.0.1:{free_port()}"  # the cluster that ran it is down now
    ScheduleRecords(uri).record_submission(
        grid="nightly", job_id="versweep-nightly-20261122T030000Z",
        fired_at=datetime.datetime(2026, 11, 22, 3, tzinfo=datetime.UTC).timestamp(),
        schedule="0 3 * * *", address=gone, entrypoint="python sweeps/run.py --grid nightly",
        sweep_experiment="nightly")
    assert main(["list", "--tracking-uri", uri]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert re.fullmatch(r"2026-11-22T03:00:00Z\s+nightly\s+PENDING\s+"
                        r"versweep-nightly-20261122T030000Z\s+-\s+as last recorded: cluster "
                        r"not reachable now", lines[1]), lines
    assert lines[2].startswith(f"note: cannot reach the Ray cluster's job API at {gone} ")
    [firing] = schedule_runs(uri)
    assert firing.info.status == "RUNNING"  # nothing is decided without the cluster
    assert firing.data.tags["versweep.cron"] == "0 3 * * *"


def test_an_unreachable_cluster_is_one_line_exit_2_and_submits_nothing(tmp_path):
    port = free_port()  # nothing listens on a port just found free
    done = schedule(["--once", "--grid", "smoke", "--address", f"http://127.0.0.1:{port}"],
                    cwd=tmp_path, timeout=120)
    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stderr.splitlines() == [
        f"schedule.py: error: cannot reach the Ray cluster's job API at http://127.0.0.1:{port} "
        "(Connection refused); is the cluster up, and is this its dashboard address (port 8265 "
        "unless --dashboard-port said otherwise)?"]
    assert os.listdir(tmp_path) == []  # no records


@pytest.mark.parametrize("args, message", [
    (["--cron", "0 3 * *"], r"--cron '0 3 \* \*': a cron expression has 5 fields"),
    (["--cron", "0 25 * * *"], r"--cron '0 25 \* \* \*': hour field '25': 25 is outside 0-23"),
    (["--cron", "0 0 30 feb *"], r"never fires"),
    (["--every", "0s"], r"--every '0s': an interval must be at least 1 s"),
    (["--once", "--cron", "0 3 * * *"], r"argument --cron: not allowed with argument --once"),
    (["--once", "--grid", "nightlee"], r"grid 'nightlee': no such grid"),
    (["--once", "--grid", "{bad}"], r"bad\.toml: sweep\.bakend: unknown key"),
    (["--once", "--set", "sweep.repeats=0"], r"sweep\.repeats"),
    (["--once", "--backend", "lokal"], r"'lokal' is not one of local, docker"),
])
def test_a_bad_schedule_or_grid_is_one_line_exit_2_before_any_cluster(tmp_path, monkeypatch,
                                                                       capsys, args, message):
    from sweeps.cluster.schedule import main

    bad = tmp_path / "bad.toml"
    bad.write_text('[sweep]\nname = "bad"\nbakend = "local"\n\n[[group]]\nworkload = "env"\n')
    given = {a for a in args if a.startswith("--")}
    # The cluster's address is never reached: every one of these fails before it.
    defaults = {"--grid": ["--grid", "smoke"], "--address": ["--address", "http://192.0.2.1"]}
    args = args + [item for option, pair in defaults.items() if option not in given
                   for item in pair]
    monkeypatch.chdir(tmp_path)
    assert main([a.replace("{bad}", str(bad)) for a in args]) == 2
    errors = capsys.readouterr().err.splitlines()
    assert len(errors) == 1 and errors[0].startswith("schedule.py: error: ")
    assert re.search(message, errors[0]), errors
    assert os.listdir(tmp_path) == ["bad.toml"]  # no records, nothing else


UTC = datetime.UTC


@pytest.mark.parametrize("expression, after, expected", [
    ("0 3 * * *", "2026-11-22T03:00", "2026-11-23T03:00"),  # strictly after
    ("0 3 * * *", "2026-11-22T02:59:30", "2026-11-22T03:00"),
    ("*/15 * * * *", "2026-11-22T03:07", "2026-11-22T03:15"),
    ("30 23 31 12 *", "2026-12-31T23:30", "2027-12-31T23:30"),  # across the year
    ("0 0 29 2 *", "2026-03-01T00:00", "2028-02-29T00:00"),  # the next leap day
    ("0 9-17/4 * * mon-fri", "2026-11-21T10:00", "2026-11-23T09:00"),  # Sat -> Mon 09:00
    ("0 0 1 * 1", "2026-11-22T00:00", "2026-11-23T00:00"),  # Vixie: the 1st OR a Monday
    ("0 0 * * 7", "2026-11-22T00:00", "2026-11-29T00:00"),  # 7 is Sunday too
    ("@weekly", "2026-11-22T00:00", "2026-11-29T00:00"),
    ("@hourly", "2026-11-22T23:59", "2026-11-23T00:00"),
    ("5/20 * * * *", "2026-11-22T00:06", "2026-11-22T00:25"),
])
def test_cron_fires_when_cron_would(expression, after, expected):
    from sweeps.cluster.schedule import parse_cron

    moment = datetime.datetime.fromisoformat(after).replace(tzinfo=UTC)
    fired = parse_cron(expression).next_after(moment)
    assert fired == datetime.datetime.fromisoformat(expected).replace(tzinfo=UTC)

"""Sweeps on a real two-node Ray cluster: routing by node resources, Ray Jobs, node loss.

The cluster is real: `ray start --head` and a second `ray start --address`, each a raylet
with its own custom resources, both on 127.0.0.1 (tests/loopback_cluster.py). Both nodes
share this machine's CPUs and its one Docker engine, so "node B holds image X" is what
node B *advertises* (its versweep_image resources), as `python -m sweeps.cluster.resources`
would make it advertise on a machine of its own; the test checks that Ray honours that.

    head (node A): 1 CPU, versweep_image:torch-2.13.0-cpu, versweep_image:<only on A>
    node B:        1 CPU, versweep_image:torch-2.13.0-cpu, versweep_image:<only on B>
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from loopback_cluster import LoopbackCluster, cluster_env, loopback_cluster
from sweeping import RUN, assert_nothing_lost, fault_figures, sweep_env, sweep_runs

from sweeps.cluster.resources import (
    image_resource,
    launcher_node_types,
    main,
    trial_routing,
    unplaceable,
)
from sweeps.grid.load import MATRIX_PATH, load_sweep
from sweeps.grid.matrix import load_matrix
from sweeps.grid.spec import TrialSpec
from sweeps.plan.resources import trial_resources

ROOT = Path(__file__).resolve().parent.parent

SHARED = "torch-2.13.0-cpu"  # the tests' own image (tests/dockerenv.py), on both nodes
# Names for the same image that only one node advertises (the matrix allows a "-suffix");
# the pid keeps two test runs on one Docker engine apart.
ONLY_A = f"{SHARED}-only-a{os.getpid()}"
ONLY_B = f"{SHARED}-only-b{os.getpid()}"
NOWHERE = f"{SHARED}-nowhere{os.getpid()}"
# The cluster runs with Ray's token authentication on, as a user's does (sweeps/cluster/
# configs turn it on); its drivers are given the token (docs/reliability.md, "Security").
TOKEN = f"versweep-test-token-{os.getpid()}-0123456789abcdef"


def matrix_with(path: Path, *names: str) -> Path:
    """images/matrix.toml plus a copy of the torch-2.13.0-cpu entry under each of ``names``."""
    text = MATRIX_PATH.read_text()
    start = text.rindex("[[image]]", 0, text.index(f'name = "{SHARED}"'))
    end = text.find("[[image]]", start + 1)
    entry = text[start:end if end != -1 else len(text)].rstrip() + "\n"
    copies = [entry.replace(f'name = "{SHARED}"', f'name = "{name}"') for name in names]
    path.write_text(text.rstrip() + "\n\n" + "\n".join(copies))
    return path


def docker_tag(source: str, *names: str):
    """Tag local image ``versweep:source`` as ``versweep:NAME`` for each name; returns an undo."""
    import docker

    client = docker.from_env(timeout=120)
    image = client.images.get(f"versweep:{source}")
    for name in names:
        image.tag("versweep", name)

    def undo():
        for name in names:
            try:
                client.images.remove(f"versweep:{name}", noprune=True)
            except docker.errors.ImageNotFound:
                pass
    return undo


@pytest.fixture(scope="module")
def cluster():
    """The two-node loopback cluster of this module (node B is lost in the last test)."""
    with loopback_cluster(token=TOKEN) as started:
        started.start_head(num_cpus=1, resources={image_resource(SHARED): 1000,
                                                  image_resource(ONLY_A): 1000})
        started.add_node(num_cpus=1, name="b",
                         resources={image_resource(SHARED): 1000,
                                    image_resource(ONLY_B): 1000})
        yield started


def node_names(cluster: LoopbackCluster) -> dict[str, str]:
    """Ray node id -> "head" / "b"."""
    return {node_id: node.name for node, node_id in cluster.node_ids().items()}


ROUTED_GRID = textwrap.dedent("""
    [sweep]
    name = "{name}"
    backend = "docker"
    device = "cpu"
    images = {images}
    container_memory = "2g"
    trial_timeout_s = 300

    [[group]]
    workload = "env"
    axes.seed = [1]
""")


def test_a_sweep_submitted_as_a_ray_job_runs_on_both_nodes_and_only_where_its_image_is(
        cluster, docker_image, tmp_path):
    from ray.job_submission import JobStatus, JobSubmissionClient

    undo = docker_tag(docker_image, ONLY_A, ONLY_B)
    try:
        matrix_with(tmp_path / "matrix.toml", ONLY_A, ONLY_B)
        (tmp_path / "routed.toml").write_text(ROUTED_GRID.format(
            name="routed", images=json.dumps([SHARED, ONLY_A, ONLY_B])))
        names = node_names(cluster)
        # The token as the scheduler sends it (sweeps/cluster/jobs.py): this process's Ray
        # read RAY_AUTH_MODE when it was imported, so setting it now would not count.
        client = JobSubmissionClient(cluster.dashboard_url,
                                     headers={"Authorization": f"Bearer {TOKEN}"})
        # As a user submits it: the job's driver runs on the head and finds the cluster
        # through RAY_ADDRESS, which Ray sets for it.
        job_id = client.submit_job(entrypoint=(
            f"cd {tmp_path} && {sys.executable} {RUN} --grid routed.toml --matrix matrix.toml "
            f"--tracking-uri sqlite:///{tmp_path}/mlflow.db"))
        deadline = time.monotonic() + 600
        while client.get_job_status(job_id) not in (JobStatus.SUCCEEDED, JobStatus.FAILED,
                                                    JobStatus.STOPPED):
            assert time.monotonic() < deadline, client.get_job_logs(job_id)[-3000:]
            time.sleep(2)
        logs = client.get_job_logs(job_id)
        assert client.get_job_status(job_id) == JobStatus.SUCCEEDED, logs[-4000:]
    finally:
        undo()
    assert "trials: 3 ok" in logs

    _, _, children = sweep_runs(f"sqlite:///{tmp_path}/mlflow.db", "routed")
    assert len(children) == 3
    assert all(c.info.status == "FINISHED" and c.data.tags["versweep.status"] == "ok"
               for c in children)
    where = {c.data.tags["versweep.image"]: names[c.data.tags["versweep.ray_node_id"]]
             for c in children}
    # Routing held: each one-node image ran on the one node that advertises it...
    assert where[ONLY_A] == "head" and where[ONLY_B] == "b"
    # ... so the sweep used both nodes; the shared image may run on either.
    assert where[SHARED] in ("head", "b")
    assert all(c.data.tags["versweep.ray_node_ip"] for c in children)


def test_an_image_no_node_advertises_fails_before_any_trial_with_the_pull_command(
        cluster, docker_image, tmp_path):
    # The driver's own engine has the image (so the docker backend's check on this node
    # passes); no node of the cluster says it holds it.
    undo = docker_tag(docker_image, NOWHERE)
    try:
        matrix_with(tmp_path / "matrix.toml", NOWHERE)
        (tmp_path / "nowhere.toml").write_text(ROUTED_GRID.format(
            name="nowhere", images=json.dumps([SHARED, NOWHERE])))
        done = subprocess.run(
            [sys.executable, str(RUN), "--grid", "nowhere.toml", "--matrix", "matrix.toml",
             "--address", cluster.address, "--tracking-uri", f"sqlite:///{tmp_path}/m.db"],
            cwd=tmp_path, env=cluster_env(token=TOKEN), capture_output=True, text=True, timeout=600)
    finally:
        undo()
    assert done.returncode == 2, done.stdout[-2000:] + done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("versweep: error:")]
    assert len(errors) == 1, done.stderr[-3000:]
    assert f"no node of the Ray cluster advertises image(s) {NOWHERE}," in errors[0]
    assert "python images/build.py pull --grid" in errors[0]


def test_this_nodes_resources_are_its_images_its_gpus_can_run_and_its_gpu_arch(
        docker_image, tmp_path, monkeypatch, capsys):
    # A stand-in nvidia-smi: an H100 whose driver (550) is too old for CUDA 13 images.
    smi = tmp_path / "bin" / "nvidia-smi"
    smi.parent.mkdir()
    smi.write_text("#!/bin/sh\necho '0, NVIDIA H100 80GB HBM3, 9.0, 550.54.15'\n")
    smi.chmod(0o755)
    monkeypatch.setenv("PATH", f"{smi.parent}{os.pathsep}{os.environ['PATH']}")
    cuda12 = f"torch-2.1.0-cu121-vsrt{os.getpid()}"
    cuda13 = f"torch-2.13.0-cu130-vsrt{os.getpid()}"
    text = MATRIX_PATH.read_text()
    for real, name in (("torch-2.1.0-cu121", cuda12), ("torch-2.13.0-cu130", cuda13)):
        start = text.rindex("[[image]]", 0, text.index(f'name = "{real}"'))
        end = text.find("[[image]]", start + 1)
        text += "\n" + text[start:end].replace(f'name = "{real}"', f'name = "{name}"')
    (tmp_path / "matrix.toml").write_text(text)
    # Tags only: what a node advertises depends on which images it holds, not what is in them.
    undo = docker_tag(docker_image, cuda12, cuda13)
    try:
        assert main(["--matrix", str(tmp_path / "matrix.toml")]) == 0
    finally:
        undo()
    out, err = capsys.readouterr()
    advertised = json.loads(out)
    assert advertised[image_resource(cuda12)] == 1000  # sm_90 kernels, CUDA 12.1, driver 550
    assert advertised[image_resource(SHARED)] == 1000  # CPU-only: runs CPU trials anywhere
    assert image_resource(cuda13) not in advertised  # its CUDA needs driver >= 580
    assert advertised["versweep_arch:sm_90"] == 1000
    assert re.search(rf"not advertising {cuda13}: .*needs NVIDIA driver >= 580", err)


def test_a_trial_only_some_gpu_archs_can_run_asks_for_one_of_them():
    matrix = load_matrix(MATRIX_PATH)
    image = matrix["torch-0.4.1-cu90"]  # cuDNN 7.1: no Hopper support; sm_70 kernels
    volta = {"CPU": 8, "GPU": 8, image_resource(image.name): 1000,
             "versweep_arch:sm_70": 1000}
    hopper = {"CPU": 8, "GPU": 4, image_resource(image.name): 1000,
              "versweep_arch:sm_90": 1000}

    def spec(**config):
        return TrialSpec(workload="rnn_bench", image=image.name,
                         config=tuple(sorted(config.items())), repeat=0, group=0)

    cudnn = spec(bench="1x320-ce-short", impl="cudnn")
    assert trial_routing(cudnn, image, wants_gpu=True, nodes=[volta, hopper]) == {
        image_resource(image.name): 1, "versweep_arch:sm_70": 1}
    # Without cuDNN (no gate) both archs run it: only the image is asked for.
    basic = spec(bench="1x320-ce-short", impl="basic", check=False)
    assert trial_routing(basic, image, wants_gpu=True, nodes=[volta, hopper]) == {
        image_resource(image.name): 1}
    # A CPU trial needs no GPU arch at all.
    assert trial_routing(cudnn, image, wants_gpu=False, nodes=[volta, hopper]) == {
        image_resource(image.name): 1}


def test_on_the_ray_up_cluster_every_nightly_trial_has_a_node_type_to_wait_for():
    """A `ray up` cluster may have no worker up yet: the driver's check before Tune starts
    counts the node types the autoscaler may start (sweeps/cluster/ray-up.yaml)."""
    import yaml

    config = yaml.safe_load((ROOT / "sweeps" / "cluster" / "ray-up.yaml").read_text())
    node_types = launcher_node_types(config)
    assert node_types and all(t.get("GPU") for t in node_types)  # the head starts no trial
    nightly = load_sweep("nightly")
    requests = {t.name: trial_resources(nightly, 1, spec=t, nodes=node_types)
                for t in nightly.trials}
    assert all(image_resource(t.image) in requests[t.name] for t in nightly.trials)
    assert unplaceable(requests, node_types) == {}


LOSS_GRID = textwrap.dedent("""
    [sweep]
    name = "node_loss"
    backend = "local"
    device = "cpu"
    trial_timeout_s = 300

    [[group]]
    workload = "ptb_lm"
    axes.seed = [1, 2, 3, 4]
    config.hidden_size = 16
    config.num_layers = 1
    config.num_steps = 5
    config.batch_size = 4
    config.max_epochs = 25
    config.synthetic_words = 3000
    config.synthetic_vocab = 50
    config.num_threads = 1
""")


# What sweeps/run.py does for a docker sweep with --address: join the cluster and check
# its routing first, then run Tune (here with every trial decided already: no trial runs).
JOIN_DRIVER = textwrap.dedent("""
    import sys
    from pathlib import Path
    from sweeps.grid.load import load_sweep
    from sweeps.execute import tune

    grid, address, work = sys.argv[1:]
    sweep = load_sweep(grid)
    _, joined = tune.join_and_check_routing(address, None)
    done = tune.run_tune(sweep, backend="local", tracking_uri="sqlite:///unused.db",
                         experiment="joined", parent_run_id="0" * 32,
                         skip_keys={t.key for t in sweep.trials}, storage_dir=Path(work),
                         max_concurrent=1, address=address, verbose=0)
    tune.shutdown()
    print("SECONDS", joined, done.ray_start_seconds)
""")


def test_a_driver_that_joined_the_cluster_before_tune_reports_the_time_it_took(
        cluster, tmp_path):
    # The sweep's "timings: ray start N s" is the ray.init of the join, not 0.00 s from
    # finding Ray already connected when Tune starts.
    (tmp_path / "again.toml").write_text(AGAIN_GRID)
    done = subprocess.run([sys.executable, "-c", JOIN_DRIVER, str(tmp_path / "again.toml"),
                           cluster.address, str(tmp_path)], cwd=ROOT, env=cluster_env(token=TOKEN),
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    joined, reported = (float(s) for s in re.search(r"^SECONDS (\S+) (\S+)$", done.stdout,
                                                     re.M).groups())
    assert joined > 0 and reported == joined


TEAM_GRID = textwrap.dedent("""
    [sweep]
    name = "team_server"
    backend = "local"
    device = "cpu"
    trial_timeout_s = 300
    max_concurrent = 2

    [[group]]
    workload = "env"
    axes.seed = [1, 2, 3]
    config.num_threads = 1
""")


@pytest.mark.needs("postgresql")
def test_trials_on_both_nodes_record_to_a_postgresql_server_and_send_artifacts_through_it(
        cluster, tmp_path, postgres_uri):
    """The deployment a team runs (README, "A team's tracking server"): one `mlflow server`
    on PostgreSQL with ``--artifacts-destination``; trials on any node log their records
    and their artifacts to it over HTTP, none to a disk of their own node."""
    from postgres import password_file
    from sweeping import running_mlflow_server

    server_home = tmp_path / "server"
    server_home.mkdir()
    work = tmp_path / "driver"  # the driver's working directory: nothing may land here
    work.mkdir()
    (work / "team.toml").write_text(TEAM_GRID)
    names = node_names(cluster)
    # As README's deployment keeps it: the password in the server's libpq password file,
    # not in its command line.
    bare = password_file(postgres_uri, server_home / "pgpass")
    assert ":" not in bare.split("//", 1)[1].split("@", 1)[0], "the password is still there"
    with running_mlflow_server(server_home, bare,
                               env={"PGPASSFILE": str(server_home / "pgpass")}) as url:
        done = subprocess.run(
            [sys.executable, str(RUN), "--grid", "team.toml", "--address", cluster.address,
             "--tracking-uri", url], cwd=work, env=cluster_env(token=TOKEN),
            capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        assert "trials: 3 ok" in done.stdout
        client, parents, children = sweep_runs(url, "team_server")
        assert len(parents) == 1 and parents[0].info.status == "FINISHED"
        assert len(children) == 3
        assert all(c.info.status == "FINISHED" and c.data.tags["versweep.status"] == "ok"
                   for c in children)
        # Both nodes ran trials, and each trial's records went to the one server.
        assert {names[c.data.tags["versweep.ray_node_id"]] for c in children} == {"head", "b"}
        for run in [*parents, *children]:
            # Proxied: the run's artifacts are the server's, addressed through it ...
            assert run.info.artifact_uri.startswith("mlflow-artifacts:/"), run.info.artifact_uri
        for child in children:
            listed = {f.path for f in client.list_artifacts(child.info.run_id)}
            assert "worker.log" in listed, listed
            # ... and they arrived in the server's artifact destination, sent over HTTP.
            stored = list((server_home / "artifacts").rglob(f"{child.info.run_id}/**/worker.log"))
            assert len(stored) == 1 and stored[0].stat().st_size > 0, stored
    # The store is the database: no SQLite file and no artifact folder beside the driver.
    leftovers = sorted(p.name for p in work.iterdir() if p.name != "team.toml")
    assert not any(name.endswith(".db") or name in ("mlruns", "mlartifacts")
                   for name in leftovers), leftovers


def wait_for_a_trial_part_way_on(node_id: str, uri: str, experiment: str,
                                 driver: subprocess.Popen, limit_s: float) -> None:
    """Wait until a trial of ``experiment`` runs on the node and has logged an epoch (a
    validation perplexity): the moment to lose that node."""
    deadline = time.monotonic() + limit_s
    while True:
        assert driver.poll() is None, "the sweep ended before a trial ran on the node"
        assert time.monotonic() < deadline, f"no trial part-way on the node in {limit_s:.0f} s"
        try:
            _, _, children = sweep_runs(uri, experiment)
        except AssertionError:  # the experiment is not there yet
            children = []
        if any(c.info.status == "RUNNING" and c.data.metrics.get("valid_perplexity")
               and c.data.tags.get("versweep.ray_node_id") == node_id for c in children):
            return
        time.sleep(0.5)


def test_losing_a_node_mid_sweep_reruns_its_trials_on_the_other_node_and_loses_nothing(
        cluster, tmp_path):
    """Runs last in this module: node B does not come back."""
    (tmp_path / "loss.toml").write_text(LOSS_GRID)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    names = node_names(cluster)
    node_b = next(node for node in cluster.nodes if node.name == "b")
    b_id = next(node_id for node_id, name in names.items() if name == "b")
    head_id = next(node_id for node_id, name in names.items() if name == "head")
    driver = subprocess.Popen(
        [sys.executable, str(RUN), "--grid", "loss.toml", "--address", cluster.address,
         "--tracking-uri", uri], cwd=tmp_path, env=cluster_env(token=TOKEN),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for_a_trial_part_way_on(b_id, uri, "node_loss", driver, 300)
        assert cluster.kill_node(node_b) > 0
        out, err = driver.communicate(timeout=600)
    finally:
        if driver.poll() is None:
            driver.kill()
    assert driver.returncode == 0, out[-3000:] + err[-3000:]
    assert "trials: 4 ok" in out

    _, _, children = sweep_runs(uri, "node_loss")
    finished: dict[str, list] = {}
    for child in children:
        if child.info.status == "FINISHED":
            finished.setdefault(child.data.tags["versweep.trial_key"], []).append(child)
    # Nothing lost, nothing twice: every trial has exactly one decided run, and it is ok.
    assert len(finished) == 4 and all(len(runs) == 1 for runs in finished.values())
    assert all(runs[0].data.tags["versweep.status"] == "ok" for runs in finished.values())
    assert all("test_perplexity" in runs[0].data.metrics for runs in finished.values())
    # The trial that was cut off on B ran again, to the end, on the head.
    lost = [c for c in children if c.info.status == "KILLED"]
    assert lost and all(c.data.tags["versweep.ray_node_id"] == b_id for c in lost)
    for run in lost:
        rerun = finished[run.data.tags["versweep.trial_key"]][0]
        assert rerun.data.tags["versweep.ray_node_id"] == head_id
    assert cluster.kill_node(node_b) == 0  # nothing of node B is left running
    figures = fault_figures(uri, "node_loss", [t.key for t in load_sweep(
        str(tmp_path / "loss.toml")).trials], result_metric="test_perplexity")
    assert_nothing_lost(figures)


@pytest.mark.slow
def test_losing_a_node_while_a_scheduled_runs_trials_run_on_it_loses_nothing(cluster, tmp_path):
    """A scheduled run (a Ray Job submitted by `schedule.py --once`) whose trial runs on a
    node that is lost: Tune runs it again on the head, the job succeeds, the firing's record
    says so, and the store holds every trial once. After the test above: node B is gone, so
    a node C joins for this one and is lost."""
    try:
        node_c = cluster.add_node(num_cpus=1, name="c", resources={image_resource(SHARED): 1000})
    except RuntimeError:  # `ray start` timed out on a loaded machine (seen at a load of 17)
        node_c = cluster.add_node(num_cpus=1, name="c2",
                                  resources={image_resource(SHARED): 1000})
    c_id = cluster.node_ids()[node_c]
    grid = tmp_path / "loss.toml"
    grid.write_text(LOSS_GRID.replace('"node_loss"', '"sched_loss"'))
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    scheduler = subprocess.Popen(
        [sys.executable, str(ROOT / "sweeps" / "schedule.py"), "--once", "--grid", str(grid),
         "--address", cluster.dashboard_url, "--tracking-uri", uri, "--python", sys.executable],
        cwd=tmp_path, env=cluster_env(token=TOKEN), stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True)
    try:
        wait_for_a_trial_part_way_on(c_id, uri, "sched_loss", scheduler, 400)
        assert cluster.kill_node(node_c) > 0
        out, err = scheduler.communicate(timeout=600)
    finally:
        if scheduler.poll() is None:
            scheduler.kill()
    assert scheduler.returncode == 0, out[-3000:] + err[-3000:]
    assert re.search(r"job versweep-sched_loss-\S+ SUCCEEDED \(exit code 0\)", out), out[-3000:]
    assert "trials: 4 ok" in out

    figures = fault_figures(uri, "sched_loss", [t.key for t in load_sweep(str(grid)).trials],
                            result_metric="test_perplexity")
    assert_nothing_lost(figures)
    _, parents, children = sweep_runs(uri, "sched_loss")
    # The trial cut off on C ran again, to the end, on the head; its run on C ended KILLED.
    lost = [c for c in children if c.info.status == "KILLED"]
    assert lost and all(c.data.tags["versweep.ray_node_id"] == c_id for c in lost)
    assert all(c.data.tags["versweep.ray_node_id"] != c_id for c in children
               if c.info.status == "FINISHED"
               and c.data.tags["versweep.trial_key"] in {r.data.tags["versweep.trial_key"]
                                                         for r in lost})
    # The firing's record: one run of versweep-schedule, SUCCEEDED, pointing at the sweep.
    from sweeps.records.store import open_client

    client = open_client(uri)
    found = client.get_experiment_by_name("versweep-schedule")
    [firing] = client.search_runs([found.experiment_id])
    assert firing.info.status == "FINISHED"
    assert firing.data.tags["versweep.job_status"] == "SUCCEEDED"
    assert firing.data.tags["versweep.sweep_parent_run_id"] == parents[0].info.run_id
    print("FIGURES", {k: v for k, v in figures.items() if k != "problems"})
    assert cluster.kill_node(node_c) == 0


AGAIN_GRID = textwrap.dedent("""
    [sweep]
    name = "again"
    backend = "local"
    device = "cpu"
    trial_timeout_s = 120

    [[group]]
    workload = "env"
    axes.seed = [1, 2]
    config.num_threads = 1
""")

# Tune starts a trial again when its trial process is lost. If the node went away after
# the trial had recorded its decision but before Tune heard of it, the decision stands.
# This driver plays that moment: trial 1's decision is recorded (through SweepRecords, as
# a trial records it), then Tune is asked to run both trials of the same sweep run.
AGAIN_DRIVER = textwrap.dedent("""
    import sys
    from pathlib import Path
    from sweeps.grid.load import load_sweep
    from sweeps.records.store import SweepRecords
    from sweeps.execute import tune

    grid, uri, work = sys.argv[1:]
    sweep = load_sweep(grid)
    records = SweepRecords(uri, "again")
    parent = records.open_sweep(sweep, resume=False)
    first = sweep.trials[0]
    run_id = records.start_trial(parent, first)
    records.finish_trial(run_id, "ok", extra_tags={"versweep.decided_before_loss": "yes"})
    done = tune.run_tune(sweep, backend="local", tracking_uri=uri, experiment="again",
                         parent_run_id=parent, skip_keys=set(), storage_dir=Path(work),
                         max_concurrent=1, num_cpus=1, verbose=0)
    tune.shutdown()
    for record in done.records:
        print("RECORD", record.key, record.status, record.run_id)
    print("FIRST", first.key, run_id)
""")


def test_a_trial_started_again_after_its_decision_was_recorded_keeps_that_decision(
        tmp_path, ray_tmp):
    (tmp_path / "again.toml").write_text(AGAIN_GRID)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    done = subprocess.run([sys.executable, "-c", AGAIN_DRIVER, str(tmp_path / "again.toml"),
                           uri, str(tmp_path)], cwd=ROOT, env=sweep_env(ray_tmp),
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    first_key, first_run = re.search(r"^FIRST (\S+) (\S+)$", done.stdout, re.M).groups()
    records = dict(re.findall(r"^RECORD (\S+) ok (\S+)$", done.stdout, re.M))
    assert len(records) == 2  # Tune learnt both decisions ...
    assert records[first_key] == first_run  # ... the first one from its recorded run
    _, _, children = sweep_runs(uri, "again")
    assert len(children) == 2  # no second run for the first trial
    assert all(c.info.status == "FINISHED" for c in children)
    first = next(c for c in children if c.info.run_id == first_run)
    assert first.data.tags["versweep.decided_before_loss"] == "yes"

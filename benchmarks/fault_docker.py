"""Faults of a sweep's machine, with the real parts (issue 14): the Docker engine restarted,
a worker killed by the kernel's OOM killer, the artifact store's disk full.

``--fault engine-restart``: a PRIVATE dockerd (its own data root, exec root, pid file and
socket in a fresh /tmp directory, a bridge of its own, no iptables, its own containerd namespace:
the system's engine is never touched) is started, the tests' image is copied into it
(``docker save | docker -H ... load``), and a real docker-backend sweep (``sweeps/run.py``,
Ray Tune, DOCKER_HOST = the private engine) of ``--trials`` rnn_bench trials of a few
seconds each runs on it; once ``--after`` trials have finished and a trial's container is
running, the engine is stopped (SIGTERM: dockerd stops its containers, as a restart of
the docker service does), left down ``--down`` seconds, and started again.

``--fault oom``: a docker-backend sweep on the system's engine whose container memory
limit (``sweep.container_memory``, ``--memory``) is below what one of its trials needs:
an rnn_bench config whose own estimate fits the limit (the worker's memory check passes
it) but whose real peak, torch's own memory on top, does not; the kernel's OOM killer
kills its worker. The ``env`` trials beside it fit.

``--fault disk-full``: a local-backend sweep (a torch-free stand-in worker, as
benchmarks/fault_mlflow_outage.py) whose SQLite store's artifact folder (mlartifacts/,
beside mlflow.db) is a small tmpfs; once ``--after`` trials have finished it is filled
to the last byte. If the sweep fails, the filler is deleted (space freed) and the same
command with ``--resume`` is run once.

The figures are counted from the store by benchmarks/fault_mlflow_outage.py's ``count``:
trials finished, lost, duplicated, inconsistent records; with the messages of the failed
trials, the exit codes and the last lines of the driver's console.

    python benchmarks/fault_docker.py --fault engine-restart
    python benchmarks/fault_docker.py --fault oom
    python benchmarks/fault_docker.py --fault disk-full

Needs root (dockerd, mount) and, for the first two, the tests' image
versweep:torch-2.13.0-cpu (tests/dockerenv.py builds it). tests/test_faults.py runs
``measure`` for each fault.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import fault_sweep  # noqa: E402  (how every fault starts its sweep)

EXPERIMENT = "faults"
TEST_IMAGE = "torch-2.13.0-cpu"  # tests/dockerenv.py's image of the matrix


def _outage_module():
    spec = importlib.util.spec_from_file_location(
        "fault_mlflow_outage", ROOT / "benchmarks" / "fault_mlflow_outage.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


outage = _outage_module()

ENGINE_GRID = textwrap.dedent("""
    [sweep]
    name = "faults"
    backend = "docker"
    device = "cpu"
    images = ["{image}"]
    container_memory = "2g"
    trial_timeout_s = 300
    max_concurrent = 1

    [[group]]
    workload = "rnn_bench"
    axes.seed = {seeds}
    config.bench = "1x320-ce-short"
    config.batch_size = 4
    config.seq_len = 8
    config.hidden_size = 16
    config.batches = {batches}
    config.warmup_batches = 1
    config.num_threads = 1
""")

OOM_GRID = textwrap.dedent("""
    [sweep]
    name = "faults"
    backend = "docker"
    device = "cpu"
    images = ["{image}"]
    container_memory = "{memory}"
    trial_timeout_s = 300
    max_concurrent = 1

    [[group]]
    workload = "env"
    axes.seed = [1, 2]
    config.num_threads = 1

    # Its own estimate (parameters, activations, data: 340 MiB) fits a 384 MiB limit, so
    # the worker's memory check lets it start; torch's own memory on top does not fit.
    [[group]]
    workload = "rnn_bench"
    config.bench = "1x320-ce-short"
    config.batch_size = 64
    config.seq_len = 400
    config.batches = 3
    config.warmup_batches = 1
    config.num_threads = 1
""")



# --------------------------------------------------------------------------- a private engine


class PrivateEngine:
    """A dockerd of its own: nothing of the system's engine is shared but the binary and
    the system's containerd (under a namespace of its own)."""

    def __init__(self):
        self.dir = Path(tempfile.mkdtemp(prefix="vsd-", dir="/tmp"))
        self.sock = self.dir / "docker.sock"
        self.host = f"unix://{self.sock}"
        self.namespace = f"versweep-fault-{self.dir.name[4:]}"
        self.proc: subprocess.Popen | None = None
        self.starts = 0
        (self.dir / "daemon.json").write_text("{}")
        # A bridge of its own. `--bridge=none` would not do: a dockerd started with it
        # deletes the interface docker0 (moby's removeDefaultBridgeInterface), which the
        # system's engine then lacks for every later container and build.
        self.bridge = f"vsd{self.dir.name[4:12]}"[:15]
        subnet = 100 + int.from_bytes(os.urandom(1), "big") % 100
        for command in (["ip", "link", "add", self.bridge, "type", "bridge"],
                        ["ip", "addr", "add", f"10.{subnet}.{os.getpid() % 250}.1/24",
                         "dev", self.bridge],
                        ["ip", "link", "set", self.bridge, "up"]):
            subprocess.run(command, check=True, capture_output=True)

    def start(self) -> None:
        self.starts += 1
        log = open(self.dir / f"dockerd-{self.starts}.log", "w")
        self.proc = subprocess.Popen(
            ["dockerd", "--config-file", str(self.dir / "daemon.json"),
             "--data-root", str(self.dir / "data"), "--exec-root", str(self.dir / "x"),
             "--pidfile", str(self.dir / "docker.pid"), "-H", self.host,
             f"--bridge={self.bridge}", "--iptables=false", "--ip-masq=false", "--ip-forward=false",
             "--userland-proxy=false", "--containerd-namespace", self.namespace,
             "--containerd-plugins-namespace", self.namespace + "-plugins",
             "--cgroup-parent", "/versweep-fault", "--shutdown-timeout", "10"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        deadline = time.monotonic() + 120
        while not self.answers():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the private dockerd did not start:\n" + (
                    self.dir / f"dockerd-{self.starts}.log").read_text()[-3000:])
            time.sleep(0.3)

    def client(self, timeout: float = 60):
        import docker

        return docker.DockerClient(base_url=self.host, timeout=timeout)

    def answers(self) -> bool:
        try:
            client = self.client(timeout=5)
            try:
                return bool(client.ping())
            finally:
                client.close()
        except Exception:  # noqa: BLE001 - not up (yet)
            return False

    def load(self, image: str) -> None:
        """Copy ``image`` from the system's engine into this one."""
        save = subprocess.Popen(["docker", "save", image], stdout=subprocess.PIPE)
        loaded = subprocess.run(["docker", "-H", self.host, "load", "-q"], stdin=save.stdout,
                                capture_output=True, text=True, timeout=900)
        assert save.stdout is not None
        save.stdout.close()
        save.wait()
        if loaded.returncode != 0 or save.returncode != 0:
            raise RuntimeError(f"docker save | docker load failed: {loaded.stderr[-2000:]}")

    def running_containers(self) -> int:
        try:
            client = self.client(timeout=10)
            try:
                return len(client.containers.list())
            finally:
                client.close()
        except Exception:  # noqa: BLE001
            return 0

    def stop(self) -> float:
        """SIGTERM, as `systemctl stop docker` sends; returns the seconds it took."""
        started = time.monotonic()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        return time.monotonic() - started

    def remove(self) -> None:
        """Remove its containers, stop it, delete its files."""
        if self.proc is not None and self.proc.poll() is None:
            try:
                client = self.client(timeout=30)
                for container in client.containers.list(all=True):
                    container.remove(force=True)
                client.close()
            except Exception:  # noqa: BLE001
                pass
            self.stop()
        subprocess.run(["umount", "-R", str(self.dir / "data")], capture_output=True)
        subprocess.run(["ip", "link", "delete", self.bridge], capture_output=True)
        shutil.rmtree(self.dir, ignore_errors=True)


# --------------------------------------------------------------------------- the sweep


def _finished(home: Path) -> int:
    """FINISHED trial runs so far, read from the SQLite store directly (read-only)."""
    db = home / "mlflow.db"
    if not db.exists():
        return 0
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as connection:
            (found,) = connection.execute(
                "select count(*) from runs join tags on tags.run_uuid = runs.run_uuid "
                "where tags.key = 'versweep.kind' and tags.value = 'trial' "
                "and runs.status = 'FINISHED'").fetchone()
        return int(found)
    except sqlite3.Error:
        return 0


def _finish(figures: dict, home: Path, grid: Path, env: dict, driver: subprocess.Popen,
            started: float, result_metric: str, before_resume=None, say=print) -> dict:
    """Wait for the sweep; --resume once if it failed; count."""
    try:
        figures["exit_code"] = driver.wait(timeout=900)
    except subprocess.TimeoutExpired:
        driver.kill()
        driver.wait()
        figures["exit_code"] = "killed after 900 s"
    figures["sweep_wall_s"] = round(time.monotonic() - started, 1)
    log = (home / "driver.log").read_text(errors="replace")
    figures["driver_tail"] = log.splitlines()[-4:]
    figures["tracebacks"] = log.count("Traceback (most recent call last)")
    if figures["exit_code"] != 0 and figures.get("resume", True):
        if before_resume is not None:
            before_resume()
        say(f"the sweep exited {figures['exit_code']}; running it again with --resume")
        resumed = fault_sweep.launch(home, grid, EXPERIMENT, env, "--resume")
        figures["resume_exit_code"] = resumed.wait(timeout=900)
        figures["sweep_wall_s"] = round(time.monotonic() - started, 1)
        figures["resume_tail"] = (home / "driver-resume.log").read_text(
            errors="replace").splitlines()[-4:]
    uri = f"sqlite:///{home / 'mlflow.db'}"
    figures.update(outage.count(uri, fault_sweep.planned_keys(grid), experiment_name=EXPERIMENT,
                                result_metric=result_metric))
    figures["messages"] = _messages(uri)
    return figures


def _messages(uri: str) -> list[str]:
    """The first line of versweep.message of every decided run that is not ok."""
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(EXPERIMENT)
    runs = client.search_runs([experiment.experiment_id],
                              "tags.`versweep.kind` = 'trial' and attributes.status = 'FINISHED'",
                              max_results=1000)
    return [(r.data.tags.get("versweep.message") or "").splitlines()[0] for r in runs
            if r.data.tags.get("versweep.status") != "ok"
            and r.data.tags.get("versweep.message")]


def engine_restart(home: Path, *, trials: int = 4, after: int = 1, batches: int = 4000,
                   down: float = 5.0, ray_tmp: str | None = None, say=print) -> dict:
    grid = home / "faults.toml"
    grid.write_text(ENGINE_GRID.format(image=TEST_IMAGE, seeds=list(range(1, trials + 1)),
                                       batches=batches))
    engine = PrivateEngine()
    figures: dict = {"fault": "engine-restart", "trials": trials, "engine": engine.host}
    try:
        engine.start()
        load_started = time.monotonic()
        engine.load(f"versweep:{TEST_IMAGE}")
        figures["image_load_s"] = round(time.monotonic() - load_started, 1)
        env = fault_sweep.sweep_env(ray_tmp, DOCKER_HOST=engine.host)
        started = time.monotonic()
        driver = fault_sweep.launch(home, grid, EXPERIMENT, env)
        fault_sweep.wait_until(driver, home, lambda: _finished(home) >= after,
                               f"{after} finished trial(s)")
        fault_sweep.wait_until(driver, home, lambda: engine.running_containers() > 0,
                               "a running container")
        time.sleep(1.0)  # the worker is well into its trial
        figures["finished_before_fault"] = _finished(home)
        figures["containers_running_at_fault"] = engine.running_containers()
        say(f"{figures['finished_before_fault']} trial(s) finished; stopping the engine")
        fault_started = time.monotonic()
        figures["engine_stop_s"] = round(engine.stop(), 1)
        time.sleep(down)
        engine.start()
        figures["engine_down_s"] = round(time.monotonic() - fault_started, 1)
        say(f"engine back after {figures['engine_down_s']} s")
        return _finish(figures, home, grid, env, driver, started, "parameters", say=say)
    finally:
        engine.remove()


def oom(home: Path, *, memory: str = "384m", ray_tmp: str | None = None, say=print) -> dict:
    grid = home / "faults.toml"
    grid.write_text(OOM_GRID.format(image=TEST_IMAGE, memory=memory))
    figures: dict = {"fault": "oom", "container_memory": memory, "resume": False}
    env = fault_sweep.sweep_env(ray_tmp)
    started = time.monotonic()
    driver = fault_sweep.launch(home, grid, EXPERIMENT, env)
    # A failed trial is the right outcome here: no --resume (it would fail the same way).
    return _finish(figures, home, grid, env, driver, started,
                   ("parameters", outage.RESULT_METRIC), say=say)


def disk_full(home: Path, *, trials: int = 6, after: int = 2, trial_seconds: int = 2,
              size: str = "1m", ray_tmp: str | None = None, say=print) -> dict:
    python = home / "standin-python"
    python.write_text(outage.STANDIN.format(python=sys.executable, seconds=trial_seconds))
    python.chmod(0o755)
    grid = home / "faults.toml"
    grid.write_text(fault_sweep.env_grid(EXPERIMENT, range(1, trials + 1), timeout_s=300))
    artifacts = home / "mlartifacts"  # sweeps/records/location.py: beside mlflow.db
    artifacts.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "versweep-fault", str(artifacts)],
                   check=True)
    filler = artifacts / "filler"
    figures: dict = {"fault": "disk-full", "trials": trials, "tmpfs": size}
    try:
        env = fault_sweep.sweep_env(ray_tmp, VERSWEEP_PYTHON=str(python))
        started = time.monotonic()
        driver = fault_sweep.launch(home, grid, EXPERIMENT, env)
        fault_sweep.wait_until(driver, home, lambda: _finished(home) >= after,
                               f"{after} finished trial(s)")
        figures["finished_before_fault"] = _finished(home)
        descriptor = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o644)
        try:  # to the last byte
            while True:
                os.write(descriptor, b"\0" * 512)
        except OSError as error:
            figures["filled"] = error.strerror
        finally:
            os.close(descriptor)
        say(f"{figures['finished_before_fault']} trial(s) finished; artifact disk full")

        def free_space() -> None:
            filler.unlink()
            say("space freed")

        return _finish(figures, home, grid, env, driver, started, outage.RESULT_METRIC,
                       before_resume=free_space, say=say)
    finally:
        subprocess.run(["umount", "-l", str(artifacts)], capture_output=True)


def measure(fault: str, home: Path, *, ray_tmp: str | None = None, say=print, **options) -> dict:
    home.mkdir(parents=True, exist_ok=True)
    run = {"engine-restart": engine_restart, "oom": oom, "disk-full": disk_full}[fault]
    return run(home, ray_tmp=ray_tmp, say=say, **options)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fault", choices=("engine-restart", "oom", "disk-full"), required=True)
    parser.add_argument("--trials", type=int, help="engine-restart: 4, disk-full: 6")
    parser.add_argument("--after", type=int, help="trials finished before the fault")
    parser.add_argument("--down", type=float, default=5.0,
                        help="engine-restart: seconds the engine stays stopped")
    parser.add_argument("--memory", default="384m", help="oom: the container memory limit")
    parser.add_argument("--keep", action="store_true", help="keep the working directory")
    args = parser.parse_args()
    options: dict = {}
    if args.trials is not None:
        options["trials"] = args.trials
    if args.after is not None:
        options["after"] = args.after
    if args.fault == "engine-restart":
        options["down"] = args.down
    if args.fault == "oom":
        options["memory"] = args.memory
    home = Path(tempfile.mkdtemp(prefix="vsfault-"))
    ray_tmp = tempfile.mkdtemp(prefix="vsray-", dir="/tmp")
    try:
        figures = measure(args.fault, home, ray_tmp=ray_tmp, **options)
    finally:
        if not args.keep:
            shutil.rmtree(home, ignore_errors=True)
        shutil.rmtree(ray_tmp, ignore_errors=True)
    print(json.dumps(figures, indent=1))
    if args.keep:
        print(f"kept: {home}")
    bad = figures["lost"] + figures["duplicated"] + figures["inconsistent"]
    return 0 if bad == 0 else 1


if __name__ == "__main__":
    sys.exit(main())

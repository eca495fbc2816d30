"""Ray Tune around trials: the only module of versweep that imports Ray.

A grid sweep is one Tune trial per TrialSpec (``tune.grid_search`` over trial keys, in
batches of GRID_BATCH_TRIALS per Tuner.fit, so the driver's memory stays flat);
a search sweep samples configs with OptunaSearch (TPE, a persistent study so
``--resume`` continues it) and stops poor trials with ASHA. Every Tune trial runs the
same function trainable: open the child run, run the worker through sweeps.execute.trial,
``tune.report`` each metric event, finish the child run with the outcome.

What the trainable reports to Tune, besides the worker's metrics and ``step``:
``versweep_run_id`` and ``versweep_trial_key`` on every report, and one final report
with ``versweep_status`` (and the result metrics), so the driver learns every outcome
without asking MLflow. A trial that Tune stopped (ASHA, Ctrl-C) never sends the final
report: the driver records it as "stopped" itself.

On a cluster (``--address``): a docker trial asks for its image's node resource when the
nodes advertise images (sweeps/cluster/resources.py), each trial's child run is tagged
with the Ray node it ran on, and a trial whose process is lost with its node is started
again by Tune on another node (its stale run ends KILLED, the new one is the record).

Trial processes print nothing to the driver's console (``log_to_driver=False``: Tune's
table is the console). What a venv trial's backend says about a long step (building its
environment, waiting for another trial's build of it) reaches the console through a
LineRelay actor (sweeps/progress.py) the driver reads between Tune's steps:
``versweep: torch-2.13.0-py3.11: still building, 45 s (last: ...)``.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import functools
import logging
import math
import os
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ray
from ray import tune
from ray.tune import PlacementGroupFactory
from ray.tune.schedulers import AsyncHyperBandScheduler, TrialScheduler

from sweeps import status as rules
from sweeps.cluster.resources import (
    IMAGE_PREFIX,
    launcher_node_types,
    missing_images_message,
    unplaceable,
)
from sweeps.errors import ArtifactStoreFull, UserError
from sweeps.execute.backends import get_backend
from sweeps.execute.summary import TrialRecord
from sweeps.execute.trial import run_trial
from sweeps.grid.spec import Sweep, TrialSpec
from sweeps.paths import REPO_ROOT
from sweeps.plan.resources import routes_by_image, trial_resources
from sweeps.progress import EVERY_S_VAR, LineRelay, Relayed
from sweeps.records.layout import study_name
from sweeps.status import Decision, Status

# Report keys the trainable adds to the worker's metrics.
RUN_ID, TRIAL_KEY, STATUS, MESSAGE = (
    "versweep_run_id", "versweep_trial_key", "versweep_status", "versweep_message")
# In a final report: 0 when the trial was interrupted, not decided (--resume runs it).
DECIDED = "versweep_decided"
# Tune's message column is short; MLflow keeps the full message.
_REPORTED_MESSAGE_CHARS = 300
# Keys Tune adds to every result; the rest of a report are the trial's own figures.
_TUNE_BOOKKEEPING = frozenset({
    "time_this_iter_s", "time_total_s", "timestamp", "training_iteration", "pid",
    "time_since_restore", "iterations_since_restore", "done", "step", "startup_seconds",
    DECIDED})
# How often Tune starts a trial again whose trial process was lost (its node died, or the
# process was killed). A worker that fails is retried by the trial itself (sweeps/execute/trial.py)
# and ends with a status, so only a lost trial process reaches Tune as a failure.
LOST_TRIAL_RETRIES = 3


@dataclass(frozen=True)
class TrialContext:
    """What every trial process needs to run and record a trial (shipped once via Ray)."""

    sweep: Sweep
    backend: str
    tracking_uri: str
    experiment: str
    parent_run_id: str
    log_dir: str
    specs_by_key: dict = field(default_factory=dict)  # grid sweeps: key -> TrialSpec
    console: Any = None  # a Relayed to the driver's LineRelay: the backend's console


@dataclass
class TuneRun:
    """What Ray Tune did: each trial's record, and the timings the benchmark quotes."""

    records: list[TrialRecord]
    interrupted: bool = False
    ray_start_seconds: float = 0.0
    tune_seconds: float = 0.0  # Tuner.fit, after Ray had started


def search_spec(sweep: Sweep, sampled: dict) -> TrialSpec:
    """The TrialSpec of one sampled point: base config + sampled keys, resolved in full."""
    from sweeps import workloads

    search = sweep.search
    assert search is not None, "search_spec is for search sweeps"
    raw = dict(search.base_config)
    raw.update({name: _plain(value) for name, value in sampled.items()})
    plugin = workloads.get(search.workload, search.workload_dir)
    config = workloads.resolve_config(plugin, raw)
    return TrialSpec(workload=search.workload, image=search.image,
                     config=tuple(sorted(config.items())), repeat=0, group=0,
                     workload_dir=search.workload_dir,
                     name_keys=tuple(param.name for param in search.space))


def _plain(value):
    """Optuna/numpy scalars -> Python int/float: the config is JSON and the key must be stable."""
    return value.item() if hasattr(value, "item") else value


def search_space(sweep: Sweep) -> dict:
    """The Tune search space of a search sweep (OptunaSearch converts it)."""
    search = sweep.search
    assert search is not None, "search_space is for search sweeps"
    space = {}
    for param in search.space:
        if param.kind == "choice":
            space[param.name] = tune.choice(list(param.values))
            continue
        if param.kind not in ("uniform", "loguniform", "int"):
            # grid/load.py validates kinds; reaching this is a programming error
            raise ValueError(f"unknown search parameter kind {param.kind!r}")
        low, high = param.low, param.high
        assert low is not None and high is not None, f"{param.name}: a range needs bounds"
        if param.kind == "uniform":
            space[param.name] = tune.uniform(low, high)
        elif param.kind == "loguniform":
            space[param.name] = tune.loguniform(low, high)
        else:
            space[param.name] = tune.randint(int(low), int(high) + 1)  # inclusive
    return space


@functools.lru_cache(maxsize=4)
def _records_for(tracking_uri: str, experiment: str):
    """One SweepRecords per trial process (actors are reused across trials)."""
    from sweeps.records.store import SweepRecords

    return SweepRecords(tracking_uri, experiment, reopened=True)


class _ToConsole(logging.Handler):
    """The records' warnings of a trial process (a store that does not answer, and how
    long it is waited for), said on the driver's console."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.console = None

    def emit(self, record: logging.LogRecord) -> None:
        if self.console is not None:
            try:
                self.console(record.getMessage())
            except Exception:  # noqa: BLE001 - a console line is never worth a trial
                pass


_records_warnings = _ToConsole()


def _relay_records_warnings(console) -> None:
    _records_warnings.console = console
    store_log = logging.getLogger("sweeps.records.store")
    if console is not None and _records_warnings not in store_log.handlers:
        store_log.addHandler(_records_warnings)


def _spec_for(context: TrialContext, config: dict) -> TrialSpec:
    if context.sweep.is_search:
        return search_spec(context.sweep, config)
    return context.specs_by_key[config["trial_key"]]


def _trainable(config: dict, context: TrialContext) -> None:
    """Run one trial in a Ray trial process; report to Tune, record to MLflow."""
    spec = _spec_for(context, config)
    started_ms = int(time.time() * 1000)
    _relay_records_warnings(context.console)
    # The child run is created (and, in a fresh trial process, mlflow imported) while
    # the worker starts and imports torch: the first event waits for it, so no event is
    # lost and little time either. Its start time is the trial's, not the moment it was
    # created.
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        opening = pool.submit(_open_trial_run, context, spec, started_ms)
        try:
            outcome, (records, run_id) = _run_and_stream(context, spec, opening)
        except _AlreadyDecided as decided:
            _report_earlier_decision(decided, spec)
            return
    tags = {RUN_ID: run_id, TRIAL_KEY: spec.key}
    extra_tags = {"versweep.attempts": str(outcome.attempts),
                  "versweep.wall_seconds": f"{outcome.wall_seconds:.3f}"}
    if outcome.startup_seconds is not None:
        extra_tags["versweep.startup_seconds"] = f"{outcome.startup_seconds:.3f}"
    if outcome.decided_before_start:
        extra_tags["versweep.decided_by"] = "backend.check"  # no worker ran
        extra_tags["versweep.reason"] = outcome.message
    extra_tags.update(outcome.tags)
    gpu_ids = [str(g) for g in ray.get_gpu_ids()]
    if gpu_ids:
        extra_tags["versweep.gpu_ids"] = ",".join(gpu_ids)
    try:
        records.finish_trial(run_id, outcome.status, message=outcome.message,
                             log_text=outcome.log_text(), samples=outcome.samples,
                             extra_tags=extra_tags, decided=outcome.decided,
                             artifacts=outcome.artifacts)
    except ArtifactStoreFull as full:
        # No room for its files: the trial is interrupted, not decided (its run ends
        # KILLED, without them), and --resume, once there is space, runs it again. Said
        # in the final report, not raised: Tune would print a traceback and run it again
        # into the same full disk.
        outcome.take(Decision(Status.STOPPED, f"interrupted: {full}", decided=False))
        outcome.result_metrics = {}
        records.finish_trial(run_id, outcome.status, message=outcome.message,
                             extra_tags=extra_tags, decided=False)
    # The final report: the last step's metrics (so the search metric is present),
    # the result metrics, and the decision.
    final = {**outcome.last_metrics, **outcome.result_metrics}
    final = {k: v for k, v in final.items() if isinstance(v, (int, float)) and math.isfinite(v)}
    if outcome.status != Status.OK:
        # A diverged, failed or unsupported trial has no objective: without the metric
        # Optuna records it as pruned instead of learning from an epoch before the end.
        final = {}
    tune.report({**final, "step": outcome.last_step or 0, **tags, STATUS: outcome.status,
                 MESSAGE: outcome.message[:_REPORTED_MESSAGE_CHARS],
                 DECIDED: int(outcome.decided),
                 "startup_seconds": outcome.startup_seconds or 0.0})


class _AlreadyDecided(Exception):
    """This trial's key already has a decided (FINISHED) run under the sweep's parent run."""

    def __init__(self, records, run_id: str):
        super().__init__(run_id)
        self.records, self.run_id = records, run_id


def _open_trial_run(context: TrialContext, spec: TrialSpec, started_ms: int | None = None):
    """(SweepRecords, child run id) of a trial: its run in MLflow, created now, tagged with
    the Ray node it runs on; or _AlreadyDecided.

    A trial whose node was lost after it recorded its decision, but before Tune heard of
    it, is started again by Tune: its decided run must stay the only one.
    """
    records = _records_for(context.tracking_uri, context.experiment)
    decided = records.decided_run(context.parent_run_id, spec.key)
    if decided is not None:
        raise _AlreadyDecided(records, decided)
    run_id = records.start_trial(context.parent_run_id, spec, started_ms=started_ms)
    # Tagged at the start, so a run left by a node that died still says where it was.
    records.tag_run(run_id, where_this_runs())
    return records, run_id


def _report_earlier_decision(decided: _AlreadyDecided, spec: TrialSpec) -> None:
    """Tell Tune what the decided run of this trial recorded, without running it again."""
    run = decided.records.client.get_run(decided.run_id)
    status = run.data.tags.get("versweep.status", "ok")
    metrics = {k: v for k, v in run.data.metrics.items() if math.isfinite(v)}
    tune.report({**(metrics if status == "ok" else {}), "step": 0, RUN_ID: decided.run_id,
                 TRIAL_KEY: spec.key, STATUS: status,
                 MESSAGE: run.data.tags.get("versweep.message", "")[:_REPORTED_MESSAGE_CHARS]})


def where_this_runs() -> dict[str, str]:
    """The Ray node this trial process runs on, as the tags that MLflow shows for a trial."""
    return {"versweep.ray_node_id": ray.get_runtime_context().get_node_id(),
            "versweep.ray_node_ip": ray.util.get_node_ip_address()}


def _run_and_stream(context: TrialContext, spec: TrialSpec, opening):
    """Run the worker; log each event to the child run and report metric events to Tune."""
    search = context.sweep.search
    early_stopping = search is not None and search.scheduler is not None

    def on_event(event: dict) -> None:
        records, run_id = opening.result()
        step = records.log_event(run_id, event)
        if event.get("event") == "metric":
            metrics = {k: v for k, v in (event.get("metrics") or {}).items()
                       if isinstance(v, (int, float))}
            if early_stopping:
                # ASHA may end this trial inside tune.report: write the step first.
                records.flush(run_id)
            # The step as recorded: a worker's "step": null must not reach ASHA's milestones.
            tune.report({**metrics, "step": step, RUN_ID: run_id, TRIAL_KEY: spec.key})

    gpu_ids = [str(g) for g in ray.get_gpu_ids()]
    # A trial decided by an earlier attempt raises _AlreadyDecided from opening.result():
    # at its worker's first event (the worker is killed), or here if no worker started.
    backend = get_backend(context.backend, context.sweep)
    backend.console = context.console  # a long step's lines: to the driver's console
    outcome = run_trial(backend, spec, gpu_ids=gpu_ids,
                        timeout_s=context.sweep.trial_timeout_s,
                        retries=context.sweep.retries, on_event=on_event,
                        log_dir=Path(context.log_dir))
    return outcome, opening.result()


class _StopWatchingASHA(AsyncHyperBandScheduler):
    """ASHA that remembers which trials it stopped, and never stops the last step.

    The worker ends by itself after its last epoch (its config says how many); letting
    ASHA stop it at max_t would kill it before it sends its result (test perplexity).
    """

    def __init__(self, *args, **kwargs):
        kwargs["stop_last_trials"] = False
        super().__init__(*args, **kwargs)
        self.stopped: dict[str, float] = {}  # trial id -> step at which ASHA stopped it

    def on_trial_result(self, tune_controller, trial, result):
        decision = super().on_trial_result(tune_controller, trial, result)
        if decision == TrialScheduler.STOP and STATUS not in result:
            self.stopped[trial.trial_id] = result.get(self._time_attr)
        return decision


class _RecordStops(tune.Callback):
    """Driver-side: remember each trial's run id and final report; record ASHA stops."""

    def __init__(self, context: TrialContext, scheduler: _StopWatchingASHA | None):
        self.context = context
        self.scheduler = scheduler
        self.last: dict[str, dict] = {}  # trial id -> its last report
        self.started: dict[str, dict] = {}  # trial id -> its config
        self.recorded_stops: set[str] = set()
        self._relayed_at = 0.0  # when the trials' console lines were last printed

    def on_trial_start(self, iteration, trials, trial, **info):
        self.started[trial.trial_id] = dict(trial.config)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self.last[trial.trial_id] = dict(result)

    def on_step_end(self, iteration, trials, **info):
        if time.monotonic() - self._relayed_at >= RELAY_EVERY_S:
            self.print_relayed()

    def on_experiment_end(self, trials, **info):
        self.print_relayed()

    def print_relayed(self) -> None:
        """Print what the trials said on the console (a build's progress) since last time."""
        self._relayed_at = time.monotonic()
        print_relayed(self.context.console)

    def on_trial_complete(self, iteration, trials, trial, **info):
        if self.scheduler is not None and trial.trial_id in self.scheduler.stopped:
            self.finish_unreported(trial.trial_id, rules.unreported(
                asha_step=self.scheduler.stopped[trial.trial_id]))

    def finish_unreported(self, trial_id: str, decision: Decision) -> None:
        """Finish the child run of a trial that could not finish it itself.

        An undecided one (an interruption) ends KILLED, and --resume runs it again.
        """
        last = self.last.get(trial_id) or {}
        run_id = last.get(RUN_ID)
        if not run_id or STATUS in last or trial_id in self.recorded_stops:
            return
        self.recorded_stops.add(trial_id)
        log_path = Path(self.context.log_dir) / f"{last.get(TRIAL_KEY)}.log"
        log_text = log_path.read_text(errors="replace") if log_path.exists() else ""
        records = _records_for(self.context.tracking_uri, self.context.experiment)
        try:
            records.finish_trial(run_id, decision.status, message=decision.message,
                                 log_text=log_text, decided=decision.decided)
        except ArtifactStoreFull as full:
            # No room for its worker.log: the run ends without it, interrupted, and
            # --resume (once there is space) runs the trial again.
            records.finish_trial(run_id, Status.STOPPED, message=f"interrupted: {full}",
                                 decided=False)


# Seconds between two looks at what the trials said for the console (sweeps/progress.py).
RELAY_EVERY_S = 1.0


def start_console(backend: str, tracking_uri: str = "") -> Relayed | None:
    """A LineRelay actor the trials' backends say long steps to, for a backend that has
    any (venv: environment builds; docker: the waits for an engine that stopped or
    restarts), and the trials' records their waits for a tracking server that stopped
    answering; no CPU slot, so it never takes a trial's place."""
    if backend not in ("venv", "docker") and not tracking_uri.startswith(("http://",
                                                                          "https://")):
        return None
    actor = ray.remote(num_cpus=0, max_restarts=0)(LineRelay).remote()
    return Relayed(actor, "versweep: ")


def print_relayed(console: Relayed | None) -> None:
    """Print the lines the relay holds on this driver's stdout (none if it is gone)."""
    if console is None:
        return
    try:
        lines = ray.get(console.actor.take.remote(), timeout=10)
    except Exception:  # noqa: BLE001 - progress lines are never worth failing a sweep
        return
    for line in lines:
        print(line, flush=True)


def stop_console(console: Relayed | None) -> None:
    if console is not None:
        print_relayed(console)
        ray.kill(console.actor)


# Seconds the ray.init of this driver's connection took (None: not connected by start_ray).
_ray_start_seconds: float | None = None


def start_ray(address: str | None, num_cpus: int | None) -> float:
    """Start a private local Ray (or join ``address`` / $RAY_ADDRESS); return the seconds.

    Called again while connected (sweeps/run.py joins a cluster to check its routing
    before Tune starts), it returns the seconds of the ray.init that connected, not 0.
    """
    global _ray_start_seconds
    # Set before Ray starts: its processes inherit them.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # the classic progress table
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")  # MLflow is the record
    os.environ.setdefault("TUNE_DISABLE_STRICT_METRIC_CHECKING", "1")  # failed trials report
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "0")
    # Trial processes import sweeps/ and workers/ from this checkout.
    path = os.environ.get("PYTHONPATH", "")
    if str(REPO_ROOT) not in path.split(os.pathsep):
        os.environ["PYTHONPATH"] = str(REPO_ROOT) + (os.pathsep + path if path else "")
    started = time.monotonic()
    if ray.is_initialized():
        return _ray_start_seconds or 0.0
    # A Ray Job's driver is told its cluster through RAY_ADDRESS. Without either, start
    # a private local cluster ("local"), never joining whatever `ray start` left running.
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address:
        _check_reachable(address)
        try:
            # Ray annotates logging_level as int, but its own default is a level name.
            env_vars = {"PYTHONPATH": os.environ["PYTHONPATH"]}
            if os.environ.get(EVERY_S_VAR):  # the console's pace, for the trials' lines
                env_vars[EVERY_S_VAR] = os.environ[EVERY_S_VAR]
            ray.init(address=address, log_to_driver=False,
                     logging_level="WARNING",  # type: ignore[arg-type]
                     runtime_env={"env_vars": env_vars})
        except (ConnectionError, RuntimeError, ray.exceptions.RayError) as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise UserError(f"cannot join the Ray cluster at {address}: {first} "
                            f"({_token_hint()})") from None
    else:
        try:
            ray.init(address="local", num_cpus=num_cpus or os.cpu_count(),
                     include_dashboard=False, log_to_driver=False,
                     logging_level="WARNING")  # type: ignore[arg-type]  # as above
        except Exception as exc:  # noqa: BLE001 - Ray raises a bare Exception for a timeout
            # Seen on a machine loaded far beyond its cores: "The current node timed out
            # during startup". Nothing of the sweep ran; its parent run ends interrupted.
            with contextlib.suppress(Exception):
                ray.shutdown()
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise RayStartError(f"the local Ray did not start: {first}; once this machine "
                                "has room, continue with --resume") from None
    _ray_start_seconds = time.monotonic() - started
    return _ray_start_seconds


class RayStartError(UserError):
    """The local Ray did not start (not the user's input: exit 1, one line)."""

    exit_code = 1


def _token_hint() -> str:
    """What to check when a cluster refuses this driver: Ray says only that it failed to
    connect, whether the cluster is down or refused the driver's token (or its lack)."""
    mode = os.environ.get("RAY_AUTH_MODE", "").strip().lower()
    if mode == "token" or os.environ.get("RAY_AUTH_TOKEN") \
            or os.environ.get("RAY_AUTH_TOKEN_PATH"):
        where = ("$RAY_AUTH_TOKEN" if os.environ.get("RAY_AUTH_TOKEN") else
                 os.environ.get("RAY_AUTH_TOKEN_PATH") or "~/.ray/auth_token")
        return (f"is it running, and is this driver's token (from {where}) the one its "
                "nodes were started with?")
    return ("is it running? A cluster with token authentication refuses a driver without "
            "its token: set RAY_AUTH_MODE=token and RAY_AUTH_TOKEN_PATH=<the token's file> "
            "(or copy it to ~/.ray/auth_token)")


# Where `ray up` leaves the cluster's configuration on the head (Ray Tune looks there too,
# to tell an autoscaling cluster).
LAUNCHER_CONFIG = Path("~/ray_bootstrap_config.yaml")


def join_and_check_routing(address: str | None, num_cpus: int | None) -> tuple[bool, float]:
    """Join the cluster; (whether its nodes advertise versweep images, Ray's start seconds).

    Asked before any record is opened: with routing, the nodes must hold the images;
    without it, the driver's own node must.
    """
    from sweeps.cluster.resources import advertises_images

    seconds = start_ray(address, num_cpus)
    return advertises_images(alive_nodes() + nodes_to_come()), seconds


def alive_nodes() -> list[dict[str, float]]:
    """The total resources of each alive node of the cluster Ray is connected to."""
    return [dict(node.get("Resources") or {}) for node in ray.nodes() if node.get("Alive")]


def nodes_to_come() -> list[dict[str, float]]:
    """The node types the autoscaler of a `ray up` cluster may start (read on the head), or []."""
    path = LAUNCHER_CONFIG.expanduser()
    if not path.is_file():
        return []
    import yaml  # a dependency of Ray's

    try:
        config = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return []
    return launcher_node_types(config) if isinstance(config, dict) else []


def _routed_resources(context: TrialContext, cluster_gpus: float,
                      nodes: list[dict[str, float]]) -> Callable[[dict], PlacementGroupFactory]:
    """Tune's per-trial resources on a cluster that advertises images; fails if one cannot start.

    Each trial asks for its own image's node resource (sweeps/cluster/resources.py), so
    Tune gets a function of the trial's config. Checked before Tune starts: a trial that
    none of ``nodes`` (alive, or a node type the autoscaler may start) has room for would
    stay PENDING for ever.
    """
    sweep = context.sweep

    def request(config: dict) -> dict[str, float]:
        return trial_resources(sweep, cluster_gpus, spec=_spec_for(context, config),
                               nodes=nodes)

    if sweep.search is not None:
        requests = {sweep.search.image: request({})}  # sampled keys take their defaults here
    else:
        requests = {spec.name: request({"trial_key": key})
                    for key, spec in context.specs_by_key.items()}
    stuck = unplaceable(requests, nodes)
    if stuck:
        images = sorted({key[len(IMAGE_PREFIX):] for request in stuck.values()
                         for key in request if key.startswith(IMAGE_PREFIX)
                         and not any(key in node for node in nodes)})
        if images:
            raise UserError(missing_images_message(images, str(sweep.path)))
        name, wanted = next(iter(stuck.items()))
        asks = ", ".join(f"{amount:g} {key}" for key, amount in sorted(wanted.items()))
        raise UserError(f"no alive node of the Ray cluster has room for {len(stuck)} trial(s), "
                        f"e.g. '{name}', which asks for {asks}; add such a node or change "
                        "the grid's device")

    def placement(config: dict) -> PlacementGroupFactory:
        return PlacementGroupFactory([request(config)])

    return placement


def _check_reachable(address: str) -> None:
    """Fail in seconds, not minutes, when nothing listens at a host:port address.

    ray.init keeps retrying an unreachable GCS for minutes; a plain TCP connect tells a
    user at once that the address is wrong or the cluster is down.
    """
    host, _, port = address.rpartition(":")
    if address == "auto" or "://" in address or not host or not port.isdigit():
        return  # "auto", ray:// client addresses: Ray resolves those itself
    try:
        socket.create_connection((host, int(port)), timeout=10).close()
    except OSError as exc:
        raise UserError(f"cannot join the Ray cluster at {address}: nothing answers there "
                        f"({exc.strerror or exc}); start it with `ray start --head` or fix "
                        "--address (or $RAY_ADDRESS, where that named it)") from None


class _NoRestoreHint(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "Tuner.restore(" not in str(record.msg)


def _quiet_restore_hint() -> None:
    logger = logging.getLogger("ray.tune.tune")
    if not any(isinstance(f, _NoRestoreHint) for f in logger.filters):
        logger.addFilter(_NoRestoreHint())


# Ray Tune copies these from the driver into every trainable's runtime_env (for syncing
# to S3), and Ray's runtime-env agent then writes them in the clear into the session's
# logs (logs/runtime_env_agent.log) and keeps them in the GCS, where the dashboard shows
# them. A trial needs none of them from there: a private Ray's workers inherit the
# driver's environment, and a cluster node has its own (docs/reliability.md, "Security").
_SECRET_VARS = frozenset({"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SECURITY_TOKEN",
                          "AWS_SESSION_TOKEN"})


def _keep_secrets_out_of_ray() -> None:
    from ray.tune.execution import class_cache

    propagated = getattr(class_cache, "ENV_VARS_TO_PROPAGATE", None)
    if isinstance(propagated, (set, frozenset)) and propagated & _SECRET_VARS:
        class_cache.ENV_VARS_TO_PROPAGATE = type(propagated)(  # type: ignore[assignment]
            propagated - _SECRET_VARS)


def run_tune(sweep: Sweep, *, backend: str, tracking_uri: str, experiment: str,
             parent_run_id: str, skip_keys: set[str], storage_dir: Path,
             max_concurrent: int | None, address: str | None = None,
             num_cpus: int | None = None, study_storage: str | None = None,
             samples_done: int = 0, verbose: int = 1,
             on_ray_started: Callable[[float], object] | None = None,
             batch_size: int | None = None) -> TuneRun:
    """Run the sweep's trials that are not in ``skip_keys`` under Ray Tune.

    For a search sweep, ``samples_done`` trials were decided by an earlier run and
    ``study_storage`` is the Optuna RDB URL whose study the search continues. A grid runs
    in batches of ``batch_size`` trials (default GRID_BATCH_TRIALS), one Tuner.fit each.
    """
    _keep_secrets_out_of_ray()
    ray_seconds = start_ray(address, num_cpus)
    if on_ray_started is not None:
        on_ray_started(ray_seconds)
    log_dir = storage_dir / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    console = start_console(backend, tracking_uri)
    try:
        return _run_tune(sweep, TrialContext(
            sweep=sweep, backend=backend, tracking_uri=tracking_uri, experiment=experiment,
            parent_run_id=parent_run_id, log_dir=str(log_dir),
            specs_by_key={t.key: t for t in sweep.trials if t.key not in skip_keys},
            console=console), ray_seconds=ray_seconds, storage_dir=storage_dir,
            max_concurrent=max_concurrent, study_storage=study_storage,
            samples_done=samples_done, verbose=verbose, batch_size=batch_size)
    finally:
        stop_console(console)


def _run_tune(sweep: Sweep, context: TrialContext, *, ray_seconds: float, storage_dir: Path,
              max_concurrent: int | None, study_storage: str | None, samples_done: int,
              verbose: int, batch_size: int | None) -> TuneRun:
    trainable = _trainable_with_resources(context)
    run = TuneRun(records=[], ray_start_seconds=ray_seconds)
    if sweep.search is not None:
        num_samples = max(sweep.search.num_samples - samples_done, 0)
        if num_samples:
            _fit(run, context, trainable, *_search_setup(context, num_samples, max_concurrent,
                                                         study_storage),
                 storage_dir=storage_dir, verbose=verbose)
        return run
    keys = list(context.specs_by_key)
    size = batch_size or grid_batch_trials()
    for start in range(0, len(keys), size):
        batch = keys[start:start + size]
        param_space = {"trial_key": tune.grid_search(batch)}
        tune_config = tune.TuneConfig(max_concurrent_trials=max_concurrent or 0,
                                      reuse_actors=True)
        started = _fit(run, context, trainable, param_space, tune_config, None,
                       storage_dir=storage_dir, verbose=verbose)
        if started < len(batch):
            run.interrupted = True  # some trials never started
        if run.interrupted:
            break  # Ctrl-C: the next batches do not start; --resume runs them
    return run


# A grid runs in batches of this many trials, one Tuner.fit each: Tune keeps every trial
# of an experiment (its config, last result and metric statistics) in the driver until
# the experiment ends, and saves them all to its experiment state again and again, so one
# experiment of 5,000 trials makes the driver's memory and each save grow with the trials
# done (docs/performance.md, "orchestration as the sweep grows"). A batch's trials are
# released when it ends; the cost is one Tune start per batch and a few idle slots while
# a batch's last trials finish.
GRID_BATCH_TRIALS = 500
# Overrides it (a whole number of trials): larger batches start Tune less often and hold
# more trials in the driver's memory.
GRID_BATCH_VARIABLE = "VERSWEEP_GRID_BATCH"


def grid_batch_trials() -> int:
    """Trials per Tuner.fit of a grid: $VERSWEEP_GRID_BATCH, else GRID_BATCH_TRIALS."""
    text = os.environ.get(GRID_BATCH_VARIABLE, "").strip()
    if not text:
        return GRID_BATCH_TRIALS
    if not text.isdigit() or int(text) < 1:
        raise UserError(f"{GRID_BATCH_VARIABLE}={text!r} is not a whole number of trials "
                        f"above 0; set it to e.g. {GRID_BATCH_TRIALS}, or unset it")
    return int(text)


def _trainable_with_resources(context: TrialContext):
    """The trainable, with what each trial asks Ray for (routed to its image's nodes on a
    cluster whose nodes advertise images)."""
    sweep = context.sweep
    nodes = alive_nodes() + nodes_to_come()
    # device "auto" asks for a GPU when the cluster has one, or the autoscaler may start one.
    cluster_gpus = max(ray.cluster_resources().get("GPU", 0.0),
                       max((node.get("GPU", 0.0) for node in nodes), default=0.0))
    with_context = tune.with_parameters(_trainable, context=context)
    if routes_by_image(sweep, nodes):
        return tune.with_resources(with_context, _routed_resources(context, cluster_gpus,
                                                                   nodes))
    if context.backend == "docker" and len(nodes) > 1:
        print("versweep: warning: no node of this Ray cluster advertises versweep_image "
              "resources, so trials may land on nodes without their image; start each "
              "node with --resources \"$(python -m sweeps.cluster.resources)\"",
              file=sys.stderr, flush=True)
    resources = trial_resources(sweep, cluster_gpus)
    return tune.with_resources(with_context, {k.lower(): v for k, v in resources.items()})


def _search_setup(context: TrialContext, num_samples: int, max_concurrent: int | None,
                  study_storage: str | None):
    """(param space, TuneConfig, ASHA or None) of a search sweep: Optuna's TPE, a
    persistent study, and ASHA when the grid asks for early stopping."""
    sweep = context.sweep
    search = sweep.search
    assert search is not None, "a search setup is for search sweeps"
    searcher = _optuna_searcher(sweep, context.experiment, context.parent_run_id,
                                study_storage,
                                decided=lambda: _records_for(context.tracking_uri,
                                                             context.experiment).list_trials(
                                    context.parent_run_id, finished_only=True))
    if max_concurrent:
        from ray.tune.search import ConcurrencyLimiter

        searcher = ConcurrencyLimiter(searcher, max_concurrent=max_concurrent)
    scheduler = None
    if search.scheduler is not None:
        # metric and mode come from TuneConfig (Tune refuses them in two places).
        scheduler = _StopWatchingASHA(
            time_attr="step", grace_period=search.scheduler.grace_period,
            reduction_factor=search.scheduler.reduction_factor,
            max_t=search.scheduler.max_t)
    tune_config = tune.TuneConfig(search_alg=searcher, scheduler=scheduler,
                                  num_samples=num_samples, metric=search.metric,
                                  mode=search.mode, reuse_actors=True)
    return search_space(sweep), tune_config, scheduler


# The sweep whose trials Tune is creating now, for _display_name (Tune calls the name
# creators in the driver). A module-level function is pickled by reference with every
# trial's state, where a closure would carry the sweep into each checkpoint.
_naming: list[TrialContext] = []


def _display_name(trial) -> str:
    """A Tune trial's name in its progress table: the trial's own ('ptb_lm small @ ... #0')."""
    config = dict(trial.config)
    context = _naming[-1] if _naming else None
    try:
        if context is not None and (context.sweep.is_search
                                    or config.get("trial_key") in context.specs_by_key):
            return _spec_for(context, config).name
    except Exception:  # noqa: BLE001 - a name must never stop a trial; Tune's own then
        pass
    return f"trial {trial.trial_id}"


def _dirname(trial) -> str:
    """A Tune trial's directory: its id (names have spaces and '@', and may be long)."""
    return f"trial_{trial.trial_id}"


def _fit(run: TuneRun, context: TrialContext, trainable, param_space: dict,
         tune_config: tune.TuneConfig, scheduler: _StopWatchingASHA | None, *,
         storage_dir: Path, verbose: int) -> int:
    """One Tuner.fit; its trials' records and timings go into ``run``; returns how many
    trials it started."""
    search = context.sweep.search
    columns = {search.metric: search.metric} if search is not None else {}
    columns.update({"step": "step", STATUS: "decision", "test_perplexity": "test_ppl",
                    "ms_per_batch_median": "ms/batch"})
    callback = _RecordStops(context, scheduler)
    reporter = tune.CLIReporter(metric_columns=columns, max_report_frequency=10,
                                parameter_columns=(["trial_key"] if search is None
                                                   else [p.name for p in search.space]),
                                max_column_length=24)
    run_config = tune.RunConfig(
        name=f"{context.sweep.name}-{context.parent_run_id[:8]}-{time.time_ns()}",
        storage_path=str(storage_dir), callbacks=[callback], progress_reporter=reporter,
        verbose=verbose, failure_config=tune.FailureConfig(max_failures=LOST_TRIAL_RETRIES))
    tune_config = dataclasses.replace(tune_config, trial_name_creator=_display_name,
                                      trial_dirname_creator=_dirname)
    _naming[:] = [context]
    tuner = tune.Tuner(trainable, param_space=param_space, tune_config=tune_config,
                       run_config=run_config)
    # Tune's own result files are off (MLflow is the record); it need not say so per trial.
    logging.getLogger("ray.tune.analysis.experiment_analysis").setLevel(logging.ERROR)
    # After Ctrl-C Tune says "Resume experiment with: Tuner.restore(...)": not how a sweep
    # continues (the summary says: the same command with --resume).
    _quiet_restore_hint()
    fit_started = time.monotonic()
    try:
        grid = tuner.fit()
        # ResultGrid has __len__ and __getitem__ but no __iter__.
        results = [grid[i] for i in range(len(grid))]
    except KeyboardInterrupt:  # a second Ctrl-C: Tune gave up waiting for its trials
        run.interrupted, results = True, []
    run.tune_seconds += time.monotonic() - fit_started
    records, interrupted = _records(context, callback, scheduler, results)
    run.records += records
    run.interrupted = run.interrupted or interrupted
    return len(callback.started)


def _records(context: TrialContext, callback: _RecordStops,
             scheduler: _StopWatchingASHA | None, results: list) -> tuple[list[TrialRecord], bool]:
    """Each started trial's record, and whether any was interrupted.

    A trial decided itself (its final report carries the status); for one that did not,
    the driver decides by the rules of sweeps/status.py and finishes its child run.
    """
    def error_of(config: dict) -> str | None:
        """The first line of the error of a trial process that raised (a bug or a lost node)."""
        for result in results:
            if result.error is not None and (result.config or {}) == config:
                lines = str(result.error).strip().splitlines() or ["error"]
                # A store that gave up says so in its own line (the trial is interrupted).
                gave_up = [line for line in lines if rules.records_not_written(line)]
                return (gave_up or lines)[0][:300]
        return None

    records, interrupted = [], False
    for trial_id, config in callback.started.items():
        last = callback.last.get(trial_id)
        spec = _spec_for(context, (last or {}).get("config") or config)
        if last is not None and STATUS in last:  # the trial decided itself
            status = Status.parse(last[STATUS])
            message = last.get(MESSAGE, "")
            # ... or said it was interrupted (its engine or its artifact store away).
            interrupted = interrupted or last.get(DECIDED, 1) == 0
        else:
            asha_step = (scheduler.stopped.get(trial_id) if scheduler is not None
                         else None)
            decision = rules.unreported(asha_step=asha_step, process_error=error_of(config),
                                        started=last is not None)
            status, message = decision.status, decision.message
            interrupted = interrupted or not decision.decided
            if last is not None:
                # Its child run exists (the report names it): finish it. One that never
                # reported is left RUNNING and marked KILLED on --resume.
                callback.finish_unreported(trial_id, decision)
        last = last or {}
        metrics = {k: v for k, v in last.items() if isinstance(v, (int, float))
                   and not isinstance(v, bool) and k not in _TUNE_BOOKKEEPING}
        # Every report carries the trial's key: spec.key, read back from the report.
        key: str = last.get(TRIAL_KEY) or spec.key
        records.append(TrialRecord(
            key=key, name=spec.name, workload=spec.workload, status=status, message=message,
            config=spec.config_dict, metrics=metrics, run_id=last.get(RUN_ID),
            workload_dir=spec.workload_dir))
    return records, interrupted


def settle_study(study, sweep: Sweep, decided: list[dict]) -> dict[str, int]:
    """Decide the study's trials that a killed driver left RUNNING, from the records.

    A driver killed with SIGKILL never tells Optuna how its running trials ended. A trial
    whose decision reached MLflow before the kill (its child run is FINISHED) is told to
    the study as Tune would have told it: COMPLETE with the metric's last value when the
    trial was ok or stopped by ASHA with a value, else PRUNED (no objective: diverged,
    failed, unsupported). A trial with no decided run was interrupted and runs again as a
    new sample: FAIL (TPE ignores it). So after ``--resume`` TPE learns from every trial
    that was decided, and none is left RUNNING. Returns how many of each were told.
    """
    from optuna.trial import TrialState

    search = sweep.search
    assert search is not None, "a study is for search sweeps"
    by_key = {trial["key"]: trial for trial in decided}
    told = {"complete": 0, "pruned": 0, "failed": 0}
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,
                                                          TrialState.WAITING)):
        try:
            key = search_spec(sweep, trial.params).key
        except Exception:  # noqa: BLE001 - asked but never sampled in full: no run of it
            key = None
        record = by_key.get(key)
        value = (record or {}).get("metrics", {}).get(search.metric)
        if (record is not None and record["status"] in (Status.OK, Status.STOPPED)
                and isinstance(value, (int, float)) and math.isfinite(value)):
            study.tell(trial.number, value)
            told["complete"] += 1
        elif record is not None:
            study.tell(trial.number, state=TrialState.PRUNED)
            told["pruned"] += 1
        else:
            study.tell(trial.number, state=TrialState.FAIL)
            told["failed"] += 1
    return told


def _optuna_searcher(sweep: Sweep, experiment: str, parent_run_id: str,
                     study_storage: str | None, decided: Callable[[], list[dict]] = list):
    """OptunaSearch with a TPE sampler and a persistent study named after the sweep run;
    a study that a killed driver left with RUNNING trials is settled first (settle_study,
    ``decided``: the sweep's decided trials, as SweepRecords.list_trials gives them)."""
    import optuna
    from ray.tune.search.optuna import OptunaSearch

    search = sweep.search
    assert search is not None, "an Optuna searcher is for search sweeps"
    name = study_name(experiment, sweep.name, parent_run_id)
    storage = optuna.storages.RDBStorage(study_storage) if study_storage else None
    # A resumed study must not replay its first proposals: TPE's start-up samples come
    # from the seeded generator, so the same seed would propose the same configs (the
    # same trial keys) again. Offsetting the seed by the trials already asked keeps a
    # resumed search reproducible and new.
    asked = 0
    if storage is not None:
        try:
            study = optuna.load_study(study_name=name, storage=storage)
        except KeyError:  # no such study yet: a new sweep
            study = None
        if study is not None:
            if any(t.state.name in ("RUNNING", "WAITING") for t in study.trials):
                told = settle_study(study, sweep, decided())
                print(f"versweep: Optuna study {name}: {told['complete']} complete, "
                      f"{told['pruned']} pruned, {told['failed']} failed from the records "
                      "(trials a killed driver left running)", flush=True)
            asked = len(study.trials)
    class _Searcher(OptunaSearch):
        """OptunaSearch that takes a trial's report without the objective as no progress.

        A diverged, failed or unsupported trial's final report carries no objective (it
        has none: sweeps/status.py), and OptunaSearch.on_trial_result reads it
        unconditionally; its on_trial_complete then records the trial as pruned."""

        def on_trial_result(self, trial_id: str, result: dict) -> None:
            if self.metric in result:
                super().on_trial_result(trial_id, result)

    return _Searcher(sampler=optuna.samplers.TPESampler(seed=search.seed + asked),
                     study_name=name, storage=storage)


def shutdown() -> None:
    """Stop the Ray driver connection (and the local cluster it started)."""
    global _ray_start_seconds
    _ray_start_seconds = None
    if ray.is_initialized():
        ray.shutdown()


__all__ = ["TuneRun", "run_tune", "search_spec", "shutdown", "start_ray", "study_name"]

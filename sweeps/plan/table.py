"""The dry run: the plan of a sweep as a table, every trial and what it asks Ray for.

``versweep run --dry-run`` prints it without starting Ray, MLflow or a backend; the
trial names, images, configs and resources are the very ones the sweep then runs
(the Sweep's trials, sweeps/plan/resources.py).
"""

from __future__ import annotations

from sweeps.columns import format_columns
from sweeps.grid.spec import Sweep
from sweeps.plan import compat
from sweeps.plan.resources import describe_resources, describe_routing


def _key_config(trials) -> dict[str, list[str]]:
    """Per workload: its key columns (its plug-in's) plus every other config key that differs
    between its trials."""
    columns: dict[str, list[str]] = {}
    for workload in sorted({t.workload for t in trials}):
        of_workload = [t for t in trials if t.workload == workload]
        configs = [t.config_dict for t in of_workload]
        keys = sorted({k for c in configs for k in c})
        varying = [k for k in keys if len({repr(c.get(k)) for c in configs}) > 1]
        first = [k for k in of_workload[0].plugin.key_columns if k in keys]
        columns[workload] = first + [k for k in varying if k not in first]
    return columns


def format_trial_table(sweep: Sweep, backend: str, max_concurrent: int | None) -> str:
    """The dry run: every trial (or the search), and what each trial asks Ray for."""
    resources = describe_resources(sweep)
    routing = describe_routing(sweep)
    lines = [f"sweep '{sweep.name}' from {sweep.path}",
             f"backend {backend}, device {sweep.device}, trial timeout "
             f"{sweep.trial_timeout_s:g} s, retries {sweep.retries}, max concurrent "
             f"{max_concurrent or 'unlimited'}"]
    if sweep.search is not None:
        search = sweep.search
        lines.append(f"search: {search.num_samples} samples of {search.workload} on "
                     f"{search.image}, {search.sampler} (seed {search.seed}), "
                     f"{search.mode} {search.metric}; each trial asks for {resources}")
        if routing:
            lines.append(routing)
        for param in search.space:
            span = (", ".join(map(str, param.values)) if param.kind == "choice"
                    else f"{param.low} .. {param.high}")
            lines.append(f"  {param.name}: {param.kind} {span}")
        if search.scheduler is not None:
            s = search.scheduler
            lines.append(f"  early stopping: {s.kind} on {search.metric}, grace {s.grace_period},"
                         f" reduction factor {s.reduction_factor}, max_t {s.max_t}")
        searched = {p.name for p in search.space}
        lines.append("  fixed: " + ", ".join(f"{k}={v}" for k, v in search.base_config
                                             if k not in searched))
        return "\n".join(lines)

    lines.append(f"each trial asks Ray for {resources}")
    if routing:
        lines.append(routing)
    columns = _key_config(sweep.trials)
    short = {"1 CPU": "CPU 1", "1 GPU + 1 CPU": "GPU 1, CPU 1"}.get(resources, "GPU 1 or CPU 1")
    reasons = reasons_before_start(sweep, backend)
    header = ["#", "trial", "image", "config", "repeat", "resources"]
    if reasons:
        header.append("decided before start")
    rows = []
    for number, trial in enumerate(sweep.trials, 1):
        config = trial.config_dict
        shown = " ".join(f"{k}={_cell(config.get(k))}" for k in columns[trial.workload])
        row = [str(number), trial.name, trial.image, shown, str(trial.repeat), short]
        if reasons:
            reason = reasons.get(trial.key)
            row.append(f"unsupported: {reason}" if reason else "")
        rows.append(row)
    lines.append(format_columns(header, rows))
    if reasons:
        lines.append(f"{len(reasons)} of {len(sweep.trials)} trials are unsupported here, "
                     "decided before any worker starts (their reasons above)")
    lines.append(f"{len(sweep.trials)} trials; nothing started (dry run)")
    return "\n".join(lines)


def reasons_before_start(sweep: Sweep, backend: str) -> dict[str, str]:
    """Trial key -> why it is `unsupported` before any worker starts, as far as the plan
    can tell without a node: the image's torch cannot run the workload (its plug-in says),
    or, for the venv backend, no environment can be made here (no wheel on the index for
    this platform, no interpreter for it). GPU rules need the node's GPUs: a trial learns
    those where it runs. The local backend runs the host's torch: nothing to say here.
    """
    if backend == "local":
        return {}
    images = {image.name: image for image in sweep.images}
    no_environment: dict[str, str] = {}
    if backend == "venv":
        from sweeps.envs.store import EnvStore

        store = EnvStore()
        for name, image in images.items():
            plan = store.plan(image)
            if isinstance(plan, str):
                no_environment[name] = f"no environment here: {plan}"
    reasons = {}
    for trial in sweep.trials:
        entry = images.get(trial.image)
        if entry is None:
            continue
        reason = no_environment.get(trial.image) or compat.torch_reason(
            entry, trial.workload, trial.config_dict, trial.workload_dir)
        if reason:
            reasons[trial.key] = reason
    return reasons


def _cell(value) -> str:
    return "-" if value is None else str(value)

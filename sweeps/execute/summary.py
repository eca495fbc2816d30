"""What a user reads at the end of a sweep: counts per status, the best results, the records.

    trials: 6 ok, 1 unsupported, 0 diverged, 0 failed, 0 stopped
    best per workload:
      ptb_lm                            test_perplexity 112.4   ptb_lm small @ local #0
      rnn_bench 1x320-ce-short cudnn    ms_per_batch_median 3.1  rnn_bench ... #1
    MLflow records: /home/me/mlflow.db (SQLite), artifacts under /home/me/mlartifacts
    experiment 'smoke', sweep run 3f2a...
    see them: mlflow ui --backend-store-uri sqlite:////home/me/mlflow.db
      then open http://127.0.0.1:5000/#/experiments/1/runs?workflowType=...&viewStateShareKey=versweep
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from sweeps import workloads
from sweeps.errors import UserError
from sweeps.status import STATUSES, Status
from sweeps.workloads import Workload


@dataclass
class TrialRecord:
    """One decided trial as the driver knows it at the end of a sweep."""

    key: str
    name: str
    workload: str
    status: Status
    message: str = ""
    config: dict = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)  # result metrics, else the last step's
    run_id: str | None = None
    from_earlier_run: bool = False  # decided before this --resume, not run again
    workload_dir: str | None = None  # a user's own workload: its directory

    @property
    def plugin(self) -> Workload:
        return workloads.get(self.workload, self.workload_dir)


@dataclass
class Best:
    """The best trial of one group: what it is, by which metric, how good."""

    group: str
    metric: str
    value: float
    trial: TrialRecord

    def as_tags(self) -> dict:
        """The dict RECORDS.close_sweep tags on the parent run (versweep.best.*)."""
        return {"trial_key": self.trial.key, "run_id": self.trial.run_id or "",
                "name": self.trial.name, "metric": self.metric, "value": self.value,
                "config": self.trial.config}


def count_statuses(records: Iterable[TrialRecord]) -> dict[str, int]:
    """Trials per status, every status present (zeros included) in STATUSES order."""
    counts = dict.fromkeys(STATUSES, 0)
    for record in records:
        counts[record.status] = counts.get(record.status, 0) + 1
    return counts


def _group_and_metric(record: TrialRecord) -> tuple[str, str, bool] | None:
    """The comparison group a trial competes in, its judging metric, and whether lower wins.

    The workload's plug-in says (sweeps/workloads: best_metric, best_per); a workload
    without a best metric (env) competes in none.
    """
    try:
        plugin = record.plugin
    except UserError:
        return None  # a record of a workload this host does not know: no "best"
    if plugin.best_metric is None:
        return None
    return (plugin.best_group(record.config), plugin.best_metric,
            plugin.lower_is_better(plugin.best_metric))


def best_per_workload(records: Iterable[TrialRecord]) -> list[Best]:
    """The best ``ok`` trial of each comparison group, by its workload's best metric.

    ptb_lm: the lowest test_perplexity; rnn_bench: the lowest ms_per_batch_median per
    bench and impl. Only ``ok`` trials compete: an unsupported or failed trial has no
    result to compare.
    """
    best: dict[str, Best] = {}
    for record in records:
        judged = _group_and_metric(record)
        if record.status != "ok" or judged is None:
            continue
        group, metric, lower = judged
        value = record.metrics.get(metric)
        if value is None:
            continue
        if group not in best or (value < best[group].value if lower
                                 else value > best[group].value):
            best[group] = Best(group, metric, float(value), record)
    return [best[g] for g in sorted(best)]


def best_of_sweep(records: Iterable[TrialRecord]) -> Best | None:
    """The one best a grid's parent run is tagged with: the first workload (by name) whose
    trials all compete in one group (ptb_lm's test perplexity), else None."""
    for found in best_per_workload(records):
        if not found.trial.plugin.best_per:
            return found
    return None


def best_by_metric(records: Iterable[TrialRecord], metric: str, mode: str) -> Best | None:
    """The best trial of a search by its search metric (stopped trials count: ASHA judged them)."""
    chosen: Best | None = None
    for record in records:
        value = record.metrics.get(metric)
        if not Status(record.status).has_figures or value is None:
            continue
        better = chosen is None or (value < chosen.value if mode == "min" else value > chosen.value)
        if better:
            chosen = Best("search", metric, float(value), record)
    return chosen


# A failure's line in the summary is cut here; the whole message is in the trial's run.
FAILURE_LINE_CHARS = 300


def failure_line(message: str) -> str:
    """One line for a failed trial: the message's first line and, for a crash, the last line
    the worker wrote on stderr (the exception), which says more than an exit code."""
    lines = message.splitlines()
    first = lines[0] if lines else ""
    if "stderr tail:" in lines:
        tail = [line.strip() for line in lines[lines.index("stderr tail:") + 1:]
                if line.strip()]
        if tail:
            first = f"{first}; its last stderr line: {tail[-1]}"
    if len(first) > FAILURE_LINE_CHARS:
        first = first[:FAILURE_LINE_CHARS - 3] + "..."
    return first


def format_summary(records: list[TrialRecord], *, where: str, ui_command: str, experiment: str,
                   parent_run_id: str | None = None, search_best: Best | None = None,
                   searched: tuple[str, ...] = (), interrupted: bool = False,
                   runs_url: str = "") -> str:
    """The end-of-sweep text: counts, the best per workload (or of the search), the records.

    ``searched``: the config keys a search varied, shown for its best trial.
    """
    counts = count_statuses(records)
    earlier = sum(1 for r in records if r.from_earlier_run)
    lines = ["", "=" * 72,
             "sweep interrupted" if interrupted else "sweep finished",
             "trials: " + ", ".join(f"{n} {s}" for s, n in counts.items())
             + (f" ({earlier} decided by an earlier run, not run again)" if earlier else "")]
    if interrupted:
        # Why, where a trial knew (its records store, artifact store or engine away), once
        # per cause: a full disk interrupts every trial after it with the same line.
        causes: dict[str, int] = {}
        for record in records:
            if (record.status == "stopped" and not record.from_earlier_run
                    and record.message.startswith("interrupted: ")):
                cause = record.message[len("interrupted: "):].splitlines()[0]
                causes[cause] = causes.get(cause, 0) + 1
        for cause, count in causes.items():
            lines.append(f"  interrupted ({count} trial{'s' if count > 1 else ''}): {cause}")
        lines.append("continue it: the same command with --resume (decided trials are not "
                     "run again)")
    failed = [r for r in records if r.status == "failed" and not r.from_earlier_run]
    for record in failed:
        lines.append(f"  failed: {record.name}: {failure_line(record.message)}")
    ran = [r for r in records if not r.from_earlier_run and r.status != "stopped"]
    if len(failed) > 1 and len(failed) == len(ran):
        lines.append(f"  every one of the {len(failed)} trials failed: the cause is likely "
                     "one they share (the environment, the data, the backend); each trial's "
                     "worker.log is in its MLflow run")
    if search_best is not None:
        lines.append(f"best trial by {search_best.metric}: {search_best.value:.4g}  "
                     f"{search_best.trial.name}  (run {search_best.trial.run_id})")
        for key in searched or sorted(search_best.trial.config):
            lines.append(f"  {key} = {search_best.trial.config.get(key)}")
    bests = best_per_workload(records)
    if bests:
        lines.append("best per workload:")
        width = max(len(b.group) for b in bests)
        for b in bests:
            lines.append(f"  {b.group:<{width}}  {b.metric} {b.value:.4g}  {b.trial.name}")
    lines.append(where)
    lines.append(f"experiment '{experiment}'"
                 + (f", sweep run {parent_run_id}" if parent_run_id else ""))
    lines.append(f"see them: {ui_command}")
    if runs_url:
        lines.append(f"  then open {runs_url}")
    return "\n".join(lines)

"""The figures of a fault, counted from the store (docs/reliability.md, "Faults").

Shared by the fault benchmarks (benchmarks/fault_mlflow_outage.py) and the fault tests
(tests/test_resume.py, tests/test_cluster.py, tests/test_schedule.py), so that every fault
is counted the same way:

- finished: planned trial keys with exactly one FINISHED run;
- lost: planned keys with no FINISHED run (a search: ``expected`` minus the keys decided);
- duplicated: keys with more than one FINISHED run;
- inconsistent: a FINISHED trial run without ``versweep.status``, an ``ok`` trial without
  its result metric, a run left RUNNING, a parent run not FINISHED or more than one, a run
  of no planned key (a search: more keys decided than ``expected``).

A grid knows its keys before it runs (``planned``); a search samples them, so it passes
``planned=None`` and ``expected`` (its ``num_samples``): every decided key counts, and
the sweep must decide exactly that many.
"""

from __future__ import annotations

from collections.abc import Iterable


def count(client, experiment: str, planned: Iterable[str] | None, *,
          result_metric: str | tuple[str, ...] | None, expected: int | None = None) -> dict:
    """The figures of ``experiment`` read with an MlflowClient (``client``). An ok trial
    must have its result metric (one of ``result_metric``, for several workloads)."""
    wanted_metrics = ((result_metric,) if isinstance(result_metric, str)
                      else tuple(result_metric or ()))
    found = client.get_experiment_by_name(experiment)
    runs = (client.search_runs([found.experiment_id], max_results=10000)
            if found is not None else [])
    parents = [r for r in runs if r.data.tags.get("versweep.kind") == "sweep"]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    problems = []
    if len(parents) != 1:
        problems.append(f"{len(parents)} parent runs")
    problems += [f"parent run {p.info.run_id} is {p.info.status}" for p in parents
                 if p.info.status != "FINISHED"]
    planned_set = set(planned) if planned is not None else None
    finished_by_key: dict[str, list] = {}
    for child in children:
        key = child.data.tags.get("versweep.trial_key")
        tags, status = child.data.tags, child.info.status
        if planned_set is not None and key not in planned_set:
            problems.append(f"run {child.info.run_id}: no planned trial key ({key!r})")
        if status == "RUNNING":
            problems.append(f"run {child.info.run_id} ({key}) left RUNNING")
        if status != "FINISHED":
            continue
        finished_by_key.setdefault(key, []).append(child)
        if "versweep.status" not in tags:
            problems.append(f"run {child.info.run_id} ({key}) FINISHED without versweep.status")
        elif (tags["versweep.status"] == "ok" and wanted_metrics
              and not any(metric in child.data.metrics for metric in wanted_metrics)):
            problems.append(f"run {child.info.run_id} ({key}) ok without "
                            f"{' or '.join(wanted_metrics)}")
    if planned_set is None:
        keys = set(finished_by_key)
        wanted = expected if expected is not None else len(keys)
        if len(keys) > wanted:
            problems.append(f"{len(keys)} trials decided, {wanted} asked for")
        finished = sum(1 for runs_of in finished_by_key.values() if len(runs_of) == 1)
        lost = max(wanted - len(keys), 0)
    else:
        wanted = len(planned_set)
        finished = sum(1 for key in planned_set if len(finished_by_key.get(key, [])) == 1)
        lost = sum(1 for key in planned_set if key not in finished_by_key)
    return {
        "planned": wanted,
        "finished": finished,
        "ok": sum(1 for runs_of in finished_by_key.values() for r in runs_of
                  if r.data.tags.get("versweep.status") == "ok"),
        "statuses": {status: sum(1 for runs_of in finished_by_key.values() for r in runs_of
                                 if r.data.tags.get("versweep.status") == status)
                     for status in sorted({r.data.tags.get("versweep.status", "")
                                           for runs_of in finished_by_key.values()
                                           for r in runs_of})},
        "lost": lost,
        "duplicated": sum(1 for runs_of in finished_by_key.values() if len(runs_of) > 1),
        "inconsistent": len(problems),
        "problems": problems,
        "child_runs": len(children),
    }


def nothing_lost(figures: dict) -> str | None:
    """None when lost, duplicated and inconsistent are 0 and every planned trial finished;
    else what is wrong, with the figures."""
    shown = {k: v for k, v in figures.items() if k != "driver_tail"}
    for name in ("lost", "duplicated", "inconsistent"):
        if figures[name]:
            return f"{name} = {figures[name]}: {shown}"
    if figures["finished"] != figures["planned"]:
        return f"finished {figures['finished']} of {figures['planned']}: {shown}"
    return None

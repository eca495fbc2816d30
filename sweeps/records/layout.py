"""The version of the MLflow layout versweep writes, and the check every reader makes.

Every run versweep writes (a sweep's parent run, each trial's child run, each scheduled
firing) carries ``versweep.schema``: the version of the layout store.py and schedule.py
write (which tags, params, metrics and artifacts, named how). A reader meets runs of a
newer layout with one clear line, never a wrong report; runs without the tag were
written before it existed, and are layout 1.

    1  the first layout (no versweep.schema tag)
    2  versweep.schema on every run; versweep.sweep_kind (grid | search) on parent runs;
       versweep.workload_dir on the trial runs of a user's own workload
    3  samples.json is {"unit": "s", "description": ..., "values": [...]} (a bare list of
       seconds before); trial runs are named '<trial name> · <sweep run id[:6]>'

Torch-free and mlflow-free: analysis/load.py reads SQLite stores without mlflow.
"""

from __future__ import annotations

from collections.abc import Mapping

from sweeps.errors import UserError

SCHEMA_TAG = "versweep.schema"
SCHEMA_VERSION = 3
OLDEST_READABLE = 1


def schema_of(tags: Mapping[str, str]) -> int | None:
    """The layout version a run's tags say (1 where there is no tag), or None if unreadable."""
    raw = str(tags.get(SCHEMA_TAG, OLDEST_READABLE)).strip()
    return int(raw) if raw.isdigit() else None


def check_schema(tags: Mapping[str, str], what: str) -> int:
    """The run's layout version; UserError, one line, where this versweep cannot read it."""
    version = schema_of(tags)
    if version is None:
        raise UserError(f"{what} has a {SCHEMA_TAG} tag of '{tags.get(SCHEMA_TAG)}', which is "
                        "not a layout version; it was not written by versweep")
    if version > SCHEMA_VERSION:
        raise UserError(f"{what} was written by a newer versweep (records layout {version}; "
                        f"this one reads layouts {OLDEST_READABLE} to {SCHEMA_VERSION}): "
                        "update versweep to read it")
    return version


def study_name(experiment: str, sweep_name: str, parent_run_id: str) -> str:
    """The Optuna study of one sweep run (its storage: optuna.db beside a SQLite store).

    ``--resume`` finds the same parent run, so the same study; the report finds it too.
    """
    return f"versweep/{experiment}/{sweep_name}/{parent_run_id}"


def sweep_suffix(parent_run_id: str) -> str:
    """What a trial run's name ends with (layout 3): its sweep's short run id, ' · 3f9a1c'."""
    return f" · {parent_run_id[:6]}"


def trial_name(run_name: str, parent_run_id: str) -> str:
    """The trial's own name (TrialSpec.name) from its run's name: the sweep suffix taken off."""
    suffix = sweep_suffix(parent_run_id)
    return run_name[:-len(suffix)] if parent_run_id and run_name.endswith(suffix) else run_name

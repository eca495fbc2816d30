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
    4  parent runs: versweep.best.<group>.{metric,value,run_id,name} and metrics
       best.<group>.<metric> for every workload group; every run: mlflow.source.* (the git
       revision) and versweep.git_dirty; a trial that read a real corpus: an MLflow dataset
       input; the experiment: the saved runs-table view KEY_VIEW_TAG (each workload's best
       metric and the status, torch, CUDA and cuDNN tags as columns); parent runs:
       metrics.json (readers of layout 3 read layout 4: nothing they read changed)

Torch-free and mlflow-free: analysis/load.py reads SQLite stores without mlflow.
"""

from __future__ import annotations

from collections.abc import Mapping

from sweeps.errors import UserError

SCHEMA_TAG = "versweep.schema"
SCHEMA_VERSION = 4
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


# Where `mlflow ui` / `mlflow server` serve by default: the base of a report's run links for
# a store that is not itself a server (a SQLite file read through `mlflow ui`).
DEFAULT_UI_URL = "http://127.0.0.1:5000"


def ui_base(tracking_uri: str, chosen: str | None = None) -> str:
    """The MLflow UI a report links to: ``chosen``, else a server's own tracking URI (its
    credentials taken off), else DEFAULT_UI_URL."""
    if chosen:
        return chosen.rstrip("/")
    if tracking_uri.startswith(("http://", "https://")):
        scheme, _, rest = tracking_uri.partition("://")
        host, slash, path = rest.partition("/")
        return f"{scheme}://{host.rpartition('@')[2]}{slash}{path}".rstrip("/")
    return DEFAULT_UI_URL


# MLflow 3's UI opens an experiment on its GenAI side (the overview) for a browser that has
# not chosen a side, whatever the experiment's kind; this parameter asks for the model
# training side, where the runs table is (checked in Chromium, tests/test_mlflow_ui.py).
UI_SIDE = "workflowType=machine_learning"
# The saved view of the runs table the records keep on the experiment (store.py): its id,
# the experiment tag that holds it, and its name in the UI's Views menu.
KEY_VIEW_ID = "versweep"
KEY_VIEW_TAG = "mlflow.sharedViewState." + KEY_VIEW_ID
KEY_VIEW_NAME = "versweep: key metrics"


def run_url(base: str, experiment_id: str, run_id: str) -> str:
    """The run's page in the MLflow UI (the single-page app's route, MLflow 2 and 3)."""
    return f"{base}/#/experiments/{experiment_id}/runs/{run_id}?{UI_SIDE}"


def experiment_url(base: str, experiment_id: str) -> str:
    """The experiment's runs table in the MLflow UI, with the key-metrics view's columns."""
    return (f"{base}/#/experiments/{experiment_id}/runs?{UI_SIDE}"
            f"&viewStateShareKey={KEY_VIEW_ID}")


def sweep_suffix(parent_run_id: str) -> str:
    """What a trial run's name ends with (layout 3): its sweep's short run id, ' · 3f9a1c'."""
    return f" · {parent_run_id[:6]}"


def trial_name(run_name: str, parent_run_id: str) -> str:
    """The trial's own name (TrialSpec.name) from its run's name: the sweep suffix taken off."""
    suffix = sweep_suffix(parent_run_id)
    return run_name[:-len(suffix)] if parent_run_id and run_name.endswith(suffix) else run_name

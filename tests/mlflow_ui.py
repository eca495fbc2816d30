"""MLflow 3.17's web UI as a person meets versweep's records in it: links, the key-metrics view,
and what to read off the runs table. Used by tests/test_mlflow_ui.py and docs/ui/screenshots.py.

What the UI does (MLflow 3.17.2, read from its bundle and tried in headless Chromium; see
docs/ui/README.md):

* ``#/experiments/<id>`` opens the **GenAI overview** in a browser that has not chosen
  otherwise, whatever the experiment's ``mlflow.experimentKind`` tag says: the sidebar's
  GenAI / Model training switch decides, read from the URL's ``workflowType`` parameter, else
  the browser's localStorage (``mlflow.workflowType``), else ``genai``. A link that should open
  the runs table names the tab and the switch: ``#/experiments/<id>/runs?workflowType=
  machine_learning``.
* The runs table shows the attributes Source, Models and Dataset and no metric, param or tag
  column until the user picks some; the choice is kept per browser (localStorage), and no URL
  parameter selects columns (``orderByKey`` sorts, it does not show the column). What a
  server-side record can do: an experiment tag ``mlflow.sharedViewState.<id>`` holding a saved
  view (a JSON envelope ``{"name", "createdAt", "updatedAt", "state"}`` whose ``state`` is the
  JSON of the view, e.g. ``{"selectedColumns": [...]}``). The runs page lists it under "Views"
  for everyone, and the link ``...runs?workflowType=machine_learning&viewStateShareKey=<id>``
  opens it directly. A link with any search parameter (searchFilter, orderByKey, ...) besides
  it ignores the view, and a view's own searchFilter is shown but not applied to the rows,
  so the view holds columns only.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from urllib.parse import quote

# The saved view versweep's records carry (issue 13): its id, the tag that holds it, its name.
VIEW_ID = "versweep"
VIEW_TAG_PREFIX = "mlflow.sharedViewState."
VIEW_TAG = VIEW_TAG_PREFIX + VIEW_ID
VIEW_NAME = "versweep: key metrics"

# Tags of a trial run that say how it ended and what it ran on (the image is in its name).
KEY_TAGS = ("versweep.status", "versweep.torch", "versweep.cuda", "versweep.cudnn")


def column(kind: str, name: str) -> str:
    """A runs-table column id as the UI names it: ``metrics.`test_perplexity```."""
    return f"{kind}.`{name}`"


def key_columns(workloads: Iterable[str]) -> list[str]:
    """The columns of the key-metrics view: each workload's best metric, then KEY_TAGS."""
    from sweeps import workloads as plugins

    metrics = []
    for name in workloads:
        best = plugins.get(name).best_metric
        if best and column("metrics", best) not in metrics:
            metrics.append(column("metrics", best))
    return metrics + [column("tags", tag) for tag in KEY_TAGS]


def key_view_value(columns: list[str], *, now_ms: int | None = None) -> str:
    """The value of VIEW_TAG: MLflow's saved-view envelope around the view's JSON."""
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    state = json.dumps({"selectedColumns": columns})
    return json.dumps({"name": VIEW_NAME, "createdAt": now_ms, "updatedAt": now_ms,
                       "state": state})


def ensure_key_view(client, experiment_id: str, workloads: Iterable[str]) -> bool:
    """Write VIEW_TAG on the experiment unless its records already carry one; True if written.

    Stands in for sweeps/records/store.py until the records write it themselves.
    """
    tags = client.get_experiment(experiment_id).tags or {}
    if VIEW_TAG in tags:
        return False
    client.set_experiment_tag(experiment_id, VIEW_TAG, key_view_value(key_columns(workloads)))
    return True


def runs_link(base: str, experiment_id: str, *, view: bool = True) -> str:
    """The experiment's runs table (the Model training side), with the key-metrics view."""
    link = f"{base.rstrip('/')}/#/experiments/{experiment_id}/runs?workflowType=machine_learning"
    return link + (f"&viewStateShareKey={quote(VIEW_ID)}" if view else "")


def bare_experiment_link(base: str, experiment_id: str) -> str:
    """The experiment's page as MLflow itself prints it ('View experiment at: ...')."""
    return f"{base.rstrip('/')}/#/experiments/{experiment_id}"


def run_link(base: str, experiment_id: str, run_id: str) -> str:
    """A run's page, on the Model training side of the sidebar."""
    return (f"{base.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"
            "?workflowType=machine_learning")


def warm_up(base: str) -> None:
    """Send a fresh ``mlflow server`` (one worker) its first GraphQL request, alone.

    MLflow 3.17.2's server imports ``mlflow.server.auth`` on every GraphQL request (the run
    page's queries): without the ``auth`` extra that import fails after defining the auth
    store's SQLAlchemy models. If another request configures SQLAlchemy's mappers while the
    first such import is half done, the half-defined ``SqlUser`` mapper fails for good and
    the server answers "One or more mappers failed to initialize ... SqlUserRoleAssignment"
    to every later request (seen once, on a run page). One request first, before a browser
    sends several at once, keeps the import out of that race.
    """
    import urllib.request

    request = urllib.request.Request(
        base.rstrip("/") + "/graphql", data=json.dumps({"query": "query { __typename }"})
        .encode(), headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(request, timeout=60) as answer:
        answer.read()


# --------------------------------------------------------------------------- the page

# JavaScript read off the runs table (ag-grid: each row is drawn once per pinned part).
RUNS_TABLE_ROWS = "document.querySelectorAll('.ag-center-cols-container .ag-row').length"
HEADER_COLUMNS = ("Array.from(document.querySelectorAll('.ag-header-cell[col-id]'))"
                  ".map(e => e.getAttribute('col-id'))")
RUN_NAME_CELLS = ("Array.from(document.querySelectorAll("
                  "'.ag-row [col-id=\"attributes.`Run Name`\"] a[href*=\"/runs/\"]'))"
                  ".map(a => ({name: a.innerText.trim(), "
                  "run_id: a.getAttribute('href').split('/runs/')[1].split(/[?/]/)[0], "
                  "row: a.closest('.ag-row').getAttribute('row-index')}))")
# Whether every run name in the table is shown whole: the name link's text is clipped (with an
# ellipsis) inside an element narrower than it where the column is too narrow.
RUN_NAMES_WHOLE = ("Array.from(document.querySelectorAll("
                   "'.ag-row [col-id=\"attributes.`Run Name`\"] a[href*=\"/runs/\"]'))"
                   ".map(a => ({name: a.innerText.trim(), whole: ![a, ...a.querySelectorAll('*')]"
                   ".some(x => x.scrollWidth > x.clientWidth + 1)}))")
ON_GENAI_OVERVIEW = "location.hash.includes('/overview')"
WORKFLOW_SELECTED = ("(() => { const p = new URLSearchParams(location.hash.split('?')[1] || '');"
                     " return p.get('workflowType'); })()")


def _name_link(run_id: str) -> str:
    """A CSS selector (as a JavaScript string) of the name link in a run's row."""
    return json.dumps(f'.ag-row [col-id="attributes.`Run Name`"] a[href$="/runs/{run_id}"]')


def expand_run(run_id: str) -> str:
    """JavaScript that clicks the expander of a parent run's row; true if it found one."""
    return (f"(() => {{ const a = document.querySelector({_name_link(run_id)});"
            " if (!a) return false; const b = a.closest('[col-id]').querySelector('button');"
            " if (!b) return false; b.click(); return true; })()")


def cell_text(run_id: str, column_id: str) -> str:
    """JavaScript for the text of one cell of a run's row (the row found by its name link)."""
    return (f"(() => {{ const a = document.querySelector({_name_link(run_id)});"
            " if (!a) return null; const i = a.closest('.ag-row').getAttribute('row-index');"
            " const row = document.querySelector("
            "'.ag-center-cols-container .ag-row[row-index=\"' + i + '\"]');"
            " if (!row) return null;"
            " const c = Array.from(row.querySelectorAll('[col-id]'))"
            f".find(e => e.getAttribute('col-id') === {json.dumps(column_id)});"
            " return c ? c.innerText.trim() : null; })()")


CLOSE_ASSISTANT = ("(() => { const b = document.querySelector("
                   "'button[data-component-id=\"mlflow.assistant.chat_panel.close\"]');"
                   " if (b) b.click(); return Boolean(b); })()")

"""Screenshots of versweep's records in MLflow's own web UI, as a person first opens them.

    python docs/ui/screenshots.py                    # the smoke grid into a temporary store
    python docs/ui/screenshots.py --tracking-uri sqlite:///$PWD/mlflow.db --experiment smoke

Without --tracking-uri it runs the smoke grid (``python sweeps/run.py --grid smoke``, about a
minute on two cores, on this machine's torch) into a temporary SQLite store. It then starts
``mlflow server`` on that store (or uses the server a ``http://`` URI names), opens in a
headless Chromium (a fresh profile: what a new user sees) the experiment's runs table with
versweep's key-metrics view, the newest sweep's run page and one trial's run page (overview,
model metrics, artifacts), and writes PNGs (default 1400x900) into docs/ui/ (--out).

The experiment must carry versweep's saved view (tag ``mlflow.sharedViewState.versweep``,
tests/mlflow_ui.py says why); where its records do not yet, it is written first, and the
script says so. Host side: no torch is imported here (the smoke sweep's workers import it in
their own processes). Standard library, mlflow and Pillow (for smaller PNGs) only; the
browser is driven by tests/chromium.py.
"""

from __future__ import annotations

import argparse
import io
import os
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from chromium import Chromium, chromium_path  # noqa: E402  (tests/chromium.py)
from mlflow_ui import (  # noqa: E402  (tests/mlflow_ui.py)
    CLOSE_ASSISTANT,
    RUNS_TABLE_ROWS,
    cell_text,
    column,
    ensure_key_view,
    expand_run,
    run_link,
    runs_link,
    warm_up,
)
from sweeping import running_mlflow_server  # noqa: E402  (tests/sweeping.py)

from sweeps.records.location import sqlite_path  # noqa: E402

WIDTH, HEIGHT = 1400, 900
SERVER_LOG: Path | None = None  # mlflow server's output, shown when a page does not appear


def say(text: str) -> None:
    print(text, flush=True)


def smoke_store(work: Path) -> str:
    """Run the smoke grid into ``work/mlflow.db``; its tracking URI."""
    uri = f"sqlite:///{work / 'mlflow.db'}"
    say(f"running the smoke grid into {work} (about a minute) ...")
    done = subprocess.run([sys.executable, str(ROOT / "sweeps" / "run.py"), "--grid", "smoke",
                           "--tracking-uri", uri], cwd=work, capture_output=True, text=True,
                          env={k: v for k, v in os.environ.items()
                               if k not in ("MLFLOW_TRACKING_URI", "RAY_ADDRESS")})
    if done.returncode != 0:
        sys.exit("the smoke sweep failed:\n" + done.stdout[-2000:] + done.stderr[-2000:])
    return uri


@contextmanager
def mlflow_server(tracking_uri: str, work: Path):
    """The UI's address: the server an http(s) URI names, else ``mlflow server`` on the
    SQLite store (tests/sweeping.py's running_mlflow_server, the one the UI tests start)."""
    global SERVER_LOG
    if tracking_uri.startswith(("http://", "https://")):
        yield tracking_uri.rstrip("/")
        return
    db = sqlite_path(tracking_uri)
    if db is None:
        sys.exit(f"screenshots: {tracking_uri}: give a sqlite:/// store or an http(s) server")
    SERVER_LOG = work / "server.log"
    with running_mlflow_server(work, db) as url:
        warm_up(url)
        yield url


def save(png: bytes, path: Path) -> None:
    """The PNG, re-encoded with a 256-colour palette (a UI has few colours): a few times
    smaller, and still sharp."""
    try:
        from PIL import Image
    except ImportError:
        path.write_bytes(png)
        return
    image = Image.open(io.BytesIO(png)).convert("RGB")
    image.quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)
    say(f"  {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path} "
        f"({path.stat().st_size // 1024} KB)")


def shoot(browser: Chromium, url: str, path: Path, ready: str, what: str, *,
          before=None) -> None:
    tab = browser.open(url, width=WIDTH, height=HEIGHT)
    try:
        try:
            tab.wait_until(ready, timeout=90, what=what)
        except TimeoutError:
            log = SERVER_LOG.read_text()[-4000:] if SERVER_LOG and SERVER_LOG.exists() else ""
            say(f"the MLflow server's log ends:\n{log}")
            raise
        tab.evaluate(CLOSE_ASSISTANT)
        if before is not None:
            before(tab)
        time.sleep(1.5)  # let charts and fonts settle
        save(tab.screenshot(), path)
    finally:
        tab.close()


def body_has(*texts: str) -> str:
    return " && ".join(f"document.body.innerText.includes({text!r})" for text in texts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tracking-uri", help="a sqlite:/// store or an http:// server "
                        "(default: run the smoke grid into a temporary store)")
    parser.add_argument("--experiment", default="smoke", help="the experiment (default: smoke)")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent,
                        help="where the PNGs go (default: docs/ui)")
    args = parser.parse_args(argv)
    executable = chromium_path()
    if executable is None:
        sys.exit("needs Chromium (apt-get install chromium)")
    args.out.mkdir(parents=True, exist_ok=True)

    from sweeps.records.store import open_client  # mlflow, on the host side only

    with tempfile.TemporaryDirectory(prefix="versweep-ui-") as temp:
        work = Path(temp)
        uri = args.tracking_uri or smoke_store(work)
        client = open_client(uri)
        experiment = client.get_experiment_by_name(args.experiment)
        if experiment is None:
            sys.exit(f"no experiment {args.experiment!r} at {uri}")
        exp_id = experiment.experiment_id
        runs = client.search_runs([exp_id], max_results=1000)
        sweeps = sorted((r for r in runs if r.data.tags.get("versweep.kind") == "sweep"),
                        key=lambda r: r.info.start_time, reverse=True)
        if not sweeps:
            sys.exit(f"experiment {args.experiment!r} holds no versweep sweep")
        sweep = sweeps[0]
        trials = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == sweep.info.run_id]
        workloads = sorted({t.data.tags.get("versweep.workload", "") for t in trials} - {""})
        if ensure_key_view(client, exp_id, workloads):
            say("the experiment had no key-metrics view yet: wrote it (tests/mlflow_ui.py)")
        # A trial with curves to show: the language model if the sweep ran one.
        trial = sorted(trials, key=lambda t: (t.data.tags.get("versweep.workload") != "ptb_lm",
                                              t.data.tags.get("versweep.status") != "ok",
                                              t.info.start_time))[0]
        metric = "test_perplexity" if "test_perplexity" in trial.data.metrics else next(
            iter(sorted(trial.data.metrics)), "")

        with mlflow_server(uri, work) as base, Chromium(executable) as browser:
            say(f"MLflow UI at {base}; experiment {exp_id}, sweep run {sweep.info.run_id}")

            def open_the_sweep(tab) -> None:
                tab.wait_until(expand_run(sweep.info.run_id), timeout=30,
                               what="the sweep's expander")
                tab.wait_until(f"{cell_text(trial.info.run_id, column('tags', 'versweep.status'))}"
                               " === 'ok'", timeout=30, what="the trials' rows")

            shoot(browser, runs_link(base, exp_id), args.out / "runs-table.png",
                  f"{RUNS_TABLE_ROWS} > 0", "the runs table", before=open_the_sweep)
            shoot(browser, run_link(base, exp_id, sweep.info.run_id), args.out / "sweep-run.png",
                  body_has(sweep.info.run_name, "trials:"), "the sweep's run page")
            trial_page = run_link(base, exp_id, trial.info.run_id)
            shoot(browser, trial_page, args.out / "trial-run.png",
                  body_has(trial.info.run_name, metric), "the trial's run page")
            shoot(browser, trial_page.replace("?", "/model-metrics?"),
                  args.out / "trial-metrics.png",
                  "document.querySelectorAll('.js-plotly-plot, canvas, svg.main-svg').length > 2",
                  "the trial's metric charts")
            shoot(browser, trial_page.replace("?", "/artifacts/worker.log?"),
                  args.out / "trial-artifacts.png", body_has("Path:", "-m workers"),
                  "the trial's artifacts")
    return 0


if __name__ == "__main__":
    sys.exit(main())

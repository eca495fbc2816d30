"""``versweep report`` (and ``python analysis/report.py``): the report of sweeps.

    python analysis/report.py --experiment versions                    # the newest sweep
    python analysis/report.py --experiment versions --all-sweeps       # every sweep, pooled
    python analysis/report.py --experiment versions --sweep 3f2a 9c1d  # these two, pooled
    python analysis/report.py --experiment versions --sweep 3f2a... --baseline torch-1.13.1-cu117
    python analysis/report.py --experiment versions --format md,csv --out reports/today
    python analysis/report.py --experiment versions --compare torch-1.13.1-cu117 torch-2.5.1-cu124

It reads the sweep's MLflow records (analysis/load.py), computes medians with
bootstrap intervals and noise-aware comparisons (analysis/stats.py), and writes
report.md (GitHub), a self-contained report.html and CSV tables (analysis/render.py)
with figures (analysis/plots.py); the files are also logged as artifacts of the
sweep's parent run (the newest, for several), under report/, so they show in the MLflow UI.
Every row links to its runs in the MLflow UI (``--mlflow-ui URL``; ``--no-links``).

``--compare A B`` prints a compact two-image table in the manner of ``asv compare``
instead (analysis/compare.py) and writes nothing.

Every expected mistake (unknown experiment, sweep or image, an experiment with
nothing finished, an unknown format) is one line, ``report: error: ...``, exit 2.
"""


from __future__ import annotations

import argparse
import statistics
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

from analysis import compare as terminal
from analysis import pool, render
from analysis.load import (
    SweepData,
    Trial,
    load_samples,
    load_sweep_data,
)
from analysis.reference import reference_rows
from analysis.sections import (
    ReportContext,
    all_images,
    choose_baseline,
    did_not_run_sections,
    env_value,
    finite,
    language_model_sections,
    lm_label,
    lm_variants,
    mean_std,
    metrics_sections,
    ordered_images,
    provenance_sections,
    reference_sections,
    search_sections,
    series_sections,
    slug,
    speed_groups,
    speed_sections,
    summary_section,
    sweeps_section,
    torch_version,
    trials_csv,
    trials_for,
    workload_plugins,
)
from analysis.stats import (
    parity,
)
from sweeps import validate
from sweeps.errors import EXIT_OK, ArgumentParser, UserError, one_line
from sweeps.status import Status


def build_report(data: SweepData, baseline: str | None = None, *,
                 include_busy: bool = False, ui_url: str = "") -> render.Report:
    """The whole report of one sweep (or several: data.sweeps), as plain data ready to
    render; ``ui_url`` is the MLflow UI its rows link to ("" for no links)."""
    # Figures and bootstraps go to worker processes while the rest is computed (all done by
    # the time the pool closes); see analysis/pool.py.
    with pool.report_pool():
        images = ordered_images(data)
        chosen = choose_baseline(data, images, baseline)
        context = ReportContext(data=data, images=images, baseline=chosen,
                                groups=speed_groups(data, images, chosen,
                                                    include_busy=include_busy),
                                references=reference_rows(), chosen_by_user=baseline is not None,
                                undecided=data.undecided(), ui_url=ui_url)
        context.torch = {image: torch_version(data, image) for image in all_images(context)}
        sections = [summary_section(context)]
        pooled = sweeps_section(context)
        if pooled is not None:
            sections.append(pooled)
        # Which sections: those the workloads that ran ask for (their plug-ins, sweeps/workloads).
        plugins = workload_plugins(data.trials)
        asked = {kind for plugin in plugins.values() for kind in plugin.report_sections}
        if "speed" in asked:
            sections += speed_sections(context)
            sections += reference_sections(context)
        if data.search:
            sections += search_sections(context)
        elif "language_model" in asked:
            sections += language_model_sections(context)
        for _, plugin in sorted(plugins.items()):
            if "metrics" in plugin.report_sections and not data.search:
                sections += metrics_sections(context, plugin)
        sections += series_sections(context)
        sections += did_not_run_sections(context)
        sections += provenance_sections(context)
        trials_csv(context)
        started = f"{data.started:%Y-%m-%d %H:%M} UTC" if data.started else "unknown time"
        if len(data.sweeps) > 1:
            oldest = min(sweep.started for sweep in data.sweeps)
            which = (f"{len(data.sweeps)} sweeps (listed under Sweeps), started "
                     f"{oldest:%Y-%m-%d %H:%M} to {started}")
        else:
            which = (f"Sweep run {context.link(data.parent_run_name, data.parent_run_id)} "
                     f"(`{data.parent_run_id}`), started {started}")
        return render.Report(
            title=f"versweep report: {data.experiment_name}",
            subtitle=(f"{which}; {len(data.trials)} decided trials"
                      + (f" of {len(data.planned)} planned" if context.undecided else "")
                      + f" on {len(images)} image{'s' if len(images) != 1 else ''}; "
                      f"baseline **{chosen}**."),
            sections=sections, csv_tables=list(context.csv.values()))


def compare_rows(data: SweepData, before: str, after: str) -> list[terminal.Row]:
    """The rows of ``--compare before after``: every benchmark, then the LM's test perplexity."""
    images = ordered_images(data)
    for name in (before, after):
        if name not in images:
            raise UserError(f"--compare: '{name}' is not an image of this sweep; its images: "
                            f"{', '.join(images)}")
    bench_ok = [t for t in trials_for(data.trials, "speed") if t.status == Status.OK
                and t.image in (before, after)]
    samples = load_samples(bench_ok) if bench_ok else {}
    rows = []
    for group in speed_groups(data, [before, after], before, samples):
        sides = []
        for image in (before, after):
            interval = group.intervals.get(image)
            if interval is None:
                sides.append(terminal.Figure(None, missing=_why_missing(
                    group.trials.get(image, []))))
            else:
                sides.append(terminal.Figure(interval.estimate, interval.low, interval.high))
        comparison = group.comparisons.get(after)
        rows.append(terminal.Row(
            f"rnn_bench {group.label}", sides[0], sides[1],
            comparison.ratio if comparison else None,
            comparison.mark if comparison else "n/a"))
    for key, trials in sorted(lm_variants(data.trials).items()):
        values = {image: [t.metrics["test_perplexity"] for t in trials
                          if t.image == image and t.status == "ok"
                          and finite(t.metrics.get("test_perplexity"))]
                  for image in (before, after)}
        sides = []
        for image in (before, after):
            mean, std = mean_std(values[image])
            sides.append(terminal.Figure(
                mean, None if std is None or mean is None else mean - std,
                None if std is None or mean is None else mean + std,
                missing=_why_missing([t for t in trials if t.image == image])))
        mark, ratio = "n/a", None
        if values[before] and values[after]:
            verdict = parity({before: values[before], after: values[after]}, before)[after]
            mark = verdict.verdict
            ratio = statistics.fmean(values[after]) / statistics.fmean(values[before])
        rows.append(terminal.Row(f"{lm_label(dict(key), [])} test perplexity (mean±std)",
                                 sides[0], sides[1], ratio, mark, unit=""))
    return rows


def _why_missing(trials: Sequence[Trial]) -> str:
    """One word for a terminal column: the commonest status of trials without a figure."""
    counts = Counter(t.status for t in trials if t.status != "ok")
    return counts.most_common(1)[0][0] if counts else "not-run"


def _about(data: SweepData, image: str) -> str:
    for trial in data.trials:
        if trial.image == image and env_value(trial, "torch"):
            parts = [f"torch {env_value(trial, 'torch')}"]
            parts.append(f"CUDA {env_value(trial, 'cuda')}" if env_value(trial, "cuda")
                         else "no CUDA")
            if env_value(trial, "cudnn"):
                parts.append(f"cuDNN {env_value(trial, 'cudnn')}")
            parts.append(env_value(trial, "gpu") or env_value(trial, "device") or "")
            return ", ".join(p for p in parts if p)
    return ""


# --------------------------------------------------------------------------- the command


def build_parser(prog: str = "report.py") -> argparse.ArgumentParser:
    """The arguments of ``python analysis/report.py`` (and ``versweep report``)."""
    parser = ArgumentParser(
        prog=prog,
        description="Compare PyTorch / CUDA / cuDNN images and hyper-parameters from a "
                    "sweep's MLflow records: report.md, report.html and CSV tables.")
    parser.add_argument("--experiment", required=True, help="the MLflow experiment (the "
                                                             "grid's name, e.g. versions)")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--sweep", metavar="PARENT_RUN_ID", nargs="+",
                       help="the sweep's parent run id, or a unique start of it; several "
                            "make one report of them all (default: the newest sweep)")
    which.add_argument("--all-sweeps", action="store_true",
                       help="report every sweep of the experiment together")
    parser.add_argument("--baseline", metavar="IMAGE",
                        help="the image every other is compared with (default: the oldest "
                             "PyTorch in the sweep on which something ran)")
    parser.add_argument("--out", metavar="DIR", help="where the files go (default: "
                                                     "./report-<experiment>-<sweep id>)")
    parser.add_argument("--format", default="md,html,csv",
                        help="comma-separated: md, html, csv (default: all three)")
    parser.add_argument("--compare", nargs=2, metavar=("A", "B"),
                        help="print a two-image table (A before, B after) instead of writing "
                             "the report")
    parser.add_argument("--tracking-uri", help="MLflow tracking URI (default: "
                                               "$MLFLOW_TRACKING_URI, else ./mlflow.db)")
    parser.add_argument("--include-busy", action="store_true",
                        help="keep timing trials measured while other work kept the node's "
                             "CPUs busy (left out by default, and listed)")
    parser.add_argument("--mlflow-ui", metavar="URL",
                        help="the MLflow UI the report's rows link to (default: the tracking "
                             "server's own address, else http://127.0.0.1:5000, where "
                             "`mlflow ui` serves a local store)")
    parser.add_argument("--no-links", action="store_true",
                        help="no links to the MLflow UI in the report")
    parser.add_argument("--no-log", action="store_true",
                        help="do not log the report files as artifacts of the sweep's run")
    return parser


def parse_formats(text: str) -> list[str]:
    """``md,html`` -> ["md", "html"]; an unknown name is a UserError."""
    names = [name.strip().lower() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in render.FORMATS]
    if unknown or not names:
        raise UserError(f"--format: unknown format '{', '.join(unknown) or text}'; "
                        f"choose from {', '.join(render.FORMATS)}")
    return names


def _experiment(name: str) -> str:
    """--experiment as a name MLflow could hold (one line, not empty, not too long)."""
    return validate.name(name, "--experiment")


def _tracking_uri(cli_value: str | None) -> str:
    from sweeps.records.location import holds_a_store, resolve_tracking_uri, sqlite_path

    uri = resolve_tracking_uri(cli_value, Path.cwd())
    db = sqlite_path(uri)
    if db is not None and not holds_a_store(db):
        # Opening a missing SQLite file would create an empty store: say what is wrong instead.
        raise UserError(f"no MLflow store at {db}; run a sweep there first, or point "
                        "--tracking-uri (or MLFLOW_TRACKING_URI) at your records")
    return uri


def _ui_url(tracking_uri: str, chosen: str | None) -> str:
    """The MLflow UI the report links to; a UserError for an address that is not one."""
    from urllib.parse import urlparse

    from sweeps.records.layout import ui_base

    if chosen is not None:
        parsed = urlparse(chosen.strip())
        if parsed.scheme not in ("http", "https") or not parsed.netloc or any(
                c.isspace() or c in "\"'<>()" for c in chosen.strip()):
            raise UserError(f"--mlflow-ui '{chosen}' is not a web address; give the MLflow "
                            "UI's address, e.g. http://127.0.0.1:5000")
        chosen = chosen.strip()
    return ui_base(tracking_uri, chosen)


def log_report(data: SweepData, out_dir: Path, files: Sequence[Path]) -> None:
    """Log the written files as artifacts of the sweep's parent run, under report/: copied
    straight into its artifact folder where that is on this machine (a SQLite store's
    default), else through MLflow in one call (sweeps/records/artifacts.py)."""
    from sweeps.records.artifacts import log_files

    log_files(data.tracking_uri, data.parent_run_id, data.parent_artifact_uri, out_dir, files,
              "report")


def run_report(experiment: str, *, sweep: str | Sequence[str] | None = None,
               all_sweeps: bool = False, baseline: str | None = None,
               out: str | Path | None = None, formats: Sequence[str] = render.FORMATS,
               tracking_uri: str | None = None, log: bool = True,
               stdout: TextIO | None = None, include_busy: bool = False,
               mlflow_ui: str | None = None, links: bool = True) -> list[Path]:
    """Write the report of one sweep (or several); return the files written. UserError for
    user mistakes."""
    stdout = stdout if stdout is not None else sys.stdout
    experiment = _experiment(experiment)
    # Where the files go is checked before anything is read: a file, a path below a file,
    # a directory that cannot be written are one line, and nothing is written.
    chosen_dir = validate.output_dir(out, "--out") if out else None
    uri = _tracking_uri(tracking_uri)
    ui_url = _ui_url(uri, mlflow_ui) if links else ""
    data = load_sweep_data(uri, experiment, sweep, all_sweeps=all_sweeps)
    report = build_report(data, baseline, include_busy=include_busy, ui_url=ui_url)
    several = len(data.sweeps) > 1
    out_dir = chosen_dir or validate.output_dir(Path.cwd() / (
        f"report-{slug(data.experiment_name)}-"
        + (f"{len(data.sweeps)}-sweeps-" if several else "") + data.parent_run_id[:8]),
        "the report's directory")
    try:
        files = render.write_report(report, out_dir, formats)
    except OSError as exc:  # checked above; what is left is the disk's: full, read-only
        raise UserError(f"cannot write the report to {out_dir}: "
                        f"{exc.strerror or exc}") from None
    what = (f"{len(data.sweeps)} sweeps (newest {data.parent_run_id})" if several else
            f"sweep {data.parent_run_id}")
    stdout.write(f"report of {what} ({len(data.trials)} trials) written to {out_dir}:\n")
    for path in files:
        if path.parent == out_dir:
            stdout.write(f"  {path.name}\n")
    if log:
        log_report(data, out_dir, files)
        stdout.write(f"logged as artifacts of run {data.parent_run_id} under report/\n")
    return files


def run_compare(experiment: str, before: str, after: str, *,
                sweep: str | Sequence[str] | None = None, all_sweeps: bool = False,
                tracking_uri: str | None = None, stdout: TextIO | None = None) -> None:
    """Print the ``--compare before after`` table."""
    stdout = stdout if stdout is not None else sys.stdout
    if before == after:
        raise UserError(f"--compare: '{before}' is compared with itself; name two different "
                        "images, the one before and the one after")
    experiment = _experiment(experiment)
    data = load_sweep_data(_tracking_uri(tracking_uri), experiment, sweep,
                           all_sweeps=all_sweeps)
    rows = compare_rows(data, before, after)
    stdout.write(terminal.format_table(rows, before, after, before_about=_about(data, before),
                                       after_about=_about(data, after)))


def main(argv: Sequence[str] | None = None, prog: str = "report.py") -> int:
    """Parse ``argv``, write (or with --compare print) the report; return the exit code.

    ``prog`` names the command in usage and errors (``versweep report`` passes its own).
    """
    try:
        args = build_parser(prog).parse_args(list(sys.argv[1:] if argv is None else argv))
        if args.compare:
            run_compare(args.experiment, *args.compare, sweep=args.sweep,
                        all_sweeps=args.all_sweeps, tracking_uri=args.tracking_uri)
        else:
            run_report(args.experiment, sweep=args.sweep, all_sweeps=args.all_sweeps,
                       baseline=args.baseline, out=args.out,
                       formats=parse_formats(args.format),
                       tracking_uri=args.tracking_uri, log=not args.no_log,
                       include_busy=args.include_busy, mlflow_ui=args.mlflow_ui,
                       links=not args.no_links)
    except UserError as exc:
        # `python analysis/report.py` has always said "report: error:"; versweep its name.
        shown = "report" if prog == "report.py" else prog
        sys.stderr.write(f"{shown}: error: {one_line(exc)}\n")
        return exc.exit_code
    return EXIT_OK

"""What a report says: its sections, each built from a sweep's data (analysis/load.py).

One function per section (summary, speed, the seed's reference, language model, search,
a workload's generic metrics, did not run, provenance); each takes the ReportContext and
returns render.Section values, and may add CSV tables to the context. Which sections a
report has is decided by the workloads' plug-ins (sweeps/workloads: report_sections), in
analysis/command.py's build_report. Statistics come from analysis/stats.py; figures from
analysis/plots.py; nothing here writes a file.
"""

from __future__ import annotations

import math
import re
import statistics
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from analysis import plots, pool, render, search_figures
from analysis.compare import format_number
from analysis.load import (
    PlannedTrial,
    SweepData,
    Trial,
    load_samples,
    metric_histories,
    read_samples_file,
    samples_file,
)
from analysis.reference import ReferenceRow
from analysis.stats import (
    ALPHA,
    SPEED_THRESHOLD,
    Comparison,
    Interval,
    compare,
    median_ci,
    parity,
)
from sweeps import workloads
from sweeps.errors import UserError
from sweeps.records.layout import experiment_url, run_url
from sweeps.status import STATUSES, Status
from sweeps.versions import version_tuple
from sweeps.workloads import Workload

# Trials whose steps are worth plotting: they trained, to the end or not.
CURVE_STATUSES = frozenset(s.value for s in Status if s.has_curve)

# Params that differ between the repeats of one trial by design: not part of what is compared.
REPEAT_PARAMS = frozenset({"seed"})

# The seed's benchmark shapes (stefbraun/rnn_benchmarks: batch x steps, hidden units): the
# GTX 1080 reference rows join a speed table only where the sweep ran these same shapes.
SEED_SHAPES = {
    "1x320-ce-short": {"batch_size": "64", "seq_len": "100", "hidden_size": "320"},
    "1x320-ce-long": {"batch_size": "32", "seq_len": "1000", "hidden_size": "320"},
    "4x320-ce-long": {"batch_size": "32", "seq_len": "1000", "hidden_size": "320"},
    "4x320-ctc-long": {"batch_size": "32", "seq_len": "1000", "hidden_size": "320"},
}

# Learning curves drawn per image and variant: enough to see the spread between seeds
# without a wall of lines (and without one history request per run of a big sweep).
MAX_CURVES_PER_IMAGE = 5
MAX_SEARCH_CURVES = 40

# Env fields that must match between compared runs; a difference is a warning, because a
# speed or accuracy difference may then come from the machine, not from the image.
MACHINE_FIELDS = {"gpu": "GPU model", "capability": "GPU compute capability",
                  "driver": "GPU driver", "device": "device", "host": "host"}
# Fields that belong to the image: they may differ between images, never within one.
IMAGE_FIELDS = {"torch": "torch", "cuda": "CUDA", "cudnn": "cuDNN", "python": "Python"}

# The status and reason the Did-not-run tables give a planned trial without a decided run.
NOT_DECIDED = "not decided"
NOT_DECIDED_REASON = "interrupted or still running (no decided run)"

# What a parent run's MLflow status says about its sweep, where it is not FINISHED.
PARENT_STATES = {
    "RUNNING": "is still running (its parent run is RUNNING)",
    "KILLED": "was interrupted (its parent run ended KILLED; `python sweeps/run.py --grid "
              "<grid> --resume` finishes it)",
    "FAILED": "ended in an error (its parent run is FAILED)",
}

# A sweep's state in one word, from its parent run's MLflow status.
SWEEP_STATES = {"FINISHED": "finished", "RUNNING": "running",
                "KILLED": "interrupted (--resume finishes it)", "FAILED": "failed"}

# Values MLflow tags hold for "the worker reported nothing here" (the env event's JSON null).
_MISSING = {"", "null", "None"}


# --------------------------------------------------------------------------- small helpers


def format_value(value: float | None, digits: int = 4) -> str:
    """A figure with ``digits`` significant digits and no exponent (1234, 123.4, 1.234, 0.01234)."""
    if value is None or not math.isfinite(value):
        return "n/a"
    if value == 0:
        return "0"
    decimals = max(digits - 1 - math.floor(math.log10(abs(value))), 0)
    return f"{value:.{decimals}f}"


def format_interval(interval: Interval) -> str:
    """``12.34 [12.10, 12.61]``: the estimate and its 95% interval."""
    return (f"{format_value(interval.estimate)} "
            f"[{format_value(interval.low)}, {format_value(interval.high)}]")


def format_ratio(comparison: Comparison) -> str:
    """``0.914 [0.902, 0.926]``: the ratio to the baseline and its 95% interval."""
    if not math.isfinite(comparison.ratio):
        return "n/a"
    return f"{comparison.ratio:.3f} [{comparison.low:.3f}, {comparison.high:.3f}]"


def format_mark(mark: str) -> str:
    """The verdict as the tables show it: significant changes in bold."""
    return f"**{mark}**" if mark in ("faster", "slower", "differs") else mark


def tag(trial: Trial, name: str) -> str | None:
    """A tag's value, None where it is missing or the worker reported null."""
    value = trial.tags.get(name)
    return None if value is None or value in _MISSING else value


def number(text: str | None) -> float | None:
    """A param's or tag's text as a finite number; None where it is missing (``_MISSING``:
    the grid left it out, the worker reported null) or is not a number."""
    if text is None or text in _MISSING:
        return None
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def env_value(trial: Trial, field_name: str) -> str | None:
    """What the worker's env event said about ``field_name``: tags versweep.env.*, or for
    torch, cuda, cudnn, gpu, host, python and device the shortcut versweep.<name> (layout 3
    writes those once)."""
    return tag(trial, f"versweep.env.{field_name}") or tag(trial, f"versweep.{field_name}")


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._") or "x"


def mean_std(values: Sequence[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    mean = statistics.fmean(values)
    return mean, (statistics.stdev(values) if len(values) > 1 else None)


def _mean_std_text(values: Sequence[float], digits: int = 4) -> str:
    mean, std = mean_std(values)
    if mean is None:
        return "n/a"
    text = format_value(mean, digits)
    return text + (f" ± {format_value(std, 2)}" if std is not None else "")


# --------------------------------------------------------------------------- images


def torch_version(data: SweepData, image: str) -> str | None:
    """The torch version an image ran (its trials' env), else the one its name carries."""
    for trial in data.trials:
        if trial.image == image:
            version = tag(trial, "versweep.torch") or env_value(trial, "torch")
            if version:
                return version
    match = re.search(r"torch-?(\d+(?:\.\d+)+)", image)
    return match.group(1) if match else None


def ordered_images(data: SweepData) -> list[str]:
    """The sweep's images, oldest torch first (analysis/load.py orders them)."""
    return list(data.images) or sorted({t.image for t in data.trials})


def choose_baseline(data: SweepData, images: Sequence[str], requested: str | None) -> str:
    """``--baseline`` if it names an image of the sweep, else the oldest image on which
    something ran (an image whose every trial was unsupported compares with nothing)."""
    if requested is not None:
        if requested not in images:
            raise UserError(f"--baseline '{requested}' is not an image of this sweep; "
                            f"its images: {', '.join(images)}")
        return requested
    ran = {t.image for t in data.trials if t.status == "ok"}
    return next((image for image in images if image in ran), images[0])


# --------------------------------------------------------------------------- speed


@dataclass
class SpeedGroup:
    """One benchmark variant (bench x impl x cell x sizes) measured on every image."""

    bench: str
    impl: str
    cell: str
    params: dict[str, str]  # the variant's config, without the per-repeat seed
    label: str = ""
    trials: dict[str, list[Trial]] = field(default_factory=dict)  # image -> trials, any status
    # image -> each measured repeat's median ms per batch (for the series view)
    repeat_medians: dict[str, list[float]] = field(default_factory=dict)
    intervals: dict[str, Interval] = field(default_factory=dict)
    comparisons: dict[str, Comparison] = field(default_factory=dict)  # vs the baseline
    busy: list[Trial] = field(default_factory=list)  # ok, but measured on a busy node: left out

    @property
    def shape_matches_seed(self) -> bool:
        """Whether this variant ran the seed's own shapes (so the GTX 1080 rows compare)."""
        wanted = SEED_SHAPES.get(self.bench, {})
        return bool(wanted) and self.cell == "lstm" and all(
            self.params.get(k) == v for k, v in wanted.items())


def _variant(trial: Trial) -> tuple[tuple[str, str], ...]:
    return tuple(sorted((k, v) for k, v in trial.params.items() if k not in REPEAT_PARAMS))


def _label_variants(groups: Sequence[SpeedGroup]) -> None:
    """Name each group "bench impl [cell]", plus the sizes that tell apart groups that share it."""
    by_base: dict[str, list[SpeedGroup]] = defaultdict(list)
    for group in groups:
        base = f"{group.bench} {group.impl}" + (f" {group.cell}" if group.cell != "lstm" else "")
        by_base[base].append(group)
    for base, members in by_base.items():
        if len(members) == 1:
            members[0].label = base
            continue
        differing = sorted(k for k in members[0].params
                           if len({m.params.get(k) for m in members}) > 1)
        for member in members:
            member.label = base + " (" + ", ".join(
                f"{k}={member.params.get(k)}" for k in differing) + ")"


def repeat_values(trial: Trial, samples: Mapping[str, list[float]]) -> list[float]:
    """One repeat's milliseconds per batch: its per-batch samples, else its median alone."""
    return _milliseconds(samples.get(trial.run_id), trial.metrics.get("ms_per_batch_median"))


def _milliseconds(seconds: list[float] | None, median: float | None) -> list[float]:
    if seconds:
        # numpy multiplies as Python does (the same doubles), a report's 10^7 of them faster
        return (np.asarray(seconds, dtype=float) * 1000.0).tolist()
    return [median] if median is not None and math.isfinite(median) else []


# A timing trial is "busy" when the CPUs busy on its node while it ran exceed the threads it
# used itself by more than this (versweep's own processes use a little, other work more).
BUSY_MARGIN_CPUS = 0.75


def busy(trial: Trial) -> bool:
    """Whether other work competed with this trial for its node's CPUs while it ran."""
    busy_cpus = number(trial.tags.get("versweep.busy_cpus"))
    if busy_cpus is None:
        return False  # recorded before versweep measured it, or not on Linux
    # Its own threads: num_threads where the grid set it, else every CPU of the node.
    own = number(trial.params.get("num_threads"))
    if own is None:
        own = number(trial.tags.get("versweep.cpus"))
    return busy_cpus > (1.0 if own is None else own) + BUSY_MARGIN_CPUS


def speed_groups(data: SweepData, images: Sequence[str], baseline: str,
                 samples: Mapping[str, list[float]] | None = None, *,
                 include_busy: bool = False) -> list[SpeedGroup]:
    """Every variant of a speed workload (rnn_bench) with its intervals per image and
    comparisons to ``baseline``. Trials measured on a busy node are left out of the
    figures (kept in ``busy``) unless ``include_busy``.

    ``samples``: run id -> per-batch seconds, already read (load_samples). None: each
    variant reads its runs' samples itself, with its statistics, in the report's worker
    processes when it has them (analysis/pool.py): one file per run where the artifacts
    are on this machine, while a remote store's are downloaded here first, as
    load_samples does. The same figures either way.
    """
    found: dict[tuple, SpeedGroup] = {}
    measured: dict[tuple, dict[str, list[Trial]]] = {}  # variant -> image -> ok trials
    for trial in trials_for(data.trials, "speed"):
        key = _variant(trial)
        group = found.get(key)
        if group is None:
            params = dict(key)
            group = found[key] = SpeedGroup(
                bench=params.get("bench", "?"), impl=params.get("impl", "?"),
                cell=params.get("cell", "lstm"), params=params)
        group.trials.setdefault(trial.image, []).append(trial)
        if trial.status == Status.OK and busy(trial) and not include_busy:
            group.busy.append(trial)
        elif trial.status == Status.OK:
            measured.setdefault(key, {}).setdefault(trial.image, []).append(trial)
    if samples is None:
        remote = [t for by_image in measured.values() for trials in by_image.values()
                  for t in trials if samples_file(t) is None]
        fetched = load_samples(remote) if remote else {}

        def source(trial: Trial) -> tuple[str | None, list[float] | None, float | None]:
            path = samples_file(trial)
            return (path, None if path else fetched.get(trial.run_id),
                    trial.metrics.get("ms_per_batch_median"))
    else:
        def source(trial: Trial) -> tuple[str | None, list[float] | None, float | None]:
            return None, samples.get(trial.run_id), trial.metrics.get("ms_per_batch_median")
    keys = sorted(found, key=lambda k: (found[k].bench, _impl_order(found[k].impl),
                                        found[k].cell, _variant_sort(found[k])))
    groups = [found[key] for key in keys]
    _label_variants(groups)
    # Each variant's samples and bootstraps are independent of the others': in the
    # report's worker processes when it has them (analysis/pool.py).
    jobs = [({image: [source(t) for t in trials]
              for image, trials in measured.get(key, {}).items()}, list(images), baseline)
            for key in keys]
    for group, (intervals, comparisons, medians) in zip(
            groups, pool.map_each(_speed_statistics, jobs), strict=True):
        group.intervals, group.comparisons, group.repeat_medians = intervals, comparisons, medians
    return groups


def _speed_statistics(job: tuple[dict[str, list[tuple[str | None, list[float] | None,
                                                       float | None]]], list[str], str],
                      ) -> tuple[dict[str, Interval], dict[str, Comparison],
                                 dict[str, list[float]]]:
    """One variant's intervals per image, comparisons to the baseline and each repeat's
    median, from (samples file, samples, recorded median) of each of its ok runs."""
    sources, images, baseline = job
    repeats: dict[str, list[list[float]]] = {}
    for image, entries in sources.items():
        for path, seconds, median in entries:
            if path is not None:
                seconds = read_samples_file(path)
            values = _milliseconds(seconds, median)
            if values:
                repeats.setdefault(image, []).append(values)
    intervals = {image: median_ci(repeats[image]) for image in images if image in repeats}
    base = repeats.get(baseline)
    comparisons = {} if base is None else {
        image: compare(base, repeats[image]) for image in images
        if image != baseline and image in repeats}
    medians = {image: [statistics.median(r) for r in values]
               for image, values in repeats.items()}
    return intervals, comparisons, medians


def _variant_sort(group: SpeedGroup) -> tuple:
    # Numbers as numbers, so batch_size=2 comes before batch_size=16.
    return tuple((key, _as_number(value)) for key, value in sorted(group.params.items()))


def _as_number(text: str) -> tuple[int, float, str]:
    try:
        return (0, float(text), "")
    except ValueError:
        return (1, 0.0, text)


def status_text(trials: Sequence[Trial]) -> str:
    """What happened to the trials of one cell, when none has a figure: e.g. "unsupported"."""
    counts = Counter(t.status for t in trials)
    if not counts:
        return "not in the sweep"
    return ", ".join(f"{n} {status}" for status, n in counts.most_common())


# --------------------------------------------------------------------------- the report


@dataclass
class ReportContext:
    """What every section builder needs."""

    data: SweepData
    images: list[str]
    baseline: str
    groups: list[SpeedGroup]
    references: list[ReferenceRow]
    chosen_by_user: bool = False
    torch: dict[str, str | None] = field(default_factory=dict)  # image -> torch version
    undecided: list[PlannedTrial] = field(default_factory=list)  # planned, no decided run
    csv: dict[str, render.CsvTable] = field(default_factory=dict)
    ui_url: str = ""  # the MLflow UI the report links to ("" : no links)

    def csv_table(self, name: str, columns: list[str]) -> render.CsvTable:
        table = self.csv.get(name)
        if table is None:
            table = self.csv[name] = render.CsvTable(name, columns, [])
        return table

    def url(self, run_id: str) -> str:
        """The run's page in the MLflow UI ("" when the report has no UI to link to)."""
        return run_url(self.ui_url, self.data.experiment_id, run_id) if self.ui_url else ""

    def link(self, text: str, run_id: str) -> str:
        """``text`` linked to the run's page (plain ``text`` without a UI)."""
        return render.link(text, self.url(run_id)) if self.ui_url else text

    def run_links(self, trials: Sequence[Trial], limit: int = 12) -> str:
        """Numbered links to each trial's run ("1 2 3"), for a row that sums several runs."""
        if not self.ui_url or not trials:
            return ""
        shown = " ".join(self.link(str(n), t.run_id)
                         for n, t in enumerate(trials[:limit], start=1))
        return shown + (f" +{len(trials) - limit}" if len(trials) > limit else "")


# --------------------------------------------------------------------------- sweeps


def sweeps_section(context: ReportContext) -> render.Section | None:
    """Which sweeps the report covers, each linked to its run; None for a single sweep
    (the subtitle names it)."""
    data = context.data
    sweeps = sorted(data.sweeps, key=lambda s: (s.started, s.run_id), reverse=True)
    if len(sweeps) < 2:
        return None
    section = render.Section("Sweeps")
    table = (render.link("runs table", experiment_url(context.ui_url, data.experiment_id))
             if context.ui_url else "")
    where = (f" Each links to its run in the MLflow UI at {context.ui_url} (the experiment's "
             f"{table})." if context.ui_url else "")
    section.blocks.append(render.Paragraph(
        f"This report pools the decided trials of {len(sweeps)} sweeps of experiment "
        f"`{data.experiment_name}`: a figure's repeats may come from different sweeps, and "
        "so from different times or machines (Provenance below says where they differ)."
        + where))
    statuses = [s for s in STATUSES if any(s in sweep.counts for sweep in sweeps)]
    statuses += sorted({k for sweep in sweeps for k in sweep.counts} - set(statuses))
    rows, csv = [], context.csv_table("sweeps", ["run_id", "name", "started_utc", "status",
                                                 "trials", *statuses, "url"])
    for sweep in sweeps:
        state = SWEEP_STATES.get(sweep.status.upper(), sweep.status.lower())
        total = sum(sweep.counts.values())
        rows.append([context.link(sweep.name or sweep.run_id[:8], sweep.run_id),
                     f"`{sweep.run_id[:8]}`", f"{sweep.started:%Y-%m-%d %H:%M}", state,
                     str(total)] + [str(sweep.counts.get(s, 0)) for s in statuses])
        csv.rows.append([sweep.run_id, sweep.name, f"{sweep.started:%Y-%m-%dT%H:%M:%SZ}",
                         sweep.status, total] + [sweep.counts.get(s, 0) for s in statuses]
                        + [context.url(sweep.run_id)])
    section.blocks.append(render.Table(
        ["sweep", "run id", "started (UTC)", "state", "decided trials", *statuses], rows,
        caption="The sweeps of this report, newest first",
        numeric=frozenset(["decided trials", *statuses])))
    return section


def summary_section(context: ReportContext) -> render.Section:
    """What was compared: images with their versions, trials per status, how to read it."""
    data = context.data
    section = render.Section("Summary")
    statuses = list(STATUSES)
    statuses += sorted({t.status for t in data.trials} - set(statuses))
    counts: dict[str, Counter] = defaultdict(Counter)
    for trial in data.trials:
        counts[trial.image][trial.status] += 1
    for planned in context.undecided:
        counts[planned.image][NOT_DECIDED] += 1
    if context.undecided:
        statuses.append(NOT_DECIDED)
    rows = []
    for image in all_images(context):
        torch = context.torch.get(image) or "?"
        name = f"{image} (baseline)" if image == context.baseline else image
        rows.append([name, torch, str(sum(counts[image].values()))]
                    + [str(counts[image][s]) for s in statuses])
    totals = sum(counts.values(), Counter())
    rows.append(["all", "", str(sum(totals.values()))] + [str(totals[s]) for s in statuses])
    backend = data.parent_tags.get("versweep.backend", "?")
    kind = "an Optuna search" if data.search else "a grid"
    ran = {t.image for t in data.trials if t.status == "ok"}
    skipped = [i for i in context.images[:context.images.index(context.baseline)]
               if i not in ran]
    why = ("named by `--baseline`" if context.chosen_by_user else
           "the oldest PyTorch of the sweep on which something ran; `--baseline` picks another")
    if len(context.images) == 1:
        section.blocks.append(render.Paragraph(
            f"Experiment `{data.experiment_name}`, {kind} run with the `{backend}` backend on "
            f"one image, **{context.baseline}**: nothing to compare across versions; the "
            "tables give its figures."))
    else:
        section.blocks.append(render.Paragraph(
            f"Experiment `{data.experiment_name}`, {kind} run with the `{backend}` backend. "
            f"Every image is compared with the baseline **{context.baseline}** ({why})."
            + (f" Older, but without a single finished trial: {', '.join(skipped)}."
               if skipped and not context.chosen_by_user else "")))
    order = data.parent_tags.get("versweep.trial_order")
    if order and order != "sampled":
        section.blocks.append(render.Paragraph(f"Trial order: {order}."))
    if context.ui_url:
        from sweeps.records.read import sqlite_file  # torch-free, mlflow-free

        db = sqlite_file(data.tracking_uri)
        serve = (f" (for this store: `mlflow ui --backend-store-uri {data.tracking_uri}`)"
                 if db is not None else "")
        section.blocks.append(render.Paragraph(
            "Every row links to its runs in the MLflow UI at "
            f"{render.link(context.ui_url, experiment_url(context.ui_url, data.experiment_id))}"
            f"{serve}; `--mlflow-ui URL` points the links elsewhere."))
    incomplete = completeness_caveat(context)
    if incomplete:
        section.blocks.append(render.Caveat(incomplete))
    if context.baseline not in ran:
        section.blocks.append(render.Caveat(
            f"nothing finished on the baseline {context.baseline}: every comparison is n/a; "
            "choose another with `--baseline`."))
    section.blocks.append(render.Table(
        ["image", "torch", "trials"] + statuses, rows,
        caption="Trials per image and status", numeric=frozenset(["trials", *statuses])))
    if not context.groups:
        return section
    section.blocks.append(render.Paragraph(
        "How to read the speed tables: each figure is the median of the repeats' median "
        "milliseconds per batch (every run one vote), with a 95% hierarchical bootstrap "
        "interval (repeats resampled, then batches within each repeat; `analysis/stats.py`). "
        "The ratio is this image's figure over the baseline's (below 1: faster), with the "
        "95% interval of the bootstrap ratios. An image is marked **faster** or **slower** "
        f"only when the difference is significant (bootstrap p < {ALPHA:g}) and beyond "
        f"{SPEED_THRESHOLD:.0%}; otherwise it is `~`, so run-to-run noise is never reported "
        "as a regression. `n/a`: one side has no measurement."))
    return section


def all_images(context: ReportContext) -> list[str]:
    """The compared images, then any image only the undecided planned trials name."""
    images = list(context.images)
    for planned in context.undecided:
        if planned.image not in images:
            images.append(planned.image)
    return images


def completeness_caveat(context: ReportContext) -> str:
    """One line when the sweep is not complete (its parent run not FINISHED, trials not
    decided, samples of a search missing); "" when it is."""
    data = context.data
    decided = len(data.trials)
    status = data.parent_status.upper()
    unfinished = (("a sweep of this report " if len(data.sweeps) > 1 else "this sweep ")
                  + PARENT_STATES.get(
        status, f"is not finished (its parent run is {status})")
        if status and status != "FINISHED" else "")
    missing = ""
    if context.undecided:
        missing = (f"{len(context.undecided)} of its {len(data.planned)} planned trials have "
                   f"no decided run (listed under Did not run as `{NOT_DECIDED}`)")
    elif data.trials_planned is not None and decided < data.trials_planned:
        missing = (f"{decided} of the {data.trials_planned} samples of its search "
                   "(`num_samples`) were decided" if data.search else
                   # A grid whose parent run keeps no plan: only the count tells.
                   f"{decided} of its {data.trials_planned} planned trials were decided "
                   "(the parent run keeps no trials.json naming the others)")
    if missing:
        return "; ".join(p for p in (unfinished, missing) if p) + (
            ": every figure here covers only the decided trials.")
    if unfinished:
        return unfinished + (", though every planned trial has a decided run."
                             if data.planned else ": trials may be missing from this report.")
    return ""


def speed_sections(context: ReportContext) -> list[render.Section]:
    """Per benchmark: a table per implementation, grouped bars and lines across versions."""
    if not context.groups:
        return []
    section = render.Section("Speed: milliseconds per batch")
    sections = [section]
    section.blocks.append(render.Paragraph(
        "rnn_bench (stefbraun/rnn_benchmarks' LSTM benchmarks): time per training batch "
        "(forward, backward, Adam step) after the warm-up batches. Lower is better."))
    left_out = [t for g in context.groups for t in g.busy]
    if left_out:
        section.blocks.append(render.Caveat(
            f"{len(left_out)} timing trial(s) ran while other work kept the node's CPUs busy "
            f"(more than {BUSY_MARGIN_CPUS:g} CPU beyond their own threads, the "
            "versweep.busy_cpus tag) and are left out of every figure below: "
            + ", ".join(sorted(f"`{t.name}`" for t in left_out)[:12])
            + (" ..." if len(left_out) > 12 else "")
            + ". `--include-busy` keeps them."))
    csv = context.csv_table("speed", [
        "bench", "impl", "cell", "variant", "image", "torch", "baseline", "n_repeats",
        "n_samples", "median_ms", "ci_low_ms", "ci_high_ms", "ratio", "ratio_low",
        "ratio_high", "p_value", "mark", "status"])
    references = _references_by(context)
    for bench in sorted({g.bench for g in context.groups}):
        groups = [g for g in context.groups if g.bench == bench]
        sub = render.Section(f"{bench}", level=3)
        sections.append(sub)
        for group in groups:
            sub.blocks.append(_speed_table(context, group, references, csv))
        names = [g.label.removeprefix(bench + " ") for g in groups]
        sub.blocks.append(render.Figure(
            title=f"{bench}: milliseconds per batch per implementation and version",
            png=pool.later(
                plots.grouped_bars,
                f"{bench}: milliseconds per batch (lower is better)", names,
                {image: [_bar(g.intervals.get(image)) for g in groups]
                 for image in context.images}),
            filename=f"speed_bars_{slug(bench)}.png",
            caption="Median of the repeats' median ms per batch; error bars: 95% bootstrap "
                    "interval. A missing bar (n/a) did not run: see Did not run."))
        if len(context.images) > 1:
            sub.blocks.append(render.Figure(
                title=f"{bench}: speed across versions",
                png=pool.later(
                    plots.lines_across_versions,
                    f"{bench}: milliseconds per batch across versions", context.images,
                    {name: [_bar(g.intervals.get(i)) for i in context.images]
                     for name, g in zip(names, groups, strict=True)}),
                filename=f"speed_lines_{slug(bench)}.png",
                caption="The same medians as lines over the images, oldest PyTorch first; "
                        "whiskers: 95% interval."))
    return sections


def _bar(interval: Interval | None) -> plots.Bar:
    if interval is None:
        return plots.Bar(None)
    return plots.Bar(interval.estimate, interval.low, interval.high)


def _speed_table(context: ReportContext, group: SpeedGroup,
                 references: Mapping[tuple[str, str], list[ReferenceRow]],
                 csv: render.CsvTable) -> render.Table:
    rows = []
    variant = ", ".join(f"{k}={v}" for k, v in sorted(group.params.items())
                        if k in ("batch_size", "seq_len", "hidden_size", "num_layers"))
    for image in context.images:
        trials = group.trials.get(image, [])
        interval = group.intervals.get(image)
        comparison = group.comparisons.get(image)
        torch = context.torch.get(image) or ""
        runs = context.run_links(trials)
        if interval is None:
            why = status_text(trials)
            rows.append([image, torch, "n/a", "n/a", "n/a", "0", "0", why, runs])
            csv.rows.append([group.bench, group.impl, group.cell, group.label, image, torch,
                             context.baseline, 0, 0, None, None, None, None, None, None, None,
                             "n/a", why])
            continue
        if image == context.baseline:
            ratio_text, mark = "1 (baseline)", "baseline"
            ratio = low = high = p_value = None
        elif comparison is None:
            ratio_text, mark = "n/a", "n/a"
            ratio = low = high = p_value = None
        else:
            ratio_text, mark = format_ratio(comparison), comparison.mark
            ratio, low, high, p_value = (comparison.ratio, comparison.low, comparison.high,
                                         comparison.p_value)
        status = status_text(trials)
        rows.append([image, torch, format_interval(interval), ratio_text, format_mark(mark),
                     str(interval.n_repeats), str(interval.n_samples), status, runs])
        csv.rows.append([group.bench, group.impl, group.cell, group.label, image, torch,
                         context.baseline, interval.n_repeats, interval.n_samples,
                         interval.estimate, interval.low, interval.high, ratio, low, high,
                         p_value, mark, status])
    if group.shape_matches_seed:
        for reference in references.get((group.bench, group.impl), []):
            rows.append([f"GTX 1080 reference: PyTorch {reference.version}", reference.version,
                         format_interval(reference.interval), "", "reference",
                         str(reference.interval.n_repeats), str(reference.interval.n_samples),
                         "stefbraun/rnn_benchmarks", ""])
    caption = f"**{group.label}**" + (f" ({variant})" if variant else "")
    return render.Table(
        ["image", "torch", "median ms/batch [95% CI]", "ratio to baseline [95% CI]", "mark",
         "repeats", "batches", "trials", *(["runs"] if context.ui_url else [])], rows,
        caption=caption,
        numeric=frozenset(["median ms/batch [95% CI]", "ratio to baseline [95% CI]",
                           "repeats", "batches"]))


def _references_by(context: ReportContext) -> dict[tuple[str, str], list[ReferenceRow]]:
    found: dict[tuple[str, str], list[ReferenceRow]] = defaultdict(list)
    for row in context.references:
        found[(row.bench, row.impl)].append(row)
    for rows in found.values():
        rows.sort(key=lambda r: version_tuple(r.version))
    return found


def reference_sections(context: ReportContext) -> list[render.Section]:
    """The seed's own figures: PyTorch 0.1.12 to 0.4.0 on a GTX 1080, with their source.

    Only for the benchmarks this sweep ran at the seed's own shapes: anywhere else they
    compare with nothing here.
    """
    matched = {g.bench for g in context.groups if g.shape_matches_seed}
    references = [row for row in context.references if row.bench in matched]
    if not references:
        return []
    section = render.Section("Reference: the seed's GTX 1080 figures")
    source = references[0].source
    section.blocks.append(render.Paragraph(
        f"Measured by the seed project, not by this sweep: {source}. Median milliseconds per "
        "batch after its 100 warm-up batches, with a 95% bootstrap interval over the 400 "
        "timed batches. A different GPU and different versions: read them as orientation, "
        "not as a baseline. Shown for the benchmarks this sweep ran at the seed's own "
        f"shapes ({', '.join(sorted(matched))}), whose speed tables above also carry the "
        "rows."))
    csv = context.csv_table("reference", ["bench", "impl", "version", "gpu", "n_samples",
                                          "median_ms", "ci_low_ms", "ci_high_ms", "source"])
    by_bench: dict[str, list[ReferenceRow]] = defaultdict(list)
    for row in references:
        by_bench[row.bench].append(row)
        csv.rows.append([row.bench, row.impl, row.version, row.gpu, row.interval.n_samples,
                         row.interval.estimate, row.interval.low, row.interval.high,
                         row.source])
    for bench in sorted(by_bench):
        rows = by_bench[bench]
        impls = sorted({r.impl for r in rows}, key=_impl_order)
        versions = sorted({r.version for r in rows}, key=version_tuple)
        cell = {(r.impl, r.version): r for r in rows}
        table_rows = [[impl] + [format_interval(cell[(impl, v)].interval)
                                if (impl, v) in cell else "not measured" for v in versions]
                      for impl in impls]
        section.blocks.append(render.Table(
            ["impl"] + [f"PyTorch {v}" for v in versions], table_rows,
            caption=f"**{bench}** on a {rows[0].gpu}: median ms/batch [95% CI]",
            numeric=frozenset(f"PyTorch {v}" for v in versions)))
        section.blocks.append(render.Figure(
            title=f"{bench} on a GTX 1080 (stefbraun/rnn_benchmarks)",
            png=pool.later(
                plots.grouped_bars,
                f"{bench}: PyTorch versions on a {rows[0].gpu} (seed's measurements)",
                impls,
                {f"PyTorch {v}": [_bar(cell[(i, v)].interval if (i, v) in cell else None)
                                  for i in impls] for v in versions}),
            filename=f"reference_{slug(bench)}.png",
            caption=f"Source: {source}."))
    return [section]


def _impl_order(impl: str) -> tuple[int, str]:
    order = {"basic": 0, "fused": 1, "cudnn": 2, "compiled": 3}
    return order.get(impl, 9), impl


# --------------------------------------------------------------------------- language model


def lm_variants(trials: Iterable[Trial]) -> dict[tuple, list[Trial]]:
    found: dict[tuple, list[Trial]] = defaultdict(list)
    for trial in trials_for(trials, "language_model"):
        found[_variant(trial)].append(trial)
    return found


def lm_label(params: Mapping[str, str], differing: Sequence[str]) -> str:
    label = f"ptb_lm {params.get('preset', 'custom')}"
    if differing:
        label += " (" + ", ".join(f"{k}={params.get(k)}" for k in differing) + ")"
    return label


def language_model_sections(context: ReportContext) -> list[render.Section]:
    """ptb_lm per image: perplexities and speed over seeds, the parity check, learning curves."""
    variants = lm_variants(context.data.trials)
    if not variants:
        return []
    section = render.Section("Language model: perplexity and words per second")
    sections = [section]
    section.blocks.append(render.Paragraph(
        "ptb_lm (the PTB word-level LSTM language model): mean ± standard deviation over the "
        "seeds (repeats) of each image. The parity check asks whether an image's test "
        "perplexity differs from the baseline's by more than the seed-to-seed noise of the "
        "same config (`analysis/stats.py`, `parity`); with a single seed per side it says "
        "so instead of guessing."))
    if any(env_value(t, "data.synthetic") == "true" for ts in variants.values() for t in ts):
        section.blocks.append(render.Caveat(
            "some ptb_lm trials ran on the synthetic corpus (no PTB data directory was given): "
            "their perplexities check the pipeline and parity between versions, not the "
            "published PTB figures."))
    csv = context.csv_table("language_model", [
        "variant", "image", "torch", "n_ok", "n_trials", "test_perplexity_mean",
        "test_perplexity_std", "best_valid_perplexity_mean", "best_valid_perplexity_std",
        "words_per_second_mean", "words_per_second_std", "parity_diff", "parity_p_value",
        "parity_verdict"])
    keys = list(variants)
    all_params = [dict(k) for k in keys]
    differing = sorted(k for k in (all_params[0] if all_params else {})
                       if len({p.get(k) for p in all_params}) > 1)
    for key in sorted(keys):
        trials = variants[key]
        params = dict(key)
        label = lm_label(params, differing)
        sub = render.Section(label, level=3)
        sections.append(sub)
        ok = defaultdict(list)
        for trial in trials:
            if trial.status == "ok":
                ok[trial.image].append(trial)
        tests = {image: [t.metrics["test_perplexity"] for t in runs
                         if finite(t.metrics.get("test_perplexity"))]
                 for image, runs in ok.items()}
        tests = {image: values for image, values in tests.items() if values}
        verdicts = parity(tests, context.baseline) if context.baseline in tests else {}
        rows = []
        for image in context.images:
            runs = ok.get(image, [])
            all_runs = [t for t in trials if t.image == image]
            if not all_runs:
                continue
            values = {name: [t.metrics[name] for t in runs if finite(t.metrics.get(name))]
                      for name in ("test_perplexity", "best_valid_perplexity",
                                   "words_per_second")}
            verdict = verdicts.get(image)
            if image == context.baseline:
                parity_text = "baseline"
            elif verdict is None:
                parity_text = "n/a"
            else:
                parity_text = format_mark(verdict.verdict)
                if verdict.verdict != "too few repeats":
                    parity_text += f" (Δ {verdict.diff:+.2f}" + (
                        f", p={verdict.p_value:.2g})" if verdict.p_value is not None else ")")
            rows.append([image, context.torch.get(image) or "",
                         f"{len(runs)}/{len(all_runs)}",
                         _mean_std_text(values["test_perplexity"]),
                         _mean_std_text(values["best_valid_perplexity"]),
                         _mean_std_text(values["words_per_second"], 5), parity_text,
                         context.run_links(all_runs)])
            test_mean, test_std = mean_std(values["test_perplexity"])
            valid_mean, valid_std = mean_std(values["best_valid_perplexity"])
            wps_mean, wps_std = mean_std(values["words_per_second"])
            csv.rows.append([label, image, context.torch.get(image) or "", len(runs),
                             len(all_runs), test_mean, test_std, valid_mean, valid_std,
                             wps_mean, wps_std, verdict.diff if verdict else None,
                             verdict.p_value if verdict else None,
                             verdict.verdict if verdict else
                             ("baseline" if image == context.baseline else "n/a")])
        sub.blocks.append(render.Table(
            ["image", "torch", "ok/trials", "test perplexity", "best valid perplexity",
             "words/s", "parity vs baseline", *(["runs"] if context.ui_url else [])], rows,
            numeric=frozenset(["ok/trials", "test perplexity", "best valid perplexity",
                               "words/s"])))
        published = next((env_value(t, "reference_perplexity.test") for t in trials
                          if env_value(t, "reference_perplexity.test")), None)
        if published:
            where = next(env_value(t, "reference_perplexity.source") for t in trials
                         if env_value(t, "reference_perplexity.test"))
            sub.blocks.append(render.Paragraph(
                f"Published test perplexity of the full `{params.get('preset', '?')}` preset "
                f"on PTB: {published} ({where}); comparable only where this sweep ran the "
                "preset unchanged on the real corpus."))
        curves = _curves(context, trials, "valid_perplexity", MAX_CURVES_PER_IMAGE)
        if curves:
            sub.blocks.append(render.Figure(
                title=f"{label}: validation perplexity per epoch",
                png=pool.later(plots.learning_curves,
                                f"{label}: validation perplexity per epoch", curves,
                                ylabel="validation perplexity"),
                filename=f"learning_curves_{slug(label)}.png",
                caption=f"One line per run (at most {MAX_CURVES_PER_IMAGE} seeds per image), "
                        "one colour per image; the seeds of one image in turn solid, dashed, "
                        "dotted, dash-dot."))
    return sections


def workload_plugins(trials: Iterable[Trial]) -> dict[str, Workload]:
    """The plug-in of every workload among ``trials`` (sweeps/workloads).

    A user's own workload is loaded from the directory its runs name
    (``versweep.workload_dir``); where that is gone, its trials still get the generic
    metrics section, from what the runs themselves recorded.
    """
    found: dict[str, Workload] = {}
    for trial in trials:
        if trial.workload in found:
            continue
        try:
            found[trial.workload] = workloads.get(trial.workload,
                                                  trial.tags.get("versweep.workload_dir"))
        except UserError:
            found[trial.workload] = Workload(name=trial.workload, description="",
                                             metrics=(), report_sections=("metrics",))
    return found


def trials_for(trials: Iterable[Trial], section: str) -> list[Trial]:
    """The trials whose workload's plug-in asks for ``section`` (one of REPORT_SECTIONS)."""
    trials = list(trials)
    plugins = workload_plugins(trials)
    return [t for t in trials if section in plugins[t.workload].report_sections]


def metrics_sections(context: ReportContext, plugin: Workload) -> list[render.Section]:
    """Any workload: each result metric per image, mean ± std over repeats, per variant.

    The generic section a workload of one's own gets (report_sections = ("metrics",)):
    one table per variant (the config without the seed), one row per image, one column
    per metric the runs recorded, its unit and direction from the plug-in where it says.
    """
    trials = [t for t in context.data.trials if t.workload == plugin.name]
    if not trials:
        return []
    section = render.Section(f"{plugin.name}: results per image")
    sections = [section]
    section.blocks.append(render.Paragraph(
        f"{plugin.name}" + (f" ({plugin.description})" if plugin.description else "")
        + ": mean ± standard deviation over the repeats of each image, `ok` trials only; "
          "↓ marks a metric where lower is better, ↑ where higher is."))
    names = sorted({name for t in trials if t.status == "ok" for name in t.metrics})
    declared = [m.name for m in plugin.metrics if m.in_result]
    names = [n for n in declared if n in names] + [n for n in names if n not in declared]
    csv = context.csv_table(f"metrics_{slug(plugin.name)}", [
        "variant", "image", "torch", "n_ok", "n_trials",
        *(f"{n}_{part}" for n in names for part in ("mean", "std"))])
    variants: dict[tuple, list[Trial]] = defaultdict(list)
    for trial in trials:
        variants[tuple(sorted((k, v) for k, v in trial.params.items()
                              if k not in REPEAT_PARAMS))].append(trial)
    all_params = [dict(k) for k in variants]
    differing = sorted(k for k in (all_params[0] if all_params else {})
                       if len({p.get(k) for p in all_params}) > 1)

    def heading(name: str) -> str:
        metric = plugin.metric(name)
        arrow = {"lower": " ↓", "higher": " ↑"}.get(metric.better, "") if metric else ""
        return (metric.shown if metric else name) + arrow

    for key in sorted(variants):
        params = dict(key)
        label = " ".join([plugin.name, *(f"{k}={params[k]}" for k in differing)])
        sub = render.Section(label, level=3)
        sections.append(sub)
        rows = []
        for image in context.images:
            all_runs = [t for t in variants[key] if t.image == image]
            if not all_runs:
                continue
            runs = [t for t in all_runs if t.status == "ok"]
            values = {n: [t.metrics[n] for t in runs if finite(t.metrics.get(n))]
                      for n in names}
            rows.append([image, context.torch.get(image) or "", f"{len(runs)}/{len(all_runs)}",
                         *(_mean_std_text(values[n]) for n in names)])
            stats = [x for n in names for x in mean_std(values[n])]
            csv.rows.append([label, image, context.torch.get(image) or "", len(runs),
                             len(all_runs), *stats])
        shown = [heading(n) for n in names]
        sub.blocks.append(render.Table(["image", "torch", "ok/trials", *shown], rows,
                                       numeric=frozenset(["ok/trials", *shown])))
    return sections


def finite(value: float | None) -> bool:
    return value is not None and math.isfinite(value)


def _histories(context: ReportContext, trials: Sequence[Trial],
               key: str) -> dict[str, list[tuple[int, float]]]:
    """run id -> (step, value) of ``key`` for every trial, read in one go."""
    if not trials:
        return {}
    return metric_histories(context.data.tracking_uri, [t.run_id for t in trials], key)


def _curves(context: ReportContext, trials: Sequence[Trial], key: str,
            per_image: int) -> dict[str, list[list[tuple[int, float]]]]:
    chosen = {image: [t for t in trials if t.image == image
                      and t.status in CURVE_STATUSES][:per_image]
              for image in context.images}
    histories = _histories(context, [t for runs in chosen.values() for t in runs], key)
    # Every image keeps its key (empty when nothing ran), so it keeps its colour: the
    # same image is the same colour here as in the speed figures.
    curves = {image: [histories[t.run_id] for t in runs if histories.get(t.run_id)]
              for image, runs in chosen.items()}
    return curves if any(curves.values()) else {}


# --------------------------------------------------------------------------- search


def _lower_is_better(metric: str) -> bool:
    return not any(word in metric for word in ("per_second", "accuracy", "throughput"))


def search_sections(context: ReportContext) -> list[render.Section]:
    """An Optuna search: best config per image, importances, Optuna's figures of its study
    (analysis/search_figures.py: slice, history, parallel coordinates), early stops."""
    data = context.data
    language_model = {id(t) for t in trials_for(data.trials, "language_model")}
    trials = [t for t in data.trials if t.params or id(t) in language_model]
    if not trials:
        return []
    metric = (data.search_metric or data.parent_tags.get("versweep.best.metric")
              or "valid_perplexity")
    lower = data.search_mode != "max" if data.search_mode else _lower_is_better(metric)
    section = render.Section("Hyper-parameter search")
    sections = [section]
    searched = list(data.search_space) or sorted(
        k for k in {k for t in trials for k in t.params}
        if k not in REPEAT_PARAMS and len({t.params.get(k) for t in trials}) > 1)
    scored = [t for t in trials if t.status == "ok" and finite(t.metrics.get(metric))]
    section.blocks.append(render.Paragraph(
        f"{len(trials)} trials searched {', '.join(f'`{p}`' for p in searched) or 'nothing'}; "
        f"judged by `{metric}` ({'lower' if lower else 'higher'} is better) of the trials that "
        f"finished ({len(scored)}); trials stopped early are listed below."))

    best_rows, best_csv = [], context.csv_table(
        "search_best", ["image", "metric", "value", "run_id", "name", *searched])
    for image in context.images:
        candidates = [t for t in scored if t.image == image]
        if not candidates:
            continue
        pick = min if lower else max
        best = pick(candidates, key=lambda t: t.metrics[metric])
        best_rows.append([image, format_value(best.metrics[metric]),
                          context.link(_run_label(best), best.run_id)]
                         + [best.params.get(p, "") for p in searched])
        best_csv.rows.append([image, metric, best.metrics[metric], best.run_id, best.name]
                             + [best.params.get(p, "") for p in searched])
    if best_rows:
        section.blocks.append(render.Table(
            ["image", metric, "run", *searched], best_rows,
            caption="Best configuration per image", numeric=frozenset([metric])))

    study = search_figures.searched_study(data, trials, metric, lower)
    _search_trials_csv(context, study, searched)
    importance, no_importance = _importances(study)
    if importance:
        section.blocks.append(render.Table(
            ["parameter", "importance"],
            [[name, f"{value:.3f}"] for name, value in importance.items()],
            caption="Parameter importance (Optuna, fANOVA over the completed trials)",
            numeric=frozenset(["importance"])))
        context.csv_table("search_importance", ["parameter", "importance"]).rows.extend(
            [name, value] for name, value in importance.items())
    else:
        instead = (f" The figures below show how `{metric}` moves with each parameter "
                   "instead." if study.best is not None else "")
        section.blocks.append(render.Paragraph(
            f"No parameter importances: {no_importance}.{instead}"))
    section.blocks.extend(_search_figures(study))

    stopped = [t for t in trials if t.status == "stopped"]
    stop_csv = context.csv_table("search_stopped", ["run_id", "name", "image", "epochs",
                                                    f"last_{metric}", "message"])
    if stopped:
        rows = []
        stopped_histories = _histories(context, stopped, metric)
        for trial in stopped:
            history = stopped_histories.get(trial.run_id, [])
            last = history[-1][1] if history else trial.metrics.get(metric)
            epochs = history[-1][0] if history else None
            rows.append([context.link(_run_label(trial), trial.run_id), trial.image,
                         str(epochs) if epochs is not None else "?",
                         format_value(last), trial.message or ""])
            stop_csv.rows.append([trial.run_id, trial.name, trial.image, epochs, last,
                                  trial.message])
        section.blocks.append(render.Table(
            ["trial", "image", "epochs run", f"last {metric}", "why"], rows,
            caption=f"Trials stopped early ({len(stopped)})",
            numeric=frozenset(["epochs run", f"last {metric}"])))
    else:
        section.blocks.append(render.Paragraph("No trial was stopped early."))

    curves: dict[str, list[list[tuple[int, float]]]] = {}
    for label, status in (("finished", "ok"), ("stopped early", "stopped")):
        runs = [t for t in trials if t.status == status][:MAX_SEARCH_CURVES]
        histories = _histories(context, runs, metric)
        drawn = [histories[t.run_id] for t in runs if histories.get(t.run_id)]
        if drawn:
            curves[label] = drawn
    if curves:
        section.blocks.append(render.Figure(
            title=f"search: {metric} per epoch",
            png=plots.learning_curves(f"Search: {metric} per epoch, finished and stopped trials",
                                      curves, ylabel=metric.replace("_", " "),
                                      legend_title="trials"),
            filename="search_curves.png",
            caption=f"At most {MAX_SEARCH_CURVES} runs per kind; stopped runs end early. Where "
                    f"the values span more than {plots.LOG_SCALE_SPAN:g}x, the scale is "
                    "logarithmic."))
    return sections


def _run_label(trial: Trial) -> str:
    """A trial's name with the start of its run id: search trials share their names."""
    return f"{trial.name} (`{trial.run_id[:8]}`)"


def _importances(search: search_figures.SearchStudy) -> tuple[dict[str, float], str]:
    """Optuna's fANOVA parameter importances of the search's study, and "" ; or {} and why not.

    fANOVA fits scikit-learn random forests, and scikit-learn is not a dependency of
    versweep: without it (or when the evaluator fails on this study) the report says
    so and keeps the figures, which need nothing more.
    """
    import optuna  # the search's own library; only a search's report needs it

    complete = search.complete
    if len(complete) < 2:
        return {}, (f"Optuna needs at least two completed trials, the search has "
                    f"{len(complete)}")
    try:
        evaluator = optuna.importance.FanovaImportanceEvaluator(seed=0)  # deterministic
        values = optuna.importance.get_param_importances(search.study, evaluator=evaluator)
    except ImportError:
        return {}, ("Optuna's fANOVA evaluator needs scikit-learn, which is not installed "
                    "(`pip install scikit-learn` adds them)")
    except Exception as exc:  # noqa: BLE001  (importances are an extra: say why, keep going)
        return {}, f"Optuna's fANOVA evaluator failed on this study ({_one_line(str(exc), 200)})"
    return {name: float(value) for name, value in values.items()}, ""


# The search's figures: (file, title, what it shows), drawn by analysis/search_figures.py.
SEARCH_FIGURES = (
    ("search_slice.png", search_figures.slice_figure, "search: objective per parameter",
     "Each point is a finished trial, coloured by its number (later: darker); each panel is "
     "one searched parameter on its search-space scale (a log-uniform one on a log axis)."),
    ("search_history.png", search_figures.history_figure, "search: optimisation history",
     "Each finished trial's objective in the order Optuna asked for it, and the best so far."),
    ("search_parallel.png", search_figures.parallel_figure, "search: parallel coordinates",
     "One line per finished trial through its objective (first axis) and each searched "
     "parameter, coloured by the objective."),
)


def _search_figures(search: search_figures.SearchStudy) -> list[render.Block]:
    """Optuna's slice, history and parallel-coordinate plots, the best trial marked."""
    best = search.best
    if best is None:
        ended = ", ".join(search_figures.not_drawn(search)) or "none ran"
        return [render.Paragraph(
            f"No search figures: none of the {len(search.study.trials)} trials of its study "
            f"finished with a `{search.metric}` ({ended}).")]
    marked = (f" The star (a red line in the parallel coordinates) is the best trial, "
              f"#{best.number} ({search.metric} {format_value(best.value)}, run "
              f"`{str(best.user_attrs.get(search_figures.RUN_ID_ATTR, ''))[:8]}`).")
    note = " " + search_figures.figure_note(search)
    blocks: list[render.Block] = []
    for filename, draw, title, what in SEARCH_FIGURES:
        figure = draw(search)
        if figure is not None:
            blocks.append(render.Figure(title=title, png=plots.png(figure), filename=filename,
                                        caption=what + marked + note))
    return blocks


def _search_trials_csv(context: ReportContext, search: search_figures.SearchStudy,
                       searched: Sequence[str]) -> None:
    """search_trials.csv: every run of the search, its sampled values and its objective."""
    runs = {t.run_id: t for t in context.data.trials}
    names = list(searched) or search.params
    csv = context.csv_table("search_trials", ["trial", "run_id", "name", "status",
                                              "optuna_state", *names, search.metric,
                                              "best", "url"])
    best = search.best
    for frozen in search.study.trials:
        run_id = str(frozen.user_attrs.get(search_figures.RUN_ID_ATTR, ""))
        run = runs.get(run_id)
        csv.rows.append([frozen.number, run_id, run.name if run else "",
                         frozen.user_attrs.get(search_figures.STATUS_ATTR, ""),
                         frozen.state.name, *(frozen.params.get(n) for n in names),
                         run.metrics.get(search.metric) if run else frozen.value,
                         best is not None and frozen.number == best.number,
                         context.url(run_id)])
    for run, why in search.left_out:
        csv.rows.append(["", run.run_id, run.name, run.status, f"not drawn: {why}",
                         *(run.params.get(n) for n in names), run.metrics.get(search.metric),
                         False, context.url(run.run_id)])


# --------------------------------------------------------------------------- did not run


def did_not_run_sections(context: ReportContext) -> list[render.Section]:
    """The matrix workload x image with every status and numbered reasons; nothing dropped."""
    data = context.data
    section = render.Section("Did not run")
    not_ok = [t for t in data.trials if t.status != "ok"]
    undecided = context.undecided
    csv = context.csv_table("did_not_run", ["run_id", "name", "workload", "image", "repeat",
                                            "status", "reason", "sweep_id", "url"])
    for trial in not_ok:
        csv.rows.append([trial.run_id, trial.name, trial.workload, trial.image, trial.repeat,
                         trial.status, trial.message, trial.sweep_id, context.url(trial.run_id)])
    for planned in undecided:
        csv.rows.append(["", planned.name, planned.workload, planned.image, planned.repeat,
                         NOT_DECIDED, NOT_DECIDED_REASON, planned.sweep_id,
                         context.url(planned.sweep_id)])
    search_note = ""
    if data.search and data.trials_planned is not None and len(data.trials) < data.trials_planned:
        # A search has no fixed plan: only the number of samples it was to decide.
        search_note = (f" The search was to decide {data.trials_planned} samples "
                       f"(`num_samples`); {len(data.trials)} were decided, so "
                       f"{data.trials_planned - len(data.trials)} never ran to a decision.")
    if not not_ok and not undecided:
        section.blocks.append(render.Paragraph(
            f"Every one of the {len(data.trials)} trials ran to the end (`ok`)." + search_note))
        return [section]
    planned_text = (f"{len(undecided)} of the {len(data.planned)} planned trials have no "
                    f"decided run at all (`{NOT_DECIDED}`: the sweep was interrupted or is "
                    "still running). " if undecided else "")
    statuses_text = ("`unsupported` (this torch or GPU cannot run it), `failed` (a crash, bad "
                     "config or timeout), `diverged` (non-finite loss) or `stopped` (stopped "
                     "early by the scheduler)")
    decided_text = (f"{len(not_ok)} of {len(data.trials)} decided trials have no result: "
                    f"{statuses_text}. " if not_ok else
                    f"Every one of the {len(data.trials)} decided trials ran to the end (`ok`). ")
    section.blocks.append(render.Paragraph(
        planned_text + decided_text + "Each cell counts the trials of a workload on an image; "
        "[n] points to the reason below." + search_note))
    reasons: dict[tuple[str, str], int] = {}
    reason_trials: Counter = Counter()
    reason_runs: dict[int, list[Trial]] = defaultdict(list)
    cells: dict[tuple[str, str], Counter] = defaultdict(Counter)
    cell_reasons: dict[tuple[str, str], set[int]] = defaultdict(set)
    labels: list[str] = []
    for trial in data.trials:
        label = trial.name.split(" @ ")[0] if " @ " in trial.name else trial.workload
        if label not in labels:
            labels.append(label)
        cells[(label, trial.image)][trial.status] += 1
        if trial.status != "ok":
            why = _one_line(trial.message) or "(no reason recorded)"
            number = reasons.setdefault((trial.status, why), len(reasons) + 1)
            reason_trials[number] += 1
            reason_runs[number].append(trial)
            cell_reasons[(label, trial.image)].add(number)
    for planned in undecided:
        label = planned.name.split(" @ ")[0] if " @ " in planned.name else planned.workload
        if label not in labels:
            labels.append(label)
        cells[(label, planned.image)][NOT_DECIDED] += 1
        number = reasons.setdefault((NOT_DECIDED, NOT_DECIDED_REASON), len(reasons) + 1)
        reason_trials[number] += 1
        cell_reasons[(label, planned.image)].add(number)
    columns = all_images(context)
    rows = []
    for label in sorted(labels):
        row = [label]
        for image in columns:
            counts = cells.get((label, image))
            if not counts:
                row.append("")
                continue
            text = ", ".join(f"{n} {status}" for status, n in sorted(
                counts.items(), key=lambda item: (item[0] != "ok", item[0])))
            notes = sorted(cell_reasons.get((label, image), ()))
            row.append(text + ("".join(f" [{n}]" for n in notes)))
        rows.append(row)
    section.blocks.append(render.Table(["workload", *columns], rows,
                                       caption="Trials per workload and image"))
    section.blocks.append(render.Table(
        ["[n]", "status", "reason", "trials", *(["runs"] if context.ui_url else [])],
        [[f"[{number}]", status, why, str(reason_trials[number]),
          context.run_links(reason_runs[number])]
         for (status, why), number in sorted(reasons.items(), key=lambda item: item[1])],
        caption="Reasons", numeric=frozenset(["trials"])))
    return [section]


def _one_line(text: str, limit: int = 300) -> str:
    line = " ".join((text or "").split())
    return line if len(line) <= limit else line[:limit - 3] + "..."


# --------------------------------------------------------------------------- provenance


def _distinct(trials: Iterable[Trial], read) -> dict[str, int]:
    found: Counter = Counter()
    for trial in trials:
        value = read(trial)
        if value is not None:
            found[value] += 1
    return dict(found)


def _joined(values: Mapping[str, int]) -> str:
    return " / ".join(values) if values else ""


def provenance_sections(context: ReportContext) -> list[render.Section]:
    """Per image what exactly ran, and warnings where compared runs differ in anything else."""
    data = context.data
    section = render.Section("Provenance")
    by_image: dict[str, list[Trial]] = defaultdict(list)
    for trial in data.trials:
        by_image[trial.image].append(trial)
    flag_names = sorted({k[len("versweep.env.flags."):] for t in data.trials for k in t.tags
                         if k.startswith("versweep.env.flags.")})
    columns = ["image", "digest", "torch", "CUDA", "cuDNN", "Python", "GPU", "driver", "host",
               "flags"]
    csv = context.csv_table("provenance", ["image", "field", "value", "trials"])
    rows = []
    for image in context.images:
        trials = by_image.get(image, [])
        digest = _distinct(trials, lambda t: tag(t, "versweep.image_digest"))
        fields = {name: _distinct(trials, lambda t, n=name: env_value(t, n))
                  for name in ("torch", "cuda", "cudnn", "python", "gpu", "driver", "host",
                               "capability", "device")}
        flags = {name: _distinct(trials, lambda t, n=name: env_value(t, f"flags.{n}"))
                 for name in flag_names}
        rows.append([image, _joined({_short_digest(d): n for d, n in digest.items()}),
                     _joined(fields["torch"]), _joined(fields["cuda"]) or "none",
                     _joined(fields["cudnn"]) or "none", _joined(fields["python"]),
                     _joined(fields["gpu"]) or _joined(fields["device"]),
                     _joined(fields["driver"]), _joined(fields["host"]),
                     ", ".join(f"{n}={_joined(v)}" for n, v in flags.items() if v)])
        for name, values in [("image_digest", digest), *fields.items(),
                             *((f"flags.{n}", v) for n, v in flags.items())]:
            for value, count in values.items():
                csv.rows.append([image, name, value, count])
        if not any(fields.values()):
            rows[-1][2] = "(no trial reached the worker)"
    section.blocks.append(render.Table(columns, rows, caption="What each image ran with"))
    warnings = provenance_warnings(context, by_image, flag_names)
    section.blocks[0:0] = [render.Caveat(text) for text in warnings]
    if not warnings:
        section.blocks.insert(0, render.Paragraph(
            "The compared runs agree in everything that is not the image (GPU, driver, "
            "host, numeric flags)."))
    return [section]


def _short_digest(digest: str) -> str:
    return digest if len(digest) <= 19 else digest[:19] + "…"


def provenance_warnings(context: ReportContext, by_image: Mapping[str, Sequence[Trial]],
                        flag_names: Sequence[str]) -> list[str]:
    """One line per thing that differs between compared runs but is not the image."""
    warnings = []
    checks = [(name, what) for name, what in MACHINE_FIELDS.items()]
    checks += [(f"flags.{name}", f"numeric flag {name}") for name in flag_names]
    # Per image, the trials whose worker reported its environment (counted once, not per check).
    reached_by_image = {image: sum(1 for t in by_image.get(image, [])
                                   if any(k.startswith("versweep.env.") for k in t.tags))
                        for image in context.images}
    for name, what in checks:
        seen: dict[str, list[str]] = defaultdict(list)
        for image in context.images:
            trials = by_image.get(image, [])
            counts = _distinct(trials, lambda t, n=name: env_value(t, n))
            reached = reached_by_image[image]
            for value, count in counts.items():
                seen[value].append(image if count == reached else
                                   f"{image} ({count} of {reached} trials)")
        if len(seen) > 1:
            where = "; ".join(f"{value} on {', '.join(images)}" for value, images in seen.items())
            warnings.append(f"compared runs differ in {what}: {where}. A difference between "
                            "these images may come from this, not from the version.")
    for image in context.images:
        trials = by_image.get(image, [])
        for name, what in IMAGE_FIELDS.items():
            values = _distinct(trials, lambda t, n=name: env_value(t, n))
            if len(values) > 1:
                warnings.append(f"image {image} ran with different {what} versions "
                                f"({_joined(values)}): its trials are not one build.")
        digests = _distinct(trials, lambda t: tag(t, "versweep.image_digest"))
        if len(digests) > 1:
            warnings.append(f"image {image} ran from {len(digests)} different digests "
                            f"({_joined(digests)}): it was rebuilt during the sweep.")
    return warnings


def trials_csv(context: ReportContext) -> None:
    """trials.csv: every decided trial with its status and headline figures."""
    csv = context.csv_table("trials", [
        "run_id", "name", "workload", "image", "repeat", "status", "ms_per_batch_median",
        "test_perplexity", "best_valid_perplexity", "words_per_second", "message", "sweep_id",
        "url", "busy"])
    for trial in context.data.trials:
        csv.rows.append([trial.run_id, trial.name, trial.workload, trial.image, trial.repeat,
                         trial.status] + [trial.metrics.get(name) for name in (
                             "ms_per_batch_median", "test_perplexity", "best_valid_perplexity",
                             "words_per_second")] + [trial.message, trial.sweep_id,
                                                     context.url(trial.run_id), busy(trial)])


# --------------------------------------------------------------------------- --compare


# --------------------------------------------------------------------------- series view


# The env event's facts that a CPU speed figure depends on besides torch (workers/runtime.py).
BUILD_FIELDS = (("CPU", "cpu.model"), ("vendor", "cpu.vendor"), ("BLAS", "build.blas"),
                ("MKL", "build.mkl"), ("oneDNN", "build.onednn"),
                ("capability", "build.cpu_capability"), ("threads", "build.parallel_backend"))


def _short_library(text: str | None) -> str:
    """'Intel(R) oneAPI Math Kernel Library Version 2024.2-Product Build ...' -> '2024.2'."""
    if not text:
        return "-"
    found = re.search(r"(?:Version |v)(\d[\w.]*)", text)
    return found.group(1).rstrip("-") if found else text[:24]


def build_rows(context: ReportContext) -> list[list[str]]:
    """Per image: torch, Python and the libraries inside it, from its trials' env events."""
    rows = []
    for image in context.images:
        trial = next((t for t in context.data.trials if t.image == image
                      and env_value(t, "torch")), None)
        if trial is None:
            continue
        cells = [image, env_value(trial, "torch") or "-", env_value(trial, "python") or "-"]
        for label, name in BUILD_FIELDS:
            value = env_value(trial, name)
            cells.append(_short_library(value) if label in ("MKL", "oneDNN") else value or "-")
        rows.append(cells)
    return rows


def _series_points(context: ReportContext) -> list[tuple[str, str, str, list]]:
    """(metric, unit, variant label, [(image, repeat values)]) of every series to search."""
    found = []
    for group in context.groups:
        points = [(image, group.repeat_medians.get(image, [])) for image in context.images]
        found.append(("ms per batch", "ms", group.label, points))
    for key, trials in sorted(lm_variants(context.data.trials).items()):
        label = lm_label(dict(key), [])
        for metric, unit in (("test_perplexity", ""), ("words_per_second", "words/s")):
            points = [(image, [t.metrics[metric] for t in trials
                               if t.image == image and t.status == Status.OK
                               and finite(t.metrics.get(metric))])
                      for image in context.images]
            found.append((metric.replace("_", " "), unit, label, points))
    return found


def series_sections(context: ReportContext) -> list[render.Section]:
    """Each metric against the torch version in release order, and the steps in it."""
    from analysis.series import PENALTY_FACTOR, find_steps

    if len(context.images) < 3:
        return []
    section = render.Section("Series: each metric across the versions, and its steps")
    section.blocks.append(render.Paragraph(
        "Each benchmark variant and language-model figure against the torch version, "
        "oldest first. A **step** is a place between two consecutive measured versions "
        "where the series changes by more than its repeats vary and by at least "
        f"{SPEED_THRESHOLD:.0%}: PELT (`ruptures`) on the logarithm of the per-version "
        "means, with a penalty of "
        f"{PENALTY_FACTOR:g} ln(n) times the noise of a version's mean, measured from "
        "the repeats (`analysis/series.py` says why this method and how often it errs). "
        "The ratio is after / before, over the segments on each side of the step."))
    csv = context.csv_table("steps", ["metric", "variant", "before", "torch_before", "after",
                                      "torch_after", "ratio", "before_value", "after_value",
                                      "noise"])
    rows, notes = [], []
    for metric, unit, label, points in _series_points(context):
        found = find_steps(points)
        if found.note and len(found.points) >= 1:
            notes.append(f"{label} ({metric}): {found.note}")
        for step in found.steps:
            before_torch = context.torch.get(step.before) or step.before
            after_torch = context.torch.get(step.after) or step.after
            rows.append([metric, label, f"{before_torch} → {after_torch}",
                         f"{step.ratio:.2f}x",
                         f"{format_number(step.before_value)} → "
                         f"{format_number(step.after_value)} {unit}".rstrip(),
                         f"±{step.noise:.1%}"])
            csv.rows.append([metric, label, step.before, before_torch, step.after,
                             after_torch, step.ratio, step.before_value, step.after_value,
                             step.noise])
    if rows:
        section.blocks.append(render.Table(
            ["metric", "variant", "step (torch)", "ratio", "before → after",
             "noise of a mean"], rows, caption="Steps across versions",
            numeric=frozenset(["ratio"])))
    else:
        section.blocks.append(render.Paragraph(
            "No step: every series stays within its repeats' noise, or changes by less "
            f"than {SPEED_THRESHOLD:.0%}, from version to version."))
    for note in notes:
        section.blocks.append(render.Caveat(note))
    builds = build_rows(context)
    if builds:
        section.blocks.append(render.Paragraph(
            "A CPU speed figure depends on the CPU and on the libraries inside each wheel as "
            "much as on torch: the MKL of some versions takes a slow path on AMD CPUs, and "
            "newer wheels use oneDNN kernels for the LSTM. What each image reported:"))
        section.blocks.append(render.Table(
            ["image", "torch", "python", *(label for label, _ in BUILD_FIELDS)], builds,
            caption="What each image's torch was built with (its env event)"))
    return [section]

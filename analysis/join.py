"""One series from the trials of several version sweeps: ``versweep join`` (or
``python -m analysis.join``).

    versweep join docs/versions-cpu/trials.csv docs/versions-cpu/more-lines/trials.csv \\
        --leave-out "rnn_bench 1x320-ce-short basic @ torch-1.0.1-cu100 #0" \\
        --out docs/versions-cpu/all-lines

A fair version comparison runs every line in one sweep, its repeats interleaved across
the lines (sweeps/grid/load.py). Where a machine cannot hold every line's environment at
once (the thirty CPU lines need about 76 GB), the lines are measured in several sweeps,
and a step between two lines of different sweeps could be the machine's drift between
the sweeps rather than torch. So the later sweeps repeat some lines of the first one
(anchors), and this joins them honestly:

- the **drift** of each variant: the median of an anchor line in a later sweep over its
  median in the first sweep that measured it (1.00: the machine did not drift);
- the joined **series**: every line once, in release order, each of its figures from the
  first sweep that measured that figure (a line whose benchmarks failed in one sweep and
  ran in a later one takes them from the later one), the steps found by the report's own method
  (analysis/series.py: PELT on the logarithm of the per-line repeats), and each step
  marked where its two figures come from different sweeps, with the drift between those
  two sweeps (measured on the lines both of them ran) that could explain it.

Input: the ``trials.csv`` files that ``analysis/report.py`` writes (or the report folders
that hold them), the first sweep first, each once.
A trial the report marked busy (its ``busy`` column) has its timings left out, as in the
report; ``--leave-out`` leaves out further trials by name (a report older than that column
names its busy trials in report.md); a name that is no trial of the files is refused.
Output in ``--out``: ``join.md``, ``steps.csv``, ``drift.csv``, ``lines.csv`` and a figure
per benchmark in ``plots/``, moved in together once all are written (analysis/output.py):
other files in ``--out`` are kept, and a failure leaves it as it was.
"""

from __future__ import annotations

import csv
import difflib
import hashlib
import io
import math
import re
import statistics
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from analysis.output import staged_output
from sweeps import validate
from sweeps.errors import ArgumentParser, UserError, run_command

# The figures of a trial this joins: (workload, metric column, label, unit).
METRICS = (("rnn_bench", "ms_per_batch_median", "ms per batch", "ms"),
           ("ptb_lm", "words_per_second", "words per second", "words/s"),
           ("ptb_lm", "test_perplexity", "test perplexity", ""))
TIMINGS = {"ms_per_batch_median", "words_per_second"}
NEEDED_COLUMNS = {"name", "workload", "image", "status", *(m[1] for m in METRICS)}
VERSION = re.compile(r"torch-(\d+)\.(\d+)\.(\d+)")


class JoinError(UserError):
    """A user's input that cannot be joined: one line, exit 2."""


@dataclass
class Line:
    """One torch line (image) of the joined series: where it was measured, its repeats."""

    image: str
    sweep: str  # the first sweep (trials file) that measured any of its figures
    # (metric, variant) -> its repeats, from the first sweep that measured that figure ...
    values: dict[tuple[str, str], list[float]] = field(default_factory=dict)
    source: dict[tuple[str, str], str] = field(default_factory=dict)  # ... which was this one
    # later sweep -> its repeats of figures an earlier sweep already measured
    anchor: dict[str, dict[tuple[str, str], list[float]]] = field(default_factory=dict)

    def by_sweep(self, key: tuple[str, str]) -> dict[str, list[float]]:
        """Every sweep's repeats of one figure of this line, the first one first."""
        found = {self.source[key]: self.values[key]} if key in self.values else {}
        found.update((sweep, values[key]) for sweep, values in self.anchor.items()
                     if key in values)
        return found


def release_key(image: str) -> tuple:
    """Release order of an image name: torch-1.13.1-cu116 -> (1, 13, 1, image)."""
    found = VERSION.search(image)
    if not found:
        raise JoinError(f"image {image!r} names no torch version (torch-X.Y.Z-...): "
                        "only version sweeps can be joined")
    return (*(int(part) for part in found.groups()), image)


def trials_file(path: Path) -> Path:
    """The trials.csv an input names: the file itself, or a report folder's trials.csv."""
    if path.is_dir():
        if not (path / "trials.csv").is_file():
            raise JoinError(f"{path}: a folder with no trials.csv in it; give the trials.csv "
                            "that the report wrote, or the report's folder")
        return path / "trials.csv"
    if not path.is_file():
        raise JoinError(f"{path}: no such file (give the trials.csv that the report wrote)")
    return path


def read_trials(path: Path, content: bytes | None = None) -> list[dict[str, str]]:
    """The rows of a report's trials.csv (``content``: its bytes, where already read)."""
    path = trials_file(path)
    if content is None:
        content = read_bytes(path)
    try:
        text = content.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise JoinError(f"{path}: not a report's trials.csv (not UTF-8 text: byte "
                        f"0x{content[exc.start]:02x} at offset {exc.start}); give the "
                        "trials.csv that the report wrote") from None
    try:
        reader = csv.DictReader(io.StringIO(text, newline=""))
        missing = NEEDED_COLUMNS - set(reader.fieldnames or [])
        if missing:
            raise JoinError(f"{path}: not a report's trials.csv (no column "
                            f"{', '.join(sorted(missing))})")
        return list(reader)
    except csv.Error as exc:
        raise JoinError(f"{path}: not a report's trials.csv (unreadable as CSV: {exc}); "
                        "give the trials.csv that the report wrote") from None


def read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise JoinError(f"{path}: cannot read it ({exc.strerror or exc})") from None


def check_distinct(given: Sequence[Path], paths: Sequence[Path],
                   contents: Sequence[bytes]) -> None:
    """Each sweep once: the same file (after resolving links), or a copy of it, twice is
    refused; it would count as two sweeps and its lines as their own anchors."""
    seen: dict[object, Path] = {}
    for shown, path, content in zip(given, paths, contents, strict=True):
        for key in (("path", path.resolve()), ("content", hashlib.sha256(content).digest())):
            if key in seen:
                same = ("name the same file" if key[0] == "path"
                        else "hold the same trials (the same content)")
                raise JoinError(f"'{seen[key]}' and '{shown}' {same}: give each sweep's "
                                "trials.csv once")
            seen[key] = shown


def check_leave_out(files: Sequence[tuple[str, list[dict[str, str]]]],
                    leave_out: Sequence[str]) -> None:
    """Every --leave-out names a trial of the files: a typo would leave nothing out."""
    names = sorted({row["name"] for _, rows in files for row in rows})
    for name in leave_out:
        if name in names:
            continue
        close = difflib.get_close_matches(name, names, n=1)
        if close:
            hint = f"did you mean '{close[0]}'?"
        elif names:
            hint = f"the trials' names are the `name` column of trials.csv, e.g. '{names[0]}'"
        else:
            hint = "the files hold no trials"
        raise JoinError(f"--leave-out '{name}' is no trial of these files; {hint}")


def _number(text: str | None) -> float | None:
    try:
        value = float(text) if text not in (None, "") else None
    except ValueError:
        return None
    return value if value is not None and math.isfinite(value) and value > 0 else None


def join(files: Sequence[tuple[str, list[dict[str, str]]]],
         leave_out: Sequence[str] = ()) -> list[Line]:
    """The lines of every file, in release order; a figure of a line already measured by
    an earlier file keeps that file's values, and a later file's values of it become an
    anchor; a figure no earlier file measured is taken from the first file that did."""
    lines: dict[str, Line] = {}
    skipped = set(leave_out)
    for sweep, rows in files:
        seen_here: dict[str, dict[tuple[str, str], list[float]]] = {}
        for row in rows:
            if row["status"] != "ok" or row["name"] in skipped:
                continue
            variant = row["name"].split(" @ ")[0]
            # A timing measured while other work kept the CPUs busy (the report's busy
            # column) is left out, as the report leaves it out; its perplexity is kept.
            busy = row.get("busy", "") == "True"
            for workload, column, metric, _unit in METRICS:
                if busy and column in TIMINGS:
                    continue
                value = _number(row.get(column))
                if row["workload"] == workload and value is not None:
                    seen_here.setdefault(row["image"], {}).setdefault(
                        (metric, variant), []).append(value)
        for image, values in seen_here.items():
            release_key(image)
            line = lines.setdefault(image, Line(image, sweep))
            for key, repeats in values.items():
                if key in line.values:
                    line.anchor.setdefault(sweep, {})[key] = repeats
                else:
                    line.values[key], line.source[key] = repeats, sweep
    return sorted(lines.values(), key=lambda line: release_key(line.image))


# How a step is read (join.md, steps.csv "reading").
WITHIN = "torch (one sweep)"
DRIFT = "drift"
BEYOND = "beyond the drift"
UNKNOWN = "unconfirmed (no anchor)"


def reading(ratio: float, noise: float, crosses: bool, low: float | None,
            high: float | None, later_after: bool) -> str:
    """Whether a step is torch's or may be the machine's drift between two sweeps.

    A step from a line of the first sweep to one of a later sweep looks like the drift
    (later / first); the other way round, like its inverse. It is ``drift`` where its ratio
    lies within the anchors' range of that, widened by twice the noise of a mean.
    """
    if not crosses:
        return WITHIN
    if low is None or high is None:
        return UNKNOWN
    lo, hi = (low, high) if later_after else (1.0 / high, 1.0 / low)
    slack = 1.0 + 2.0 * noise
    return DRIFT if lo / slack <= ratio <= hi * slack else BEYOND


def drift_rows(lines: Sequence[Line], sweeps: Sequence[str]) -> list[list]:
    """[metric, variant, image, earlier sweep, later sweep, ratio later / earlier] for
    every pair of sweeps that measured the same figure of a line."""
    rows = []
    for line in lines:
        for key in sorted({k for k in line.values}
                          | {k for values in line.anchor.values() for k in values}):
            measured = sorted(line.by_sweep(key).items(), key=lambda s: sweeps.index(s[0]))
            for number, (earlier, first) in enumerate(measured):
                for later, values in measured[number + 1:]:
                    rows.append([key[0], key[1], line.image, earlier, later,
                                 statistics.median(values) / statistics.median(first)])
    return rows


def build_parser(prog: str = "python -m analysis.join") -> ArgumentParser:
    parser = ArgumentParser(
        prog=prog,
        description="Join the trials.csv of several version sweeps into one series, with "
                    "the drift of the lines they share.")
    parser.add_argument("trials", nargs="+", type=Path,
                        help="trials.csv files of analysis/report.py (or the report folders "
                             "that hold them), the first sweep first")
    parser.add_argument("--leave-out", action="append", default=[], metavar="TRIAL",
                        help="a trial's name to leave out (e.g. one the report marked busy)")
    parser.add_argument("--out", required=True, help="directory to write into")
    return parser


def main(argv: Sequence[str] | None = None, prog: str = "python -m analysis.join") -> int:
    return run_command(prog, lambda: _main(sys.argv[1:] if argv is None else list(argv),
                                           prog))


def _main(argv: list[str], prog: str) -> int:
    args = build_parser(prog).parse_args(argv)
    # Where the files go is checked before anything is read (a file, an empty name).
    out = validate.output_dir(args.out, "--out")
    paths = [trials_file(path) for path in args.trials]
    contents = [read_bytes(path) for path in paths]
    check_distinct(args.trials, paths, contents)
    files = [(str(path.parent.name or path), read_trials(path, content))
             for path, content in zip(paths, contents, strict=True)]
    if len({name for name, _ in files}) < len(files):
        files = [(str(path), rows) for path, (_, rows) in zip(paths, files, strict=True)]
    check_leave_out(files, args.leave_out)
    lines = join(files, args.leave_out)
    if len(lines) < 3:
        raise JoinError(f"{len(lines)} torch line(s) with ok trials: a series needs 3")
    write(lines, [name for name, _ in files], out, args.trials, args.leave_out)
    print(f"{len(lines)} torch lines from {len(files)} sweeps -> {out / 'join.md'}")
    return 0


def _fmt(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 else f"{value:.3g}"


def write(lines: Sequence[Line], sweeps: Sequence[str], out: Path,
          sources: Sequence[Path], leave_out: Sequence[str]) -> None:
    from analysis import plots
    from analysis.series import find_steps

    variants = sorted({key for line in lines for key in line.values})
    drift = drift_rows(lines, sweeps)
    # (metric, variant, earlier sweep, later sweep) -> the drift ratios of that pair
    by_pair: dict[tuple[str, str, str, str], list[float]] = {}
    for metric, variant, _image, earlier, later, ratio in drift:
        by_pair.setdefault((metric, variant, earlier, later), []).append(ratio)

    step_rows: list[list[Any]] = []
    for key in variants:
        points = [(line.image, line.values.get(key, [])) for line in lines]
        found = find_steps(points)
        sweep_of = {line.image: line.source.get(key, line.sweep) for line in lines}
        for step in found.steps:
            before, after = sweep_of[step.before], sweep_of[step.after]
            crosses = before != after
            # The drift between exactly these two sweeps (earlier -> later in file order).
            pair = sorted((before, after), key=sweeps.index)
            ratios = by_pair.get((key[0], key[1], pair[0], pair[1]), []) if crosses else []
            low = min(ratios) if ratios else None
            high = max(ratios) if ratios else None
            step_rows.append([key[0], key[1], step.before, step.after, step.ratio,
                              step.noise, f"across ({before} -> {after})" if crosses
                              else "within", low, high,
                              reading(step.ratio, step.noise, crosses, low, high,
                                      sweeps.index(after) > sweeps.index(before))])

    files: dict[str, bytes] = {}  # path in out -> its content
    files["drift.csv"] = _csv(["metric", "variant", "image", "first_sweep", "later_sweep",
                               "ratio_later_over_first"], drift)
    files["steps.csv"] = _csv(["metric", "variant", "before", "after", "ratio", "noise",
                               "sweeps", "drift_low", "drift_high", "reading"], step_rows)
    files["lines.csv"] = _csv(
        ["image", "sweep", "metric", "variant", "repeats", "median", "low", "high"],
        [[line.image, line.source[key], key[0], key[1], len(values), statistics.median(values),
          min(values), max(values)] for line in lines
         for key, values in sorted(line.values.items())])

    images = [line.image for line in lines]
    # A line measured in a later sweep than the first is marked on the axis: steps next to
    # it may hold the drift between the sweeps.
    labels = [line.image + (" †" if line.sweep != sweeps[0] else "") for line in lines]
    figures = []
    for group in sorted({(metric, variant.rsplit(" ", 1)[0] if metric == "ms per batch"
                          else variant) for metric, variant in variants}):
        metric, title = group
        members = [key for key in variants if key[0] == metric
                   and (key[1].rsplit(" ", 1)[0] if metric == "ms per batch" else key[1])
                   == title]
        series = {}
        for key in members:
            bars = []
            for line in lines:
                values = line.values.get(key)
                bars.append(plots.Bar(statistics.median(values), min(values), max(values))
                            if values else plots.Bar(None))
            series[key[1].rsplit(" ", 1)[-1] if metric == "ms per batch" else key[1]] = bars
        name = re.sub(r"[^A-Za-z0-9.-]+", "_", f"{title} {metric}").strip("_") + ".png"
        files[f"plots/{name}"] = plots.lines_across_versions(
            f"{title}: {metric}, {len(images)} torch lines (†: measured in a later sweep)",
            labels, series, ylabel=f"{metric} (median, min-max of repeats)")
        figures.append(name)

    md = ["# The torch lines of several sweeps, joined", "",
          "Made by `python -m analysis.join " + " ".join(str(p) for p in sources)
          + "".join(f' --leave-out "{name}"' for name in leave_out) + f" --out {out}`.", "",
          "Each figure of a line comes from the first sweep that measured it; a figure "
          "measured again by a later sweep is an **anchor**, and its later median over its "
          "earlier median is the machine's **drift** between the two sweeps for that "
          "variant. A step between two figures of different sweeps (`across`) is only a "
          "torch effect where it is well beyond the drift between those two sweeps.", "",
          "## Lines", "", "| torch line | figures from | anchor in |", "|---|---|---|"]
    for line in lines:
        origins = sorted(set(line.source.values()), key=sweeps.index)
        if len(origins) > 1:  # say which figures came from which sweep
            origins = [origin + " (" + ", ".join(sorted({k[1].split(" ")[0] for k, s in
                                                         line.source.items()
                                                         if s == origin})) + ")"
                       for origin in origins]
        md.append(f"| {line.image} | {', '.join(origins)} | "
                  f"{', '.join(line.anchor) or '-'} |")
    md += ["", "## Drift between the sweeps (anchor lines)", ""]
    if drift:
        for earlier, later in sorted({(row[3], row[4]) for row in drift},
                                     key=lambda p: (sweeps.index(p[0]), sweeps.index(p[1]))):
            ratios = [row[-1] for row in drift if (row[3], row[4]) == (earlier, later)]
            md.append(f"- {earlier} -> {later}: {len(ratios)} anchor figures: later / first "
                      f"median {statistics.median(ratios):.3f}, from {min(ratios):.3f} to "
                      f"{max(ratios):.3f}")
        md += ["", "(`drift.csv` has each.)", "",
               "| metric | variant | sweeps | median drift | range |", "|---|---|---|---:|---|"]
        md += [f"| {key[0]} | {key[1]} | {key[2]} -> {key[3]} | "
               f"{statistics.median(values):.3f} | {min(values):.3f} to {max(values):.3f} |"
               for key, values in sorted(by_pair.items())]
    else:
        md += ["No line was measured by more than one sweep: the drift is unknown, so every "
               "step across sweeps is unconfirmed."]
    md += ["", "## Steps in the joined series", ""]
    if step_rows:
        kept = [row for row in step_rows if row[-1] != DRIFT]
        md += [f"{len(step_rows)} steps; {len(step_rows) - len(kept)} of them lie between "
               "lines of different sweeps and within the drift between those sweeps (the "
               "reading `drift`): they are the machine, not torch, and are listed in "
               "`steps.csv` only. The others:", "",
               "| metric | variant | step | ratio | noise of a mean | sweeps | drift | reading |",
               "|---|---|---|---:|---:|---|---|---|"]
        for (metric, variant, before, after, ratio, noise, sweeps_, drift_low, drift_high,
             said) in kept:
            span = (f"{drift_low:.2f} to {drift_high:.2f}" if drift_low is not None
                    else "-")
            md.append(f"| {metric} | {variant} | {before} → {after} | {ratio:.2f}x | "
                      f"±{noise:.1%} | {sweeps_} | {span} | {said} |")
    else:
        md.append("No step beyond the repeats' noise.")
    md += ["", "## Medians per line", "",
           "| variant | " + " | ".join(".".join(map(str, release_key(i)[:3])) for i in images)
           + " |",
           "|---|" + "---:|" * len(images)]
    for key in variants:
        cells = []
        for line in lines:
            values = line.values.get(key)
            cells.append(_fmt(statistics.median(values)) if values else "-")
        md.append(f"| {key[1]} ({key[0]}) | " + " | ".join(cells) + " |")
    md += ["", "## Figures", ""] + [f"![{name}](plots/{name})" for name in figures]
    files["join.md"] = ("\n".join(md) + "\n").encode("utf-8")
    # Moved into out together once all are written (analysis/output.py): a failure part-way
    # leaves out as it was, and out's other files are kept.
    with staged_output(out) as stage:
        for name, content in files.items():
            stage.file(name).write_bytes(content)


def _csv(header: list[str], rows: list[list]) -> bytes:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue().encode("utf-8")


if __name__ == "__main__":
    sys.exit(main())

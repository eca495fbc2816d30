"""A report as plain data (sections of text, tables and figures) and its three renderings.

    report.md    GitHub-flavoured Markdown; the figures are PNG files in plots/ next to it
    report.html  one self-contained file: inline CSS, figures as base64 data URIs, no
                 script and no network request, so it opens anywhere, offline
    *.csv        the figures behind the tables at full precision, one file per table kind

Text in paragraphs may use two bits of Markdown, `code` and **bold**; the HTML
rendering turns exactly those into <code> and <strong> and escapes everything else.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from analysis.output import staged_output

# The formats a report can be written in, as --format names them.
FORMATS = ("md", "html", "csv")

# Where report.md finds its figures, relative to itself.
PLOTS_DIR = "plots"


@dataclass
class Paragraph:
    """Running text (may use `code` and **bold**)."""

    text: str


@dataclass
class Caveat:
    """Something the reader must see before trusting a comparison."""

    text: str


@dataclass
class Table:
    """A table for people: every cell already formatted as text."""

    columns: list[str]
    rows: list[list[str]]
    caption: str = ""
    # Columns whose text is a number: right-aligned in both renderings.
    numeric: frozenset[str] = frozenset()


@dataclass
class Figure:
    """A PNG figure with the file name it gets next to report.md.

    ``png`` may still be being drawn (analysis/pool.py: anything with a ``result()`` that
    returns the bytes); ``data()`` waits for it.
    """

    title: str
    png: bytes | Any
    filename: str
    caption: str = ""

    def data(self) -> bytes:
        """The PNG bytes, once drawn."""
        if not isinstance(self.png, bytes):
            self.png = self.png.result()
        return self.png


Block = Paragraph | Caveat | Table | Figure


@dataclass
class Section:
    """A titled part of the report; ``level`` 2 for sections, 3 for their subsections."""

    title: str
    blocks: list[Block] = field(default_factory=list)
    level: int = 2

    @property
    def anchor(self) -> str:
        """The id GitHub gives this heading (lower case, punctuation dropped, spaces to -)."""
        text = re.sub(r"[^\w\- ]", "", self.title.lower())
        return text.replace(" ", "-")


@dataclass
class CsvTable:
    """A machine-readable table: raw values, numbers at full precision (``repr``)."""

    name: str  # the file stem: <name>.csv
    columns: list[str]
    rows: list[list[object]]


@dataclass
class Report:
    """Everything one report says, independent of how it is rendered."""

    title: str
    subtitle: str
    sections: list[Section]
    csv_tables: list[CsvTable] = field(default_factory=list)


# --------------------------------------------------------------------------- Markdown


def _md_cell(text: str) -> str:
    # A "|" would end the cell and a newline the row.
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def _md_table(table: Table) -> str:
    lines = []
    if table.caption:
        lines += [table.caption, ""]
    lines.append("| " + " | ".join(_md_cell(c) for c in table.columns) + " |")
    lines.append("|" + "|".join("---:" if c in table.numeric else "---"
                                for c in table.columns) + "|")
    for row in table.rows:
        lines.append("| " + " | ".join(_md_cell(c) for c in row) + " |")
    return "\n".join(lines)


def render_markdown(report: Report) -> str:
    """report.md: headings, a table of contents, tables and figure links into plots/."""
    parts = [f"# {report.title}", "", report.subtitle, ""]
    parts.append("Contents: " + " · ".join(
        f"[{s.title}](#{s.anchor})" for s in report.sections if s.level == 2))
    parts.append("")
    for section in report.sections:
        parts += ["#" * section.level + " " + section.title, ""]
        for block in section.blocks:
            if isinstance(block, Paragraph):
                parts.append(block.text)
            elif isinstance(block, Caveat):
                parts.append(f"> **Warning:** {block.text}")
            elif isinstance(block, Table):
                parts.append(_md_table(block))
            else:
                parts.append(f"![{block.title}]({PLOTS_DIR}/{block.filename})")
                if block.caption:
                    parts += ["", f"*{block.caption}*"]
            parts.append("")
    return "\n".join(parts).rstrip() + "\n"


# --------------------------------------------------------------------------- HTML

_STYLE = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 2em auto;
       max-width: 1200px; padding: 0 1em; color: #1f2328; line-height: 1.45; }
h1 { border-bottom: 1px solid #d0d7de; padding-bottom: .3em; }
h2 { border-bottom: 1px solid #d0d7de; padding-bottom: .2em; margin-top: 2em; }
table { border-collapse: collapse; margin: .6em 0 1.2em; font-size: 0.9em; }
th, td { border: 1px solid #d0d7de; padding: 4px 8px; vertical-align: top; }
th { background: #f6f8fa; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
tr:nth-child(even) td { background: #fbfcfd; }
caption { caption-side: top; text-align: left; font-weight: 600; padding: .3em 0; }
code { background: #eff1f3; padding: 0 .25em; border-radius: 4px; font-size: 0.92em; }
.warning { background: #fff8c5; border-left: 4px solid #d4a72c; padding: .5em .8em;
           margin: .6em 0; }
.mark-faster { color: #1a7f37; font-weight: 600; }
.mark-slower { color: #cf222e; font-weight: 600; }
.mark-differs { color: #cf222e; font-weight: 600; }
figure { margin: 1em 0 2em; }
figure img { max-width: 100%; height: auto; border: 1px solid #eaeef2; }
figcaption { font-size: 0.85em; color: #57606a; }
nav { background: #f6f8fa; padding: .5em 1em; border-radius: 6px; }
""".strip()

# Cell text that gets a colour in the HTML rendering, so the verdicts stand out.
_MARK_CLASSES = {"faster": "mark-faster", "slower": "mark-slower", "differs": "mark-differs"}


# A Markdown link whose target is a web address: [text](http://...) (no spaces or quotes in
# it, so it can stand in an attribute once escaped). Every other bracket stays text.
_LINK = re.compile(r"\[([^\[\]]+)\]\((https?://[^\s()\"'<>]+)\)")


def link(text: str, url: str) -> str:
    """``text`` as a Markdown link to ``url`` (brackets in the text would end it early)."""
    return f"[{text.replace('[', '(').replace(']', ')')}]({url})"


def _inline_html(text: str) -> str:
    """Escape ``text``, then turn `code`, **bold** and [links](https://...) into their HTML."""
    escaped = html.escape(text, quote=False)
    escaped = re.sub(r"`([^`]+)`", r"<code>\1</code>", escaped)
    escaped = _LINK.sub(lambda m: f'<a href="{m.group(2)}">{m.group(1)}</a>', escaped)
    return re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", escaped)


def _html_table(table: Table) -> str:
    out = ["<table>"]
    if table.caption:
        out.append(f"<caption>{_inline_html(table.caption)}</caption>")
    out.append("<thead><tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in table.columns)
               + "</tr></thead><tbody>")
    for row in table.rows:
        cells = []
        for column, text in zip(table.columns, row, strict=False):
            classes = []
            if column in table.numeric:
                classes.append("num")
            verdict = re.match(r"\**(\w+)", text)  # "**slower**", "**differs** (Δ ...)"
            if verdict and verdict.group(1) in _MARK_CLASSES:
                classes.append(_MARK_CLASSES[verdict.group(1)])
            attribute = f' class="{" ".join(classes)}"' if classes else ""
            cells.append(f"<td{attribute}>{_inline_html(text)}</td>")
        out.append("<tr>" + "".join(cells) + "</tr>")
    out.append("</tbody></table>")
    return "\n".join(out)


def render_html(report: Report) -> str:
    """report.html: one file with everything inside it (figures as data: URIs)."""
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        # Nothing may be fetched: the report must open offline and leak nothing.
        '<meta http-equiv="Content-Security-Policy" '
        "content=\"default-src 'none'; img-src data:; style-src 'unsafe-inline'\">",
        f"<title>{html.escape(report.title)}</title>",
        f"<style>\n{_STYLE}\n</style>",
        "</head><body>",
        f"<h1>{html.escape(report.title)}</h1>",
        f"<p>{_inline_html(report.subtitle)}</p>",
        "<nav>Contents: " + " · ".join(
            f'<a href="#{s.anchor}">{html.escape(s.title)}</a>'
            for s in report.sections if s.level == 2) + "</nav>",
    ]
    for section in report.sections:
        level = section.level
        parts.append(f'<h{level} id="{section.anchor}">{html.escape(section.title)}</h{level}>')
        for block in section.blocks:
            if isinstance(block, Paragraph):
                parts.append(f"<p>{_inline_html(block.text)}</p>")
            elif isinstance(block, Caveat):
                parts.append(f'<div class="warning"><strong>Warning:</strong> '
                             f"{_inline_html(block.text)}</div>")
            elif isinstance(block, Table):
                parts.append(_html_table(block))
            else:
                data = base64.b64encode(block.data()).decode("ascii")
                caption = f"<figcaption>{_inline_html(block.caption)}</figcaption>" \
                    if block.caption else ""
                parts.append(f'<figure><img src="data:image/png;base64,{data}" '
                             f'alt="{html.escape(block.title)}">{caption}</figure>')
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


# --------------------------------------------------------------------------- CSV


def csv_value(value: object) -> object:
    """A value as CSV holds it: floats at full precision, missing numbers empty."""
    if value is None:
        return ""
    if isinstance(value, float):
        return "" if math.isnan(value) else repr(value)
    return value


def render_csv(table: CsvTable) -> str:
    """One table as CSV text with a header row."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(table.columns)
    for row in table.rows:
        writer.writerow([csv_value(v) for v in row])
    return buffer.getvalue()


# --------------------------------------------------------------------------- files


def figures(report: Report) -> list[Figure]:
    """Every figure of the report, in reading order."""
    return [block for section in report.sections for block in section.blocks
            if isinstance(block, Figure)]


def write_report(report: Report, out_dir: Path, formats: Sequence[str]) -> list[Path]:
    """Write the report in ``formats`` under ``out_dir``; return the files written.

    All of them move in together once written (analysis/output.py): a failure leaves
    ``out_dir`` as it was, and its other files (a README beside the report) are kept.
    """
    with staged_output(out_dir) as stage:
        if "md" in formats:
            current = {figure.filename for figure in figures(report)}
            plots = out_dir / PLOTS_DIR
            if plots.is_dir():
                # Figures of an earlier report written here would sit beside this one's and
                # read as part of it.
                for stale in plots.glob("*.png"):
                    if stale.name not in current and (stale.is_file() or stale.is_symlink()):
                        stage.discard(Path(PLOTS_DIR) / stale.name)
            for figure in figures(report):
                stage.file(Path(PLOTS_DIR) / figure.filename).write_bytes(figure.data())
            stage.file("report.md").write_text(render_markdown(report), encoding="utf-8")
        if "html" in formats:
            stage.file("report.html").write_text(render_html(report), encoding="utf-8")
        if "csv" in formats:
            for table in report.csv_tables:
                stage.file(f"{table.name}.csv").write_text(render_csv(table), encoding="utf-8")
    return stage.written

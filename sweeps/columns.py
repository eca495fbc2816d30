"""Plain-text tables for terminals: the one way every versweep command prints columns.

    print(format_columns(["name", "size"], [["torch-2.3.1", "1.9 GB"]], right={"size"}))

    name         size
    torch-2.3.1  1.9 GB

Each column is as wide as its widest cell; cells are left-aligned except the columns
named in ``right``; trailing spaces are cut, so a last column of free text (a note, a
path) runs on as long as it needs.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence


def format_columns(header: Sequence[str], rows: Sequence[Sequence[object]], *,
                   right: Collection[str] = (), gap: str = "  ") -> str:
    """The header and the rows as aligned lines (no final newline)."""
    table = [[str(cell) for cell in header]]
    for row in rows:
        if len(row) != len(header):
            raise ValueError(f"a row has {len(row)} cells for {len(header)} columns: {row!r}")
        table.append([str(cell) for cell in row])
    widths = [max(len(line[i]) for line in table) for i in range(len(header))]
    aligned_right = [name in right for name in header]
    return "\n".join(
        gap.join(cell.rjust(width) if to_right else cell.ljust(width)
                 for cell, width, to_right in zip(line, widths, aligned_right, strict=True)
                 ).rstrip()
        for line in table)

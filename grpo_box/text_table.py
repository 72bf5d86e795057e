"""`text_table`: the one plain-text table of the CLI's reports (runs, presets, rewards, eval, export)."""

from __future__ import annotations

from collections.abc import Container, Sequence
from typing import Any


def text_table(rows: Sequence[Sequence[Any]], *, right: Container[int] = (), rule: bool = False,
               indent: str = "") -> str:
    """`rows` of cells as aligned text, two spaces between columns and no trailing spaces.

    Cells are left-aligned, except in the columns whose indices are in `right`; `rule` draws a
    dashed line under the first row (the header).

    >>> print(text_table([["name", "n"], ["a", 10]], right={1}, rule=True))
    name   n
    ----  --
    a     10
    """
    cells = [[str(cell) for cell in row] for row in rows]
    widths = [max(len(row[i]) for row in cells if i < len(row)) for i in range(max(map(len, cells), default=0))]
    lines = [indent + "  ".join(cell.rjust(w) if i in right else cell.ljust(w)
                                for i, (cell, w) in enumerate(zip(row, widths))) for row in cells]
    if rule and lines:
        lines.insert(1, indent + "  ".join("-" * w for w in widths))
    return "\n".join(line.rstrip() for line in lines)

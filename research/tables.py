"""Markdown tables for the experiments' `results.md` and `report.md` files."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]],
                   formats: Sequence[str] | None = None) -> str:
    """A markdown table.

    Args:
        header: the column titles.
        rows: one sequence of cells per row.
        formats: one format spec per column (e.g. "s", ",d", ".3f"); None: floats as ".3f",
            anything else as `str`.

    Returns:
        The table text, ending in a newline.
    """
    def cell(value, j):
        if formats is not None:
            return format(value, formats[j])
        return f"{value:.3f}" if isinstance(value, float) else str(value)

    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    lines += ["| " + " | ".join(cell(v, j) for j, v in enumerate(row)) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def records_table(records: Sequence[Mapping[str, Any]],
                  columns: Sequence[tuple[str, str, str]]) -> str:
    """A markdown table of records, one row per mapping.

    Args:
        records: one mapping per row.
        columns: (key, header, format spec) per column, e.g. ("test_acc", "test acc", ".3f").

    Returns:
        The table text, ending in a newline.
    """
    return markdown_table([h for _, h, _ in columns],
                          [[r[k] for k, _, _ in columns] for r in records],
                          [f for _, _, f in columns])


__all__ = ["markdown_table", "records_table"]

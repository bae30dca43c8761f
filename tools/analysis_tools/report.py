"""Tables the benchmark tools print and write: one markdown table from rows and column specs."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

# (title, the row's key or a function of the row, format spec: '' left-aligns a text column)
Column = tuple[str, 'str | Callable[[dict], Any]', str]


def input_size(row: dict) -> str:
    """``BxHxW`` of a benchmark row."""
    return f'{row["batch"]}x{row["shape"][0]}x{row["shape"][1]}'


def markdown_table(columns: list[Column], rows: list[dict]) -> list[str]:
    """The lines of a markdown table, one row per dict; missing or None values print as '-'."""
    def cell(row: dict, key: str | Callable[[dict], Any], spec: str) -> str:
        value = key(row) if callable(key) else row.get(key)
        return '-' if value is None else format(value, spec)
    return ['| ' + ' | '.join(c[0] for c in columns) + ' |',
            '|' + '|'.join('---:' if c[2] else '---' for c in columns) + '|',
            *('| ' + ' | '.join(cell(r, key, spec) for _, key, spec in columns) + ' |'
              for r in rows)]

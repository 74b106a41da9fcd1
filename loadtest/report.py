"""Benchmark reports: a Markdown table and JSON + Markdown files, the same for every benchmark."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

Row = tuple[str, str, str, str]  # measure, value, goal, detail
COLUMNS = ("measure", "value", "goal", "detail")


def markdown_table(rows: Iterable[Sequence[str]], columns: Sequence[str] = COLUMNS) -> str:
    """The table format of docs/benchmarks.md: one row per measure; `make bench`'s report adds
    a column (the command that reproduces the row)."""
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def write_report(out: str | Path, name: str, results: dict[str, Any], table: str) -> None:
    """`<out>/<name>.json` (every figure) and `<out>/<name>.md` (the table); prints the table."""
    Path(out, f"{name}.json").write_text(json.dumps(results, indent=2) + "\n")
    Path(out, f"{name}.md").write_text(table + "\n")
    print("\n" + table)

"""Rendering results: the terminal table, Markdown for docs/BENCHMARKS.md, and JSON."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bench.stats import Row

__all__ = ["markdown", "table", "write_json"]

_HEADERS = ("measure", "agentbus", "baseline", "ratio", "target", "met?")


def _cells(row: Row) -> tuple[str, ...]:
    baseline = f"{row.baseline.text()} ({row.baseline_name})" if row.baseline else ""
    value = row.value.text() if row.value else (row.note or "n/a")
    return (row.title, value, baseline, row.ratio_text(), row.target, row.met_text())


def table(rows: list[Row]) -> str:
    """A plain-text table, one row per measure."""
    cells = [_HEADERS, *(_cells(r) for r in rows)]
    widths = [max(len(c[i]) for c in cells) for i in range(len(_HEADERS))]
    lines = []
    for n, c in enumerate(cells):
        lines.append(" | ".join(v.ljust(w) for v, w in zip(c, widths, strict=True)).rstrip())
        if n == 0:
            lines.append("-+-".join("-" * w for w in widths))
    notes = [f"  {r.title}: {r.note}" for r in rows if r.note and r.value]
    if notes:
        lines += ["", "notes:", *notes]
    return "\n".join(lines)


def markdown(rows: list[Row]) -> str:
    lines = ["| " + " | ".join(_HEADERS) + " |", "|" + "---|" * len(_HEADERS)]
    for r in rows:
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in _cells(r)) + " |")
    return "\n".join(lines)


def write_json(path: Path, machine: dict[str, Any], rows: list[Row], extra: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {"machine": machine, "rows": [r.as_dict() for r in rows], **extra}
    path.write_text(json.dumps(data, indent=2, default=str) + "\n")

"""Rendering results: the terminal table, Markdown for docs/BENCHMARKS.md, and JSON."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bench.stats import Row

__all__ = ["doc_section", "markdown", "table", "update_doc", "write_json"]

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


START = "<!-- bench:results:start -->"
END = "<!-- bench:results:end -->"


def _rows_md(rows: list[dict[str, Any]]) -> str:
    lines = ["| " + " | ".join(_HEADERS) + " |", "|" + "---|" * len(_HEADERS)]
    for r in rows:
        base = f"{r['baseline_text']} ({r['baseline_name']})" if r["baseline_text"] else ""
        met = {True: "yes", False: "**NO**", None: ""}[r["met"]]
        value = r["value_text"] or r["note"]
        cells = [r["title"], value, base, r["ratio_text"], r["target"], met]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines)


def doc_section(data: dict[str, Any]) -> str:
    """The generated part of docs/BENCHMARKS.md: machine, command, table, curves, notes."""
    m = data["machine"]
    details = data.get("details", {})
    out = [
        START,
        "",
        f"Measured {m['date']} at commit `{m.get('commit', 'unknown')}` with `{m['command']}` "
        f"({m['seconds']} s).",
        "",
        "| machine | |",
        "|---|---|",
        f"| CPU | {m['cpu']}, {m['cores']} cores |",
        f"| RAM | {m['ram_gb']} GB |",
        f"| OS | {m['os']} |",
        f"| Python | {m['python']}, event loop {m['event_loop']} |",
        f"| Redis | {m['redis_server']} |",
        f"| redis-py | {m['redis_py']} (hiredis {m['hiredis']}) |",
        f"| NATS peer | {m['nats_server']}, nats-py {m['nats_py']} |",
        f"| load average (1/5/15 min) | {m['loadavg_start']} at start, {m['loadavg_end']} at end |",
        "",
        _rows_md(data["rows"]),
        "",
    ]
    notes = [f"* {r['title']}: {r['note']}" for r in data["rows"] if r["note"] and r["value"]]
    if notes:
        out += ["Notes from the run:", "", *notes, ""]
    curves = details.get("scaling")
    if curves:
        out += [
            "Scaling curves:",
            "",
            "| agents | registration (agents/s) | heartbeat CPU (% of a core) | coordinator RSS "
            "(MB) | discover p50 / p99 | matches | false expiries |",
            "|---|---|---|---|---|---|---|",
        ]
        for c in curves:
            out.append(
                f"| {c['agents']} | {c['register_per_s']:.0f} | {c['hb_cpu_percent']:.1f} | "
                f"{c['rss_peak_mb']:.1f} | {c['discover_p50_us'] / 1000:.2f} / "
                f"{c['discover_p99_us'] / 1000:.2f} ms | {c['matches']} | {c['false_expiries']} |"
            )
        out.append("")
    groups = details.get("groups", {})
    if groups:
        out += ["Load average per group (1 min, before → after):", ""]
        out += [
            f"* {name}: {g['loadavg_before'][0]} → {g['loadavg_after'][0]} ({g['seconds']} s)"
            for name, g in groups.items()
        ]
        out.append("")
    out.append(END)
    return "\n".join(out)


def update_doc(doc: Path, data: dict[str, Any]) -> None:
    """Replace the generated block of ``doc`` (between the markers) with this run's results."""
    text = doc.read_text()
    if START not in text or END not in text:
        raise ValueError(f"{doc} has no {START} ... {END} block")
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    doc.write_text(head + doc_section(data) + tail)

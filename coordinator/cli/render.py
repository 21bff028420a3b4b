"""How the CLI shows agents: a rich table, a detail view, and JSON."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from rich.console import Console
from rich.table import Table

from schemas.agent import AgentRecord, AgentStatus

__all__ = ["agent_details", "agent_json", "agents_table", "ago", "print_records"]

_STATUS_STYLE = {
    AgentStatus.READY: "green",
    AgentStatus.BUSY: "yellow",
    AgentStatus.STARTING: "cyan",
    AgentStatus.DRAINING: "magenta",
}


def ago(when: datetime, now: datetime | None = None) -> str:
    """``0.4s ago``, ``12s ago``, ``3m ago``: how long since ``when``."""
    seconds = max(0.0, ((now or datetime.now(UTC)) - when).total_seconds())
    if seconds < 10:
        return f"{seconds:.1f}s ago"
    if seconds < 120:
        return f"{seconds:.0f}s ago"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m ago"
    return f"{seconds / 3600:.0f}h ago"


def agent_json(record: AgentRecord) -> dict[str, Any]:
    """The record as plain JSON (what ``--json`` prints), with the agent's ``id``."""
    return {"id": record.id, **record.model_dump(mode="json", exclude_none=True)}


def agents_table(records: list[AgentRecord], title: str | None = None) -> Table:
    table = Table(title=title, show_lines=False, header_style="bold")
    for column in ("name", "role", "status", "load/max", "version", "capabilities", "tags"):
        table.add_column(column)
    table.add_column("host")
    table.add_column("last seen", justify="right")
    now = datetime.now(UTC)
    for rec in sorted(records, key=lambda r: (r.role, r.name)):
        style = _STATUS_STYLE.get(rec.status, "")
        table.add_row(
            rec.name,
            rec.role,
            f"[{style}]{rec.status.value}[/]" if style else rec.status.value,
            f"{rec.load}/{rec.max_concurrency}",
            rec.version,
            ", ".join(rec.capabilities),
            ", ".join(rec.tags),
            f"{rec.host or '-'}" + (f":{rec.pid}" if rec.pid is not None else ""),
            ago(rec.last_seen, now),
        )
    return table


def agent_details(record: AgentRecord) -> Table:
    """Every field of one record, one per row."""
    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column("field", style="bold")
    table.add_column("value", overflow="fold")
    data = agent_json(record)
    now = datetime.now(UTC)
    for key, value in data.items():
        if isinstance(value, list):
            text = ", ".join(str(v) for v in value) or "-"
        elif isinstance(value, dict):
            text = ", ".join(f"{k}={v}" for k, v in value.items()) or "-"
        else:
            text = str(value)
        if key == "last_seen":
            text += f" ({ago(record.last_seen, now)})"
        elif key == "registered_at":
            text += f" ({ago(record.registered_at, now)})"
        table.add_row(key, text)
    return table


def print_records(console: Console, records: list[AgentRecord], empty: str) -> None:
    if not records:
        console.print(empty)
        return
    console.print(agents_table(records))

"""How the CLI shows agents: a rich table, a detail view, and JSON.

Tables fit the terminal (``fitted_table``): columns are chosen by importance until the width is
used up, so at 80 columns a name is never cut and an id never wraps; what did not fit is named
in the table's caption (``--json`` has everything).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from schemas.agent import AgentRecord, AgentStatus
from schemas.display import safe_text

__all__ = [
    "Column",
    "agent_details",
    "agent_json",
    "agents_table",
    "ago",
    "fitted_table",
    "print_records",
]

_STATUS_STYLE = {
    AgentStatus.READY: "green",
    AgentStatus.BUSY: "yellow",
    AgentStatus.STARTING: "cyan",
    AgentStatus.DRAINING: "magenta",
}
#: Space between two columns (padding on both sides of a one-character rule).
_GAP = 3
#: Narrowest a folding column is allowed to get.
_FOLD_MIN = 12


@dataclass(frozen=True, slots=True)
class Column:
    """One column: its header, its cells, how important it is (0 = always shown, then in
    increasing order while there is room) and whether it may fold (wrap) to fit."""

    header: str
    cells: Sequence[str | Text]  # a str is plain text
    rank: int
    justify: Literal["left", "right"] = "left"
    fold: bool = False

    def texts(self) -> list[Text]:
        """The cells as rich ``Text`` (a ``str`` is plain text, never markup; its control
        characters and line breaks are shown escaped: the data comes from the bus)."""
        return [Text(safe_text(c)) if isinstance(c, str) else c for c in self.cells]

    def width(self) -> int:
        """The widest line of the header and the cells."""
        lines = [self.header, *(line for t in self.texts() for line in t.plain.splitlines())]
        return max(Text(line).cell_len for line in lines)


def fitted_table(
    columns: Sequence[Column], width: int, *, title: str | None = None, note: str = ""
) -> Table:
    """A table of the columns that fit in ``width`` (by rank), in their given order."""
    used = 0
    kept: set[int] = set()
    for i in sorted(range(len(columns)), key=lambda i: columns[i].rank):
        col = columns[i]
        need = (min(col.width(), _FOLD_MIN) if col.fold else col.width()) + (_GAP if kept else 0)
        if col.rank == 0 or used + need <= width:
            kept.add(i)
            used += need
    left_out = [c.header for i, c in enumerate(columns) if i not in kept]
    if left_out:
        note = "; ".join(x for x in (note, f"too narrow for: {', '.join(left_out)}") if x)
    table = Table(
        title=title,
        caption=note or None,
        header_style="bold",
        box=box.SIMPLE_HEAD,
        show_edge=False,
        pad_edge=False,
    )
    shown = [c for i, c in enumerate(columns) if i in kept]
    for col in shown:
        table.add_column(
            col.header, justify=col.justify, no_wrap=not col.fold,
            overflow="fold" if col.fold else "ellipsis",
            min_width=None if col.fold else col.width(),
        )  # fmt: skip
    for row in zip(*(c.texts() for c in shown), strict=True):
        table.add_row(*row)
    return table


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


def _status(rec: AgentRecord) -> Text:
    return Text(rec.status.value, style=_STATUS_STYLE.get(rec.status, ""))


def agents_table(records: list[AgentRecord], width: int, title: str | None = None) -> Table:
    """The live agents, sorted by role and name, as many columns as ``width`` allows."""
    recs = sorted(records, key=lambda r: (r.role, r.name))
    now = datetime.now(UTC)
    columns = [
        Column("name", [Text(r.name) for r in recs], 0),
        Column("role", [Text(r.role) for r in recs], 1),
        Column("status", [_status(r) for r in recs], 2),
        Column("load/max", [f"{r.load}/{r.max_concurrency}" for r in recs], 3, "right"),
        Column("version", [Text(r.version) for r in recs], 5),
        Column("capabilities", [Text(", ".join(r.capabilities)) for r in recs], 6, fold=True),
        Column("tags", [Text(", ".join(r.tags)) for r in recs], 7, fold=True),
        Column(
            "host",
            [Text(f"{r.host or '-'}" + (f":{r.pid}" if r.pid is not None else "")) for r in recs],
            8,
            fold=True,
        ),
        Column("last seen", [ago(r.last_seen, now) for r in recs], 4, "right"),
    ]
    return fitted_table(columns, width, title=title)


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
        table.add_row(key, Text(safe_text(text)))  # data: never markup, never escapes
    return table


def print_records(console: Console, records: list[AgentRecord], empty: str) -> None:
    if not records:
        console.print(empty)
        return
    console.print(agents_table(records, console.width))

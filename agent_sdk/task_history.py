"""Task history: the outcome of each message an agent handled, in a bounded stream per agent.

Each entry of ``KeySpace.tasks(name)`` (``MAXLEN ~ AGENTBUS_TASK_HISTORY``) is one handled
message, flat strings a person can read with ``XREVRANGE``::

    id           01J…            the message id
    type         summarize       its type
    sender       planner-1       who sent it
    kind         request         send, request, broadcast or publish
    start        2026-11-21T10:00:00.123Z   when the handler started
    duration_ms  12.345          how long it ran
    outcome      ok              ``ok``, or the error code of the failure (``handler_error``, ...)
    instance     01J…            the agent instance that handled it
    session      chat-42         the message's ``session`` header, when it had one

Recording costs no round trip of its own: ``TaskBuffer.add`` keeps a few strings in memory (never
the payload), and the usage stats' flush (``agent_sdk.usage``, every second) writes them in the
same script call as the counters. The buffer keeps at most the stream's length: a burst larger
than that between two flushes keeps its newest tasks, as the stream would.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
import redis.asyncio as aioredis

from agent_sdk.connection import redis_errors
from agent_sdk.settings import Settings
from schemas.envelope import format_time
from schemas.errors import InvalidInput

__all__ = ["TaskBuffer", "TaskRecord", "parse_task", "read_tasks"]

#: One pending task: (id, type, sender, kind, session, start epoch s, seconds, error code).
_Pending = tuple[str, str, str, str, str | None, float, float, str | None]


class TaskBuffer:
    """Tasks handled since the last flush, at most ``limit`` (the newest are kept)."""

    def __init__(self, limit: int, instance_id: str = "") -> None:
        self.limit = limit
        self.instance_id = instance_id
        self._items: deque[_Pending] = deque(maxlen=limit)

    def __len__(self) -> int:
        return len(self._items)

    def add(
        self,
        message_id: str,
        message_type: str,
        sender: str,
        kind: str,
        session: str | None,
        started: float,
        seconds: float,
        error_code: str | None,
    ) -> None:
        """One handled message (no I/O). ``started``: ``time.time()`` when its handler began."""
        self._items.append(
            (message_id, message_type, sender, kind, session, started, seconds, error_code)
        )

    def take(self) -> list[_Pending]:
        """Everything pending, oldest first; the buffer is empty afterwards."""
        items = list(self._items)
        self._items.clear()
        return items

    def give_back(self, items: list[_Pending]) -> None:
        """Put back what a failed flush took, before what was added since (newest kept)."""
        merged: deque[_Pending] = deque(items, maxlen=self.limit)
        merged.extend(self._items)
        self._items = merged

    def wire(self, items: list[_Pending]) -> bytes:
        """The tasks as the usage script takes them: a JSON list of flat field/value lists."""
        rows = []
        for mid, mtype, sender, kind, session, started, seconds, code in items:
            row = [
                "id", mid, "type", mtype, "sender", sender, "kind", kind,
                "start", format_time(datetime.fromtimestamp(started, UTC)),
                "duration_ms", f"{seconds * 1000.0:.3f}", "outcome", code or "ok",
                "instance", self.instance_id,
            ]  # fmt: skip
            if session:
                row += ["session", session]
            rows.append(row)
        return orjson.dumps(rows)


@dataclass(frozen=True, slots=True)
class TaskRecord:
    """One handled message, as read back from the stream."""

    #: The stream entry id (a cursor: ``read_tasks(before=...)``).
    entry_id: str
    id: str
    type: str
    sender: str
    kind: str
    start: str
    duration_ms: float
    outcome: str
    instance: str
    session: str | None = None

    @property
    def ok(self) -> bool:
        return self.outcome == "ok"

    def as_dict(self) -> dict[str, Any]:
        return {
            "entry_id": self.entry_id,
            "id": self.id,
            "type": self.type,
            "sender": self.sender,
            "kind": self.kind,
            "start": self.start,
            "duration_ms": self.duration_ms,
            "ok": self.ok,
            "outcome": self.outcome,
            "instance": self.instance,
            "session": self.session,
        }


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def parse_task(entry_id: bytes | str, fields: dict[Any, Any]) -> TaskRecord:
    """A ``TaskRecord`` from one stream entry (missing fields read as empty)."""
    f = {_text(k): _text(v) for k, v in fields.items()}
    try:
        duration = float(f.get("duration_ms", "0"))
    except ValueError:
        duration = 0.0
    return TaskRecord(
        entry_id=_text(entry_id),
        id=f.get("id", ""),
        type=f.get("type", ""),
        sender=f.get("sender", ""),
        kind=f.get("kind", ""),
        start=f.get("start", ""),
        duration_ms=duration,
        outcome=f.get("outcome", ""),
        instance=f.get("instance", ""),
        session=f.get("session") or None,
    )


def _check_cursor(before: str) -> str:
    ms, dash, seq = before.partition("-")
    if not (ms.isdigit() and len(ms) <= 20 and (not dash or (seq.isdigit() and len(seq) <= 20))):
        raise InvalidInput(f"task cursor {before!r} does not parse: use an entry_id")
    return before


async def read_tasks(
    client: aioredis.Redis,
    settings: Settings,
    name: str,
    *,
    limit: int = 50,
    before: str | None = None,
) -> tuple[list[TaskRecord], str | None]:
    """The newest ``limit`` tasks of agent ``name`` (older than ``before``, an ``entry_id``),
    newest first, and the cursor of the next page (``None``: no older ones)."""
    if not 1 <= limit <= 1000:
        raise InvalidInput(f"limit must be 1-1000, got {limit}")
    high = "+" if before is None else "(" + _check_cursor(before)
    with redis_errors(settings, f"reading the task history of {name!r}"):
        entries: Any = await client.xrevrange(
            settings.keys.tasks(name), max=high, min="-", count=limit + 1
        )
    records = [parse_task(eid, fields) for eid, fields in entries[:limit]]
    more = len(entries) > limit
    return records, (records[-1].entry_id if more and records else None)

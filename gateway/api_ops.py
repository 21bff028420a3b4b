"""``GET /api/stats``, ``GET /api/deadletters`` and ``POST /api/deadletters/{id}/replay``."""

from __future__ import annotations

import re
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request

from agent_sdk.connection import redis_errors
from agent_sdk.messaging import DeadLetter, replay
from agent_sdk.watch import latest_id
from gateway.auth import Operator, Viewer, gateway_of
from gateway.errors import NotFound
from gateway.fleet import fleet_stats
from schemas.errors import InvalidInput

__all__ = ["router"]

router = APIRouter(prefix="/api", tags=["operations"])

_ENTRY_ID = re.compile(r"^\d{1,20}-\d{1,20}$")


def _entry_id(value: str, what: str) -> str:
    if not _ENTRY_ID.match(value):
        raise InvalidInput(f"{what} {value!r} does not parse: use a stream id like 1700000000000-0")
    return value


@router.get("/stats", summary="Counts by status and role, load, error rates, dead letters, lag")
async def stats(request: Request, who: Viewer) -> dict[str, Any]:
    """The fleet at a glance: agents by status and by role, total load and capacity,
    invocations and errors (all, and by message type), the lowest health score, dead letters,
    the control stream's length and lag (entries the coordinators have not read yet), and the
    live coordinators. ``revision`` is the change feed's current revision."""
    gateway = gateway_of(request)
    revision = await latest_id(gateway.bus.client, gateway.settings.keys.events())
    agents = await gateway.bus.discover()
    result = await fleet_stats(gateway.bus.client, gateway.lanes, gateway.settings, agents)
    return {**result.as_dict(), "revision": revision}


def letter_json(letter: DeadLetter) -> dict[str, Any]:
    return {
        "id": letter.id,
        "reason": letter.reason,
        "code": letter.code,
        "source": letter.source,
        "source_id": letter.source_id,
        "failed_at": letter.failed_at,
        "type": letter.type,
        "original": letter.original,
    }


@router.get("/deadletters", summary="Dead letters, newest first, paginated")
async def deadletters(
    request: Request,
    who: Viewer,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    cursor: Annotated[str | None, Query(description="next_cursor of the previous page.")] = None,
) -> dict[str, Any]:
    gateway = gateway_of(request)
    key = gateway.settings.keys.deadletter()
    high = "+" if cursor is None else f"({_entry_id(cursor, 'cursor')}"
    with redis_errors(gateway.settings, "listing dead letters"):
        async with gateway.bus.client.pipeline(transaction=True) as pipe:  # one snapshot
            pipe.xrevrange(key, max=high, count=limit + 1)
            pipe.xlen(key)
            entries, total = await pipe.execute()
    letters = [
        DeadLetter.from_entry(eid.decode() if isinstance(eid, bytes) else eid, fields)
        for eid, fields in entries[:limit]
    ]
    return {
        "deadletters": [letter_json(d) for d in letters],
        "total": int(total),
        "next_cursor": letters[-1].id if len(entries) > limit else None,
    }


@router.post("/deadletters/{letter_id}/replay", summary="Put a dead letter back on its stream")
async def replay_letter(request: Request, letter_id: str, who: Operator) -> dict[str, Any]:
    """Puts the message back where it came from (it keeps its message id) and deletes the dead
    letter. Needs an operator token."""
    gateway = gateway_of(request)
    _entry_id(letter_id, "dead letter id")
    try:
        new_id = await replay(gateway.bus.client, gateway.settings, letter_id)
    except InvalidInput as e:
        if e.description.startswith("no dead letter"):
            raise NotFound(e.description, details={"id": letter_id}) from e
        raise
    return {"replayed": letter_id, "new_id": new_id}

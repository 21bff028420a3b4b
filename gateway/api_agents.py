"""``GET /api/agents`` (discovery over HTTP: filters, text search, pagination),
``GET /api/agents/{name}`` (record, usage, health, recent tasks) and
``GET /api/agents/{name}/tasks`` (the task history, newest first, paginated)."""

from __future__ import annotations

import base64
import binascii
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Query, Request, Response

from agent_sdk.task_history import read_tasks
from agent_sdk.watch import latest_id
from gateway.auth import Viewer, gateway_of
from gateway.errors import NotFound
from gateway.fleet import usage_of
from gateway.health import health, health_score
from schemas.agent import AgentRecord, AgentStatus
from schemas.errors import InvalidInput
from schemas.names import check_identifier

__all__ = ["router"]

router = APIRouter(prefix="/api", tags=["agents"])

MAX_LIMIT = 1000
#: Tasks shown with an agent's details (``GET /api/agents/{name}``).
RECENT_TASKS = 20


def encode_cursor(name: str) -> str:
    return base64.urlsafe_b64encode(name.encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> str:
    try:
        name = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        return check_identifier(name, "cursor")
    except (binascii.Error, UnicodeDecodeError, ValueError) as e:
        raise InvalidInput(
            f"cursor {cursor!r} does not parse: pass back the next_cursor of a previous page"
        ) from e


def checked_name(name: str, what: str = "agent name") -> str:
    try:
        return check_identifier(name, what)
    except ValueError as e:
        raise InvalidInput(str(e)) from e


def _matches(record: AgentRecord, words: list[str]) -> bool:
    text = f"{record.name}\n{record.description}".lower()
    return all(w in text for w in words)


def agent_json(record: AgentRecord) -> dict[str, Any]:
    return record.model_dump(mode="json")


_RECORD_JSON = AgentRecord.__pydantic_serializer__


def agent_bytes(record: AgentRecord, health_score: int) -> bytes:
    """``{**agent_json(record), "health": health_score}`` as JSON bytes, encoded by pydantic's
    serializer straight to JSON (no dict in between): the same bytes orjson gives for
    ``agent_json`` plus the score (``tests/gateway/test_gateway_api.py`` checks it)."""
    encoded: bytes = _RECORD_JSON.to_json(record)
    return b'%s,"health":%d}' % (encoded[:-1], health_score)


@router.get("/agents", summary="Live agents: discovery filters, text search, pagination")
async def list_agents(
    request: Request,
    who: Viewer,
    role: Annotated[str | None, Query(description="Only this role.")] = None,
    capability: Annotated[
        list[str] | None, Query(description="Has every one of these (repeatable).")
    ] = None,
    tag: Annotated[list[str] | None, Query(description="Has any of these (repeatable).")] = None,
    status: Annotated[
        list[AgentStatus] | None, Query(description="In any of these statuses (repeatable).")
    ] = None,
    max_load: Annotated[int | None, Query(ge=0, description="load <= max_load.")] = None,
    version: Annotated[str | None, Query(description="A SemVer range: ^1.2, >=1 <2.")] = None,
    q: Annotated[
        str | None,
        Query(max_length=200, description="Words that must all appear in name or description."),
    ] = None,
    min_health: Annotated[
        int | None, Query(ge=0, le=100, description="Health score at least this.")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT, description="Page size.")] = 100,
    cursor: Annotated[str | None, Query(description="next_cursor of the previous page.")] = None,
) -> Response:
    """A page of live agents sorted by name, each with its health score.

    ``revision`` is the change feed's revision read *before* the agents: follow
    ``/api/events?since=<revision>`` to keep the page current with nothing missed.
    """
    gateway = gateway_of(request)
    bus = gateway.bus
    revision = await latest_id(bus.client, gateway.settings.keys.events())
    records = await bus.discover(
        role=role,
        capabilities=capability or (),
        tags=tag or (),
        status=status,
        max_load=max_load,
        version=version,
    )
    words = q.lower().split() if q else []
    if words:
        records = [r for r in records if _matches(r, words)]
    after = decode_cursor(cursor) if cursor else None
    scores: dict[str, int] = {}
    if min_health is not None:
        usage = await usage_of(gateway.lanes, gateway.settings, (r.name for r in records))
        scores = {r.name: health_score(r, usage[r.name]) for r in records}
        records = [r for r in records if scores[r.name] >= min_health]
    total = len(records)
    if after is not None:
        records = [r for r in records if r.name > after]
    page = records[:limit]
    if min_health is None:
        usage = await usage_of(gateway.lanes, gateway.settings, (r.name for r in page))
        scores = {r.name: health_score(r, usage[r.name]) for r in page}
    tail = {
        "total": total,
        "next_cursor": encode_cursor(page[-1].name) if len(records) > limit else None,
        "revision": revision,
    }
    # each record encoded straight to JSON by pydantic, the rest by orjson: one pass, no dicts
    agents = b",".join([agent_bytes(r, scores[r.name]) for r in page])
    body = b'{"agents":[' + agents + b"]," + orjson.dumps(tail)[1:]
    return Response(body, media_type="application/json")


@router.get(
    "/agents/{name}", summary="One live agent: record, usage by message type, health, tasks"
)
async def get_agent(request: Request, name: str, who: Viewer) -> dict[str, Any]:
    """The agent's record, its usage stats by message type (current instance), its health
    score with what it was computed from (docs/GATEWAY.md, "Health score") and its
    ``RECENT_TASKS`` newest tasks (more: ``/api/agents/{name}/tasks``)."""
    gateway = gateway_of(request)
    record = await gateway.bus.get(checked_name(name))
    if record is None:
        raise NotFound(f"no live agent named {name!r}", details={"name": name})
    usage = (await usage_of(gateway.lanes, gateway.settings, [name]))[name]
    tasks, _ = await read_tasks(gateway.bus.client, gateway.settings, name, limit=RECENT_TASKS)
    return {
        "agent": agent_json(record),
        "usage": [u.as_dict() for u in usage],
        "health": health(record, usage).as_dict(),
        "tasks": [t.as_dict() for t in tasks],
    }


@router.get("/agents/{name}/tasks", summary="An agent's task history, newest first")
async def get_tasks(
    request: Request,
    name: str,
    who: Viewer,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT, description="Page size.")] = 50,
    cursor: Annotated[str | None, Query(description="next_cursor of the previous page.")] = None,
) -> dict[str, Any]:
    """Each handled message: ``type``, ``sender``, ``kind``, ``start``, ``duration_ms``, ``ok``
    and ``outcome`` (``ok`` or the error code), ``instance``, ``session``. The history outlives
    the agent (``AGENTBUS_TASK_HISTORY`` entries are kept); 404 for a name with neither a live
    agent nor a history."""
    gateway = gateway_of(request)
    checked_name(name)
    client, settings = gateway.bus.client, gateway.settings
    tasks, next_cursor = await read_tasks(client, settings, name, limit=limit, before=cursor)
    if not tasks and cursor is None and await gateway.bus.get(name) is None:
        raise NotFound(f"no agent named {name!r} and no task history", details={"name": name})
    return {"tasks": [t.as_dict() for t in tasks], "next_cursor": next_cursor}

"""Live streams over Server-Sent Events and WebSocket.

* ``GET /api/events``: the registry change feed (``?role=&name=&type=`` filters);
* ``GET /api/sessions/{id}/events``: one session's activity;
* ``/api/events/ws`` and ``/api/sessions/{id}/events/ws``: the same over WebSocket;
* ``POST /api/sessions``: start a session owned by the caller.

A session is read in the caller's tenant (``gateway.auth.session_tenant``); an operator may name
another with ``?tenant=``.

Each event's SSE ``id`` is its stream id (the revision): a client that reconnects with
``Last-Event-ID`` (``EventSource`` does it by itself) or ``?since=`` gets exactly the events
after it. The first frame is ``ready`` (``{"revision": ...}``: where the live part starts);
``keepalive`` events (real events, not comments) come after each quiet ``gateway_keepalive``
seconds; a stream ends with a ``cutoff`` event (the client was too slow: reconnect to resume)
or ``events_lost`` (the resume point was trimmed away: reload, then follow from the new
revision). The reading behind them is shared (``gateway.fanout``).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncGenerator, Callable
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request, Response, WebSocket, WebSocketDisconnect
from pydantic import BaseModel, ConfigDict, Field
from starlette.types import ASGIApp, Receive, Scope, Send

from agent_sdk.activity import DEFAULT_RETENTION
from agent_sdk.tasks import cancel_all
from gateway.api_agents import checked_name
from gateway.auth import (
    Viewer,
    can_read_session,
    claim_session,
    gateway_of,
    session_tenant,
    websocket_principal,
)
from gateway.errors import Forbidden
from gateway.fanout import Frame, StreamHub, follow_batches
from gateway.state import Gateway
from schemas.envelope import new_id
from schemas.errors import AgentbusError, InvalidInput
from schemas.events import RegistryEventType

__all__ = ["router"]

router = APIRouter(prefix="/api", tags=["streams"])

_ID = re.compile(r"^\d{1,20}-\d{1,20}$")
_SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
#: The first bytes of every stream: a browser reconnects after 1 s.
_RETRY = b"retry: 1000\n\n"
_SSE_RAW = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]
_EVENT_STREAM = {"content": {"text/event-stream": {}}, "description": "An SSE stream."}


def resume_point(last_event_id: str | None, since: str | None) -> str | None:
    """``Last-Event-ID`` (a reconnect) wins over ``?since=``; either must be a stream id."""
    value = last_event_id or since
    if value is None or value == "":
        return None
    if not _ID.match(value):
        raise InvalidInput(
            f"resume point {value!r} does not parse: use an event id such as 1700000000000-0"
        )
    return value


def sse(frame: Frame) -> bytes:
    """The frame as Server-Sent Events (encoded once, by the frame, for every client)."""
    return frame.sse


def ws_text(frame: Frame) -> str:
    ident = f'"{frame.id}"' if frame.id is not None else "null"
    return f'{{"event":"{frame.kind}","id":{ident},"data":{frame.data.decode()}}}'


def registry_filter(
    roles: list[str] | None, names: list[str] | None, types: list[str] | None
) -> Callable[[Frame], bool] | None:
    if types:
        known = {t.value for t in RegistryEventType}
        unknown = [t for t in types if t not in known]
        if unknown:
            raise InvalidInput(f"unknown event type(s) {unknown}: use {', '.join(sorted(known))}")
    if not (roles or names or types):
        return None
    role_set, name_set, type_set = set(roles or ()), set(names or ()), set(types or ())

    def accept(frame: Frame) -> bool:
        return (
            (not role_set or frame.attrs.get("role") in role_set)
            and (not name_set or frame.attrs.get("name") in name_set)
            and (not type_set or frame.attrs.get("type") in type_set)
        )

    return accept


def _follow(
    gateway: Gateway,
    hub: StreamHub,
    after: str | None,
    *,
    replay_all: bool,
    accept: Callable[[Frame], bool] | None,
) -> AsyncGenerator[list[Frame], None]:
    s = gateway.settings
    return follow_batches(
        hub, after, replay_all=replay_all, limit=s.gateway_client_queue,
        keepalive=s.gateway_keepalive, accept=accept,
    )  # fmt: skip


#: The session (and its tenant) whose hub a stream holds.
Held = tuple[str, str | None]


async def _close(
    frames: AsyncGenerator[list[Frame], None], gateway: Gateway, release: Held | None
) -> None:
    """Close a client's frames and let go of its session hub. The bookkeeping happens before
    any suspension (``follow``'s cleanup and ``release_session``'s counting are synchronous),
    so a cancellation arriving meanwhile cannot leave a hub held."""
    try:
        await frames.aclose()
    finally:
        if release is not None:
            await gateway.release_session(*release)


#: Scope key where ``with_direct_send`` leaves the server's own ``send``.
DIRECT_SEND = "agentbus.direct_send"


def with_direct_send(app: ASGIApp) -> ASGIApp:
    """``app`` with the server's ``send`` in each HTTP scope (``DIRECT_SEND``), for the
    streams' body frames. Starlette wraps ``send`` three times on the way to a route (its two
    exception layers note whether the response has started); a stream starts its response
    through those wrappers, then writes each event straight to the server: for 1,000 clients
    that is 3,000 coroutine calls less per event. Without it (an ASGI test client) the
    wrapped ``send`` does the same job."""

    async def direct(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            scope[DIRECT_SEND] = send
        await app(scope, receive, send)

    return direct


async def _until_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


class EventStream(Response):
    """An SSE response: one write per batch of frames (a client that fell behind catches up
    in few writes), written by a lean loop (no body generator in between); it closes its
    frames and releases its session hub when it ends, however it ends.

    Releasing from inside a frame generator is not enough: a client that goes away while the
    response head is being written cancels the response before the generator first runs, and
    a generator that never ran never runs its ``finally``: the hub (and its blocking Redis
    connection) stayed held for good, and after ``gateway_max_sessions`` such clients every
    session stream was refused. A client that disconnects is noticed by a task reading the
    request side (the server says ``http.disconnect``), which ends the writing.
    """

    media_type = "text/event-stream"

    def __init__(
        self, frames: AsyncGenerator[list[Frame], None], gateway: Gateway, release: Held | None
    ) -> None:
        super().__init__(headers=_SSE_HEADERS)  # what FastAPI looks at; the head is _SSE_RAW
        self._frames = frames
        self._gateway = gateway
        self._release = release

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            writer = asyncio.create_task(self._write(send, scope.get(DIRECT_SEND, send)))
            watcher = asyncio.create_task(_until_disconnect(receive))
            try:
                await asyncio.wait((writer, watcher), return_when=asyncio.FIRST_COMPLETED)
            finally:
                await cancel_all((writer, watcher))
            if writer.done() and not writer.cancelled():
                writer.result()  # its error, if any
        finally:
            await _close(self._frames, self._gateway, self._release)

    async def _write(self, send: Send, direct: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": _SSE_RAW})
        await send({"type": "http.response.body", "body": _RETRY, "more_body": True})
        async for batch in self._frames:
            body = batch[0].sse if len(batch) == 1 else b"".join([f.sse for f in batch])
            await direct({"type": "http.response.body", "body": body, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})


_Since = Annotated[
    str | None, Query(description="Resume after this event id (Last-Event-ID wins).")
]
_LastEventId = Annotated[str | None, Header(alias="Last-Event-ID", include_in_schema=False)]
_Tenant = Annotated[
    str | None,
    Query(description="The session's tenant (default: the caller's; another: operators only)."),
]


@router.get("/events", summary="The registry change feed (SSE)", responses={200: _EVENT_STREAM})
async def events(
    request: Request,
    who: Viewer,
    since: _Since = None,
    role: Annotated[list[str] | None, Query(description="Only these roles.")] = None,
    name: Annotated[list[str] | None, Query(description="Only these agents.")] = None,
    type: Annotated[list[str] | None, Query(description="Only these event types.")] = None,
    last_event_id: _LastEventId = None,
) -> EventStream:
    """Without a resume point: only changes from now on (read ``/api/agents`` first and pass
    its ``revision`` as ``since``)."""
    gateway = gateway_of(request)
    after = resume_point(last_event_id, since)
    accept = registry_filter(role, name, type)
    await gateway.registry.start()
    frames = _follow(gateway, gateway.registry, after, replay_all=False, accept=accept)
    return EventStream(frames, gateway, None)


@router.get(
    "/sessions/{session}/events",
    summary="One session's activity events (SSE)",
    responses={200: _EVENT_STREAM},
)
async def session_events(
    request: Request,
    session: str,
    who: Viewer,
    since: _Since = None,
    tenant: _Tenant = None,
    last_event_id: _LastEventId = None,
) -> EventStream:
    """Without a resume point: every event the session still holds, then new ones. Readable by
    the session's owner and by operators."""
    gateway = gateway_of(request)
    checked_name(session, "session id")
    after = resume_point(last_event_id, since)
    owner_tenant = session_tenant(gateway, who, tenant)
    await can_read_session(gateway, who, session, owner_tenant)
    hub = gateway.session_hub(session, owner_tenant)
    try:
        await hub.start()
    except BaseException:
        await gateway.release_session(session, owner_tenant)
        raise
    frames = _follow(gateway, hub, after, replay_all=True, accept=None)
    return EventStream(frames, gateway, (session, owner_tenant))


class SessionBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    session: str | None = Field(
        default=None, max_length=128, description="The id to claim (default: a new one)."
    )


@router.post("/sessions", status_code=201, summary="Start a session owned by the caller")
async def start_session(request: Request, body: SessionBody, who: Viewer) -> dict[str, Any]:
    """Any user (viewers too) may start a session; its events are then readable with that
    user's tokens and by operators. 403 if another user owns that id already."""
    gateway = gateway_of(request)
    session = checked_name(body.session, "session id") if body.session else new_id()
    tenant = session_tenant(gateway, who)
    await claim_session(gateway, who, session, DEFAULT_RETENTION, tenant)
    return {"session": session, "owner": who.user, "tenant": tenant}


async def _serve_ws(
    websocket: WebSocket,
    frames: AsyncGenerator[list[Frame], None],
    gateway: Gateway,
    release: Held | None,
) -> None:
    try:
        async for batch in frames:
            for frame in batch:
                await websocket.send_text(ws_text(frame))
            if batch[-1].final:
                break
        await websocket.close()
    except WebSocketDisconnect:
        pass
    finally:
        await _close(frames, gateway, release)


async def _ws_refuse(websocket: WebSocket, error: AgentbusError) -> None:
    code = 1008 if isinstance(error, Forbidden) or error.code == "unauthorized" else 1003
    await websocket.close(code=code, reason=f"[{error.code}] {error.description}"[:120])


@router.websocket("/events/ws")
async def events_ws(websocket: WebSocket) -> None:
    """The change feed as WebSocket text messages ``{"event", "id", "data"}``; ``?since=``,
    ``?role=``, ``?name=``, ``?type=`` as for SSE."""
    gateway: Gateway = websocket.app.state.gateway
    params = websocket.query_params
    try:
        await websocket_principal(websocket)
        after = resume_point(None, params.get("since"))
        accept = registry_filter(
            params.getlist("role"), params.getlist("name"), params.getlist("type")
        )
        await gateway.registry.start()
    except AgentbusError as e:
        await _ws_refuse(websocket, e)
        return
    await websocket.accept()
    frames = _follow(gateway, gateway.registry, after, replay_all=False, accept=accept)
    await _serve_ws(websocket, frames, gateway, None)


@router.websocket("/sessions/{session}/events/ws")
async def session_events_ws(websocket: WebSocket, session: str) -> None:
    """A session's activity as WebSocket text messages; ``?since=`` and ``?tenant=`` as for
    SSE."""
    gateway: Gateway = websocket.app.state.gateway
    params = websocket.query_params
    try:
        who = await websocket_principal(websocket)
        checked_name(session, "session id")
        after = resume_point(None, params.get("since"))
        tenant = session_tenant(gateway, who, params.get("tenant") or None)
        await can_read_session(gateway, who, session, tenant)
        hub = gateway.session_hub(session, tenant)
    except AgentbusError as e:
        await _ws_refuse(websocket, e)
        return
    try:
        await hub.start()
        await websocket.accept()
    except BaseException:
        await gateway.release_session(session, tenant)
        raise
    frames = _follow(gateway, hub, after, replay_all=True, accept=None)
    await _serve_ws(websocket, frames, gateway, (session, tenant))

"""Activity events: what an agent does for a session, for the people watching it work.

Inside a handler::

    async with agent.activity(session_id) as act:      # agent_started
        await act.thinking({"plan": "search, then summarize"})
        await act.tool_executing("search", {"q": "redis streams"})
        await act.tool_completed("search", {"hits": 3})
        act.result = {"summary": "..."}                 # payload of agent_completed
    # agent_completed on a normal exit, agent_failed (with the error) on an exception

A session may belong to a **tenant** (a user, a team, a customer: docs/SECURITY.md, "Tenants"):
its keys then live under the tenant's prefix, which is what acl mode grants to the identities
acting for that tenant. A message started through the gateway carries its session and tenant in
its ``session`` and ``tenant`` headers; ``agent.activity(msg)`` takes both from there::

    @agent.on("ask")
    async def ask(payload: Any, msg: Message) -> Any:
        async with agent.activity(msg) as act:          # msg.headers: session (+ tenant)
            ...

Each event goes to the session's stream ``KeySpace.session_activity(session, tenant)``
(``MAXLEN ~``, expiring ``retention`` after the last write) and, as JSON, to
``KeySpace.session_channel(session, tenant)``. One
Lua script takes the next sequence number (``INCR`` of ``KeySpace.session_seq``), ``XADD``s and
publishes, so in the stream the order of entries *is* the order of ``seq``, also with many agents
writing to one session at once. ``ActivityLog.watch`` reads a session in order, resumable from the
id of the last event handled (``since``), with nothing lost.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from types import TracebackType
from typing import Any

import orjson
import redis.asyncio as aioredis

from agent_sdk.connection import ACCESS_ERRORS, access_error, redis_errors
from agent_sdk.settings import Settings
from agent_sdk.watch import tail_stream
from schemas.envelope import utcnow
from schemas.errors import AgentbusError, InvalidInput, PayloadTooLarge
from schemas.events import ActivityEvent, ActivityType
from schemas.names import check_identifier

__all__ = ["DEFAULT_MAXLEN", "DEFAULT_RETENTION", "TENANT_HEADER", "Activity", "ActivityLog"]

log = logging.getLogger("agentbus.activity")

#: Entries kept per session stream (approximately).
DEFAULT_MAXLEN = 10_000
#: Seconds a session's activity is kept after its last event.
DEFAULT_RETENTION = 7 * 24 * 3600.0
#: The envelope header naming the tenant of the message's ``session`` (set by the gateway).
TENANT_HEADER = "tenant"

_EMIT = """
-- Append one activity event to a session.
-- KEYS[1] = session activity stream, KEYS[2] = session sequence counter
-- ARGV[1] = approximate MAXLEN, ARGV[2] = retention ms (0: keep), ARGV[3] = mirror channel,
-- ARGV[4] = type, ARGV[5] = agent, ARGV[6] = session, ARGV[7] = at (ISO-8601),
-- ARGV[8] = payload JSON ('' for none), ARGV[9] = the mirror's JSON members after id and seq
local seq = redis.call('INCR', KEYS[2])
local id
if ARGV[8] == '' then
  id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', 'type', ARGV[4],
    'agent', ARGV[5], 'session', ARGV[6], 'seq', seq, 'at', ARGV[7])
else
  id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', 'type', ARGV[4],
    'agent', ARGV[5], 'session', ARGV[6], 'seq', seq, 'at', ARGV[7], 'payload', ARGV[8])
end
local ttl = tonumber(ARGV[2])
if ttl > 0 then
  redis.call('PEXPIRE', KEYS[1], ttl)
  redis.call('PEXPIRE', KEYS[2], ttl)
end
redis.call('PUBLISH', ARGV[3], '{"id":"' .. id .. '","seq":' .. seq .. ARGV[9] .. '}')
return {id, seq}
"""


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _check(session: str, tenant: str | None) -> None:
    try:
        check_identifier(session, "session id")
        if tenant is not None:
            check_identifier(tenant, "tenant")
    except ValueError as e:
        raise InvalidInput(str(e)) from e


class ActivityLog:
    """Writes and reads session activity on one Redis client. Cheap; one per ``Bus``."""

    def __init__(
        self,
        client: aioredis.Redis,
        settings: Settings,
        *,
        maxlen: int = DEFAULT_MAXLEN,
        retention: float = DEFAULT_RETENTION,
    ) -> None:
        self.client = client
        self._settings = settings
        self._keys = settings.keys
        self._maxlen = str(maxlen)
        self._retention_ms = str(round(retention * 1000))
        self._script = client.register_script(_EMIT)

    async def emit(
        self,
        session: str,
        agent: str,
        type: ActivityType | str,
        payload: Any = None,
        *,
        tenant: str | None = None,
    ) -> ActivityEvent:
        """Append one event to ``session`` (of ``tenant``, if any); returns it with its stream
        id and ``seq``. In acl mode, a session of a tenant the caller's identity does not act
        for fails with ``PermissionDenied``."""
        try:
            kind = ActivityType(type)
        except ValueError as e:
            known = ", ".join(t.value for t in ActivityType)
            raise InvalidInput(f"unknown activity type {type!r}: use one of {known}") from e
        _check(session, tenant)
        try:
            body = b"" if payload is None else orjson.dumps(payload)
        except TypeError as e:
            raise InvalidInput(f"activity payload is not JSON-serialisable: {e}") from e
        if len(body) > self._settings.max_payload_bytes:
            raise PayloadTooLarge(
                f"activity payload is {len(body)} bytes; the limit is "
                f"{self._settings.max_payload_bytes}"
            )
        at = utcnow()
        at_text = at.isoformat(timespec="milliseconds").replace("+00:00", "Z")
        rest = b"," + orjson.dumps({"type": kind.value, "agent": agent, "session": session})[1:-1]
        rest += b',"at":"' + at_text.encode() + b'"'
        if payload is not None:
            rest += b',"payload":' + body
        args = [
            self._maxlen,
            self._retention_ms,
            self._keys.session_channel(session, tenant),
            kind.value,
            agent,
            session,
            at_text,
            body,
            rest,
        ]
        with redis_errors(self._settings, f"writing activity of session {session!r}"):
            entry_id, seq = await self._script(
                keys=[
                    self._keys.session_activity(session, tenant),
                    self._keys.session_seq(session, tenant),
                ],
                args=args,
            )
        return ActivityEvent(
            id=_text(entry_id),
            type=kind,
            agent=agent,
            session=session,
            seq=int(seq),
            at=at,
            payload=payload,
        )

    async def watch(
        self,
        session: str,
        since: str | None = None,
        *,
        tenant: str | None = None,
        block_ms: int = 5_000,
    ) -> AsyncIterator[ActivityEvent]:
        """A session's events in order: all still held (``since=None``), only new ones
        (``"now"``), or those after a stream id (``event.id`` of the last one handled)."""
        _check(session, tenant)
        key = self._keys.session_activity(session, tenant)
        entries = tail_stream(self.client, key, since, block_ms=block_ms)
        while True:
            try:  # a refusal (acl mode: another tenant's session): PermissionDenied
                entry_id, fields = await anext(entries)
            except StopAsyncIteration:
                return
            except ACCESS_ERRORS as e:
                raise access_error(self._settings, f"reading session {session!r}", e) from e
            try:
                yield ActivityEvent.from_fields(entry_id, fields)
            except ValueError as e:
                log.warning("skipping undecodable activity entry %s in %s: %s", entry_id, key, e)

    def session(self, session: str, agent: str, tenant: str | None = None) -> Activity:
        """An ``async with`` block reporting ``agent``'s work for ``session`` (of ``tenant``)."""
        _check(session, tenant)
        return Activity(self, session, agent, tenant)


class Activity:
    """Reports one agent's work for one session; see the module docstring.

    ``async with`` emits ``agent_started`` on entry and ``agent_completed`` (payload:
    ``result``) or ``agent_failed`` (payload: the error) on exit. The methods can also be used
    without the block.
    """

    def __init__(
        self, log_: ActivityLog, session: str, agent: str, tenant: str | None = None
    ) -> None:
        self._log = log_
        self.session = session
        self.agent = agent
        self.tenant = tenant
        #: Payload of ``agent_completed``; set it before the block ends.
        self.result: Any = None
        self.last: ActivityEvent | None = None

    async def emit(self, type: ActivityType | str, payload: Any = None) -> ActivityEvent:
        self.last = await self._log.emit(
            self.session, self.agent, type, payload, tenant=self.tenant
        )
        return self.last

    async def started(self, payload: Any = None) -> ActivityEvent:
        return await self.emit(ActivityType.AGENT_STARTED, payload)

    async def thinking(self, payload: Any = None) -> ActivityEvent:
        return await self.emit(ActivityType.AGENT_THINKING, payload)

    async def tool_executing(self, tool: str, arguments: Any = None) -> ActivityEvent:
        return await self.emit(ActivityType.TOOL_EXECUTING, {"tool": tool, "arguments": arguments})

    async def tool_completed(
        self, tool: str, result: Any = None, *, error: str | None = None
    ) -> ActivityEvent:
        body: dict[str, Any] = {"tool": tool, "result": result}
        if error is not None:
            body["error"] = error
        return await self.emit(ActivityType.TOOL_COMPLETED, body)

    async def completed(self, payload: Any = None) -> ActivityEvent:
        return await self.emit(ActivityType.AGENT_COMPLETED, payload)

    async def failed(self, error: BaseException | str) -> ActivityEvent:
        return await self.emit(ActivityType.AGENT_FAILED, _error_payload(error))

    async def __aenter__(self) -> Activity:
        await self.started()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is None:
            await self.completed(self.result)
            return
        try:
            await self.failed(exc)
        except AgentbusError as e:  # never hide the handler's own exception behind ours
            log.warning("could not report agent_failed for session %s: %s", self.session, e)


def _error_payload(error: BaseException | str) -> dict[str, Any]:
    if isinstance(error, str):
        return {"error": {"code": "handler_error", "description": error}}
    if isinstance(error, AgentbusError):
        return {"error": {"code": error.code, "description": error.description}}
    return {
        "error": {
            "code": "handler_error",
            "description": str(error) or type(error).__name__,
            "type": type(error).__name__,
        }
    }

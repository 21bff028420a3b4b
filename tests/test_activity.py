"""Session activity: ordered by seq, per session, resumable, mirrored on pub/sub."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis

from agent_sdk import Agent
from agent_sdk.activity import ActivityLog
from agent_sdk.connection import make_client
from agent_sdk.messaging import Message
from agent_sdk.settings import Settings
from schemas.envelope import Envelope, Kind
from schemas.errors import InvalidInput, PayloadTooLarge
from schemas.events import ActivityEvent, ActivityType
from schemas.keys import KeySpace


@pytest.fixture
async def client(settings: Settings) -> AsyncIterator[aioredis.Redis]:
    c = make_client(settings)
    yield c
    await c.aclose()


@pytest.fixture
def activity(client: aioredis.Redis, settings: Settings) -> ActivityLog:
    return ActivityLog(client, settings, retention=60)


async def _take(
    log: ActivityLog, session: str, n: int, since: str | None = None
) -> list[ActivityEvent]:
    out: list[ActivityEvent] = []
    async for event in log.watch(session, since, block_ms=100):
        out.append(event)
        if len(out) == n:
            break
    return out


async def test_the_activity_block_reports_a_handlers_work_in_order(activity: ActivityLog) -> None:
    async with activity.session("s1", "researcher") as act:
        await act.thinking({"plan": "search"})
        await act.tool_executing("search", {"q": "redis"})
        await act.tool_completed("search", {"hits": 3})
        act.result = {"answer": 42}
    events = await _take(activity, "s1", 5)
    assert [e.type for e in events] == [
        ActivityType.AGENT_STARTED,
        ActivityType.AGENT_THINKING,
        ActivityType.TOOL_EXECUTING,
        ActivityType.TOOL_COMPLETED,
        ActivityType.AGENT_COMPLETED,
    ]
    assert [e.seq for e in events] == [1, 2, 3, 4, 5]
    assert {(e.agent, e.session) for e in events} == {("researcher", "s1")}
    assert events[1].payload == {"plan": "search"}
    assert events[2].payload == {"tool": "search", "arguments": {"q": "redis"}}
    assert events[3].payload == {"tool": "search", "result": {"hits": 3}}
    assert events[4].payload == {"answer": 42}
    assert events[0].payload is None
    assert act.last is not None
    assert act.last.id == events[-1].id


async def test_an_exception_reports_agent_failed_and_propagates(activity: ActivityLog) -> None:
    async def handler() -> None:
        async with activity.session("s2", "a") as act:
            await act.thinking()
            raise RuntimeError("tool crashed")

    with pytest.raises(RuntimeError, match="tool crashed"):
        await handler()
    events = await _take(activity, "s2", 3)
    assert [e.type.value for e in events] == ["agent_started", "agent_thinking", "agent_failed"]
    assert events[-1].payload == {
        "error": {"code": "handler_error", "description": "tool crashed", "type": "RuntimeError"}
    }


async def test_two_sessions_never_mix(activity: ActivityLog) -> None:
    for i in range(5):
        await activity.emit("alice", "a", "agent_thinking", {"i": i})
        await activity.emit("bob", "b", "agent_thinking", {"i": i})
    alice = await _take(activity, "alice", 5)
    bob = await _take(activity, "bob", 5)
    assert {e.session for e in alice} == {"alice"}
    assert {e.agent for e in alice} == {"a"}
    assert {e.session for e in bob} == {"bob"}
    assert [e.seq for e in alice] == [e.seq for e in bob] == [1, 2, 3, 4, 5]
    # nothing else is waiting in alice's stream
    more = await activity.emit("alice", "a", "agent_completed")
    (nxt,) = await _take(activity, "alice", 1, since=alice[-1].id)
    assert nxt.id == more.id


async def test_1000_events_from_10_concurrent_sessions_arrive_complete_and_ordered(
    activity: ActivityLog, settings: Settings
) -> None:
    sessions = [f"sess-{i}" for i in range(10)]
    per_session = 100
    # readers start first and read live, on their own connections
    reader_client = make_client(settings)
    reader_log = ActivityLog(reader_client, settings)
    try:
        readers = [
            asyncio.create_task(_take(reader_log, s, per_session, since=None)) for s in sessions
        ]

        async def agent(session: str, name: str, count: int) -> None:
            for i in range(count):
                await activity.emit(session, name, "agent_thinking", {"by": name, "i": i})

        # two agents per session write at the same time: seq must still follow stream order
        await asyncio.gather(
            *(agent(s, f"{s}-{w}", per_session // 2) for s in sessions for w in ("x", "y"))
        )
        results = await asyncio.wait_for(asyncio.gather(*readers), 30)
    finally:
        await reader_client.aclose()
    for session, events in zip(sessions, results, strict=True):
        assert [e.seq for e in events] == list(range(1, per_session + 1))
        assert {e.session for e in events} == {session}
        for writer in ("x", "y"):
            mine = [e.payload["i"] for e in events if e.agent == f"{session}-{writer}"]
            assert mine == list(range(per_session // 2))  # each writer's own order kept


async def test_a_reader_resumes_from_the_last_id_without_loss(activity: ActivityLog) -> None:
    for i in range(6):
        await activity.emit("s3", "a", "agent_thinking", {"i": i})
    first = await _take(activity, "s3", 2)
    for i in range(6, 9):
        await activity.emit("s3", "a", "agent_thinking", {"i": i})
    rest = await _take(activity, "s3", 7, since=first[-1].id)
    assert [e.payload["i"] for e in first + rest] == list(range(9))


async def test_events_are_mirrored_as_json_on_the_session_channel(
    activity: ActivityLog, r: aioredis.Redis, keys: KeySpace
) -> None:
    pubsub = r.pubsub()
    await pubsub.subscribe(keys.session_channel("s4"))
    try:
        await pubsub.get_message(timeout=1)  # the subscribe confirmation
        sent = await activity.emit("s4", "a", "tool_executing", {"tool": "x", "n": [1, 2.5]})
        message = None
        while message is None:
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=5)
    finally:
        await pubsub.aclose()  # type: ignore[no-untyped-call]
    mirrored = orjson.loads(message["data"])
    assert list(mirrored) == ["id", "seq", "type", "agent", "session", "at", "payload"]
    assert ActivityEvent.model_validate(mirrored) == sent


async def test_keys_expire_after_the_retention_and_are_readable(
    activity: ActivityLog, r: aioredis.Redis, keys: KeySpace
) -> None:
    await activity.emit("s5", "a", "agent_started")
    assert 0 < await r.pttl(keys.session_activity("s5")) <= 60_000
    assert 0 < await r.pttl(keys.session_seq("s5")) <= 60_000
    entries: Any = await r.xrange(keys.session_activity("s5"))
    ((_, fields),) = entries
    assert fields["type"] == "agent_started"
    assert fields["seq"] == "1"
    assert fields["agent"] == "a"
    assert "payload" not in fields


async def test_bad_input_is_refused_before_it_is_written(
    activity: ActivityLog, r: aioredis.Redis, keys: KeySpace
) -> None:
    with pytest.raises(InvalidInput, match="session id"):
        await activity.emit("has space", "a", "agent_started")
    with pytest.raises(InvalidInput, match="JSON"):
        await activity.emit("s6", "a", "agent_thinking", {"x": object()})
    with pytest.raises(PayloadTooLarge):
        await activity.emit("s6", "a", "agent_thinking", "x" * (2 * 1024 * 1024))
    with pytest.raises(InvalidInput, match="unknown activity type 'not_a_type'"):
        await activity.emit("s6", "a", "not_a_type")
    assert not await r.exists(keys.session_activity("s6"), keys.session_seq("s6"))


async def test_a_tenants_session_and_activity_from_a_message(
    activity: ActivityLog, settings: Settings, r: aioredis.Redis
) -> None:
    keys = settings.keys
    await activity.emit("s7", "a1", "agent_started")
    await activity.emit("s7", "a1", "agent_started", tenant="acme")
    await activity.emit("s7", "a1", "agent_thinking", tenant="acme")
    assert await r.xlen(keys.session_activity("s7")) == 1  # untenanted: the keys as before
    assert await r.xlen(keys.session_activity("s7", "acme")) == 2  # the same id, another session
    assert await r.get(keys.session_seq("s7", "acme")) == "2"
    with pytest.raises(InvalidInput, match="tenant"):
        await activity.emit("s7", "a1", "agent_started", tenant="a:b")
    agent = Agent("a1", "r", settings=settings)
    with pytest.raises(InvalidInput, match="no session header"):
        agent.activity(Message(Envelope(kind=Kind.SEND, type="t", sender="x")))
    # with both headers: tests/security/test_sessions.py (through the gateway)

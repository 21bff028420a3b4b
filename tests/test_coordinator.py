"""The coordinator against a real Redis: announce, heartbeat, leave, refusals, the change feed."""

from __future__ import annotations

import time
from typing import Any

import orjson
import redis.asyncio as aioredis

from agent_sdk.connection import make_client
from coordinator import Coordinator, CoordinatorSettings
from coordinator.registry import Registry
from coordinator.validation import PreparedAnnounce, prepare_announce
from schemas.agent import AgentRecord
from schemas.events import RegistryEvent
from schemas.keys import KeySpace
from tests.fake_agents import FakeAgent
from tests.support import wait_for


async def events(r: aioredis.Redis, keys: KeySpace) -> list[RegistryEvent]:
    entries: Any = await r.xrange(keys.events())
    return [RegistryEvent.from_fields(eid, fields) for eid, fields in entries]


async def test_announce_stores_readable_record_and_indexes(
    coordinator: Coordinator, r: aioredis.Redis, keys: KeySpace
) -> None:
    agent = FakeAgent(
        r, keys, "summarizer-1", role="summarizer", capabilities=["text", "pdf"], tags=["eu"],
        version="1.2.3", host="box", pid=42,
    )  # fmt: skip
    reply = await agent.register()
    assert reply["kind"] == "reply"
    assert "error" not in reply
    assert reply["payload"]["name"] == "summarizer-1"
    assert reply["payload"]["instance_id"] == agent.instance_id

    raw = await r.hgetall(keys.record("summarizer-1"))
    assert raw["role"] == "summarizer"
    assert raw["version"] == "1.2.3"
    assert orjson.loads(raw["capabilities"]) == ["text", "pdf"]
    assert raw["last_seen"].endswith("Z")
    record = AgentRecord.from_hash(raw)
    assert record.instance_id == agent.instance_id
    assert record.ttl_ms == 500

    assert await r.sismember(keys.agents(), "summarizer-1")
    assert await r.sismember(keys.role_index("summarizer"), "summarizer-1")
    assert await r.sismember(keys.capability_index("pdf"), "summarizer-1")
    assert await r.sismember(keys.tag_index("eu"), "summarizer-1")
    assert await r.zscore(keys.deadlines(), "summarizer-1") is not None

    evs = await events(r, keys)
    assert [e.type for e in evs] == ["agent_registered"]
    assert evs[0].record is not None
    assert evs[0].record["name"] == "summarizer-1"
    assert coordinator.stats.announces == 1


async def test_heartbeat_extends_deadline_and_updates_load(
    coordinator: Coordinator, r: aioredis.Redis, keys: KeySpace
) -> None:
    agent = FakeAgent(r, keys, "a1")
    await agent.register()
    first = await r.zscore(keys.deadlines(), "a1")
    assert first is not None

    async def clock_moved_on() -> bool:  # a heartbeat in the same ms would change nothing
        sec, usec = await r.time()
        return sec * 1000 + usec // 1000 + agent.ttl_ms > first

    await wait_for(clock_moved_on, message="the Redis clock past the registration ms")
    entry_id = await agent.heartbeat(load=3)
    expected = int(entry_id.split("-")[0]) + agent.ttl_ms

    async def extended() -> bool:
        return await r.zscore(keys.deadlines(), "a1") == expected

    await wait_for(extended, message="deadline = heartbeat entry time + ttl")
    # equal when the heartbeat was written in the millisecond the announce was applied
    assert expected >= first
    assert await r.hget(keys.record("a1"), "load") == "3"
    assert coordinator.stats.heartbeats >= 1
    # load alone is no registry change: only the registration event
    assert [e.type for e in await events(r, keys)] == ["agent_registered"]


async def test_heartbeat_status_change_is_an_update_event(
    coordinator: Coordinator, r: aioredis.Redis, keys: KeySpace
) -> None:
    agent = FakeAgent(r, keys, "a1")
    await agent.register()
    await agent.heartbeat(status="draining")

    async def updated() -> list[RegistryEvent]:
        return [e for e in await events(r, keys) if e.type == "agent_updated"]

    (ev,) = await wait_for(updated)
    assert ev.changes == {"status": ["ready", "draining"]}
    assert await r.hget(keys.record("a1"), "status") == "draining"


async def test_leave_removes_at_once_with_event(
    coordinator: Coordinator, r: aioredis.Redis, keys: KeySpace
) -> None:
    agent = FakeAgent(r, keys, "a1", capabilities=["c1"], tags=["t1"])
    await agent.register()
    await agent.leave(reply=True)
    reply = await agent.next_reply()
    assert reply["type"] == "leave_result"
    assert reply["payload"] == {"removed": True}
    assert not await r.exists(keys.record("a1"))
    assert not await r.sismember(keys.agents(), "a1")
    assert not await r.sismember(keys.role_index("worker"), "a1")
    assert not await r.sismember(keys.capability_index("c1"), "a1")
    assert not await r.sismember(keys.tag_index("t1"), "a1")
    assert await r.zscore(keys.deadlines(), "a1") is None
    evs = await events(r, keys)
    assert [e.type for e in evs] == ["agent_registered", "agent_deregistered"]
    assert evs[1].reason == "left"
    assert coordinator.stats.leaves == 1


async def test_reannounce_same_instance_updates_with_changes(
    coordinator: Coordinator, r: aioredis.Redis, keys: KeySpace
) -> None:
    agent = FakeAgent(r, keys, "a1", capabilities=["old"], version="1.0.0")
    first = await agent.register()
    second = await agent.register(capabilities=["new"], version="1.1.0")
    assert second["payload"]["registered_at"] == first["payload"]["registered_at"]
    assert not await r.sismember(keys.capability_index("old"), "a1")
    assert await r.sismember(keys.capability_index("new"), "a1")
    evs = await events(r, keys)
    assert [e.type for e in evs] == ["agent_registered", "agent_updated"]
    assert evs[1].changes == {"capabilities": [["old"], ["new"]], "version": ["1.0.0", "1.1.0"]}
    # the same announcement again changes nothing: no event
    await agent.register(capabilities=["new"], version="1.1.0")
    assert len(await events(r, keys)) == 2


async def test_live_name_is_refused_with_holder_details(
    coordinator: Coordinator, r: aioredis.Redis, keys: KeySpace
) -> None:
    holder = FakeAgent(r, keys, "a1", host="box-1", pid=1234, ttl_ms=60_000)
    await holder.register()
    rival = FakeAgent(r, keys, "a1", host="box-2", pid=99)
    reply = await rival.register()
    assert reply.get("payload") is None
    error = reply["error"]
    assert error["code"] == "name_taken"
    details = error["details"]
    assert details["instance_id"] == holder.instance_id
    assert details["host"] == "box-1"
    assert details["pid"] == 1234
    assert details["last_seen"].endswith("Z")
    assert 0 < details["expires_in_ms"] <= 60_000
    assert await r.hget(keys.record("a1"), "instance_id") == holder.instance_id


async def test_name_of_expired_unswept_holder_is_taken_over(
    coordinator_settings: CoordinatorSettings, r: aioredis.Redis, keys: KeySpace
) -> None:
    """Straight through the registry scripts, so no sweeper can remove the holder first."""
    client = make_client(coordinator_settings)
    registry = Registry(client, coordinator_settings)
    holder = FakeAgent(r, keys, "a1")
    newcomer = FakeAgent(r, keys, "a1")
    try:
        for agent in (holder, newcomer):
            now_ms = int(time.time() * 1000)
            prepared = prepare_announce(agent.announce_payload(), now_ms)
            assert isinstance(prepared, PreparedAnnounce)
            assert await registry.announce(f"{now_ms}-0", prepared) is None
            # the holder's deadline has passed, but no sweep has removed it yet
            await r.zadd(keys.deadlines(), {"a1": 1})
    finally:
        await client.aclose()
    assert await r.hget(keys.record("a1"), "instance_id") == newcomer.instance_id
    types = [(e.type, e.reason, e.instance_id) for e in await events(r, keys)]
    assert types == [
        ("agent_registered", None, holder.instance_id),
        ("agent_expired", "replaced", holder.instance_id),
        ("agent_registered", None, newcomer.instance_id),
    ]


async def test_announce_past_its_deadline_is_dropped(
    coordinator: Coordinator, r: aioredis.Redis, keys: KeySpace
) -> None:
    """The agent gave up waiting (NoCoordinator): registering it now would create a ghost."""
    late = FakeAgent(r, keys, "late")
    await late.send(
        "announce",
        late.announce_payload(),
        reply_to=late.reply_key,
        deadline="2020-01-01T00:00:00.000Z",
    )
    assert "error" not in await FakeAgent(r, keys, "on-time").register()
    assert coordinator.stats.stale == 1
    assert await r.smembers(keys.agents()) == {"on-time"}
    assert await r.llen(late.reply_key) == 0


async def test_late_reannounce_never_moves_the_deadline_back(
    coordinator_settings: CoordinatorSettings, r: aioredis.Redis, keys: KeySpace
) -> None:
    client = make_client(coordinator_settings)
    registry = Registry(client, coordinator_settings)
    agent = FakeAgent(r, keys, "a1")
    now_ms = int(time.time() * 1000)
    try:
        prepared = prepare_announce(agent.announce_payload(), now_ms)
        assert isinstance(prepared, PreparedAnnounce)
        await registry.announce(f"{now_ms}-0", prepared)
        # the first deadline counts from when the announce was processed (not before its entry)
        first_deadline = await r.zscore(keys.deadlines(), "a1")
        assert first_deadline is not None
        assert first_deadline >= now_ms + agent.ttl_ms
        heartbeat_ms = now_ms + 10_000  # a heartbeat written later was applied first
        assert (
            await registry.heartbeats(
                [(f"{heartbeat_ms}-0", "a1", agent.instance_id, "0", "ready", "0")]
            )
            == []
        )
        await registry.announce(f"{now_ms}-1", prepared)
    finally:
        await client.aclose()
    assert await r.zscore(keys.deadlines(), "a1") == heartbeat_ms + agent.ttl_ms


async def test_control_stream_is_trimmed_to_its_cap(
    coordinator_settings: CoordinatorSettings, r: aioredis.Redis, keys: KeySpace
) -> None:
    settings = coordinator_settings.model_copy(update={"control_maxlen": 10, "claim_idle": 0.05})
    ghost = FakeAgent(r, keys, "ghost")
    for _ in range(1000):
        await ghost.heartbeat()
    async with Coordinator(settings):

        async def trimmed() -> bool:
            return int(await r.xlen(keys.control())) < 1000

        await wait_for(trimmed, message="control stream trimmed")


async def test_events_are_mirrored_on_the_channel_as_json(
    coordinator: Coordinator, r: aioredis.Redis, keys: KeySpace
) -> None:
    pubsub = r.pubsub()
    await pubsub.subscribe(keys.events_channel())
    try:
        await pubsub.get_message(timeout=5)  # the subscribe confirmation
        agent = FakeAgent(r, keys, "a1", version="1.0.0")
        await agent.register()
        await agent.register(version="2.0.0")
        received: list[dict[str, Any]] = []

        async def two_events() -> bool:
            msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.1)
            if msg is not None:
                received.append(orjson.loads(msg["data"]))
            return len(received) == 2

        await wait_for(two_events, message="two published events")
    finally:
        await pubsub.aclose()
    stored = await events(r, keys)
    assert [m["revision"] for m in received] == [e.revision for e in stored]
    registered, updated = received
    assert registered["type"] == "agent_registered"
    assert registered["record"]["name"] == "a1"  # nested JSON, not a string
    assert updated["type"] == "agent_updated"
    assert updated["changes"] == {"version": ["1.0.0", "2.0.0"]}
    assert RegistryEvent.model_validate(updated).changes == stored[1].changes


async def test_announce_processed_late_is_not_registered_overdue(
    coordinator_settings: CoordinatorSettings, r: aioredis.Redis, keys: KeySpace
) -> None:
    """Behind a backlog, an announce written a TTL ago still gets a full TTL from processing.

    (A fleet starting at once fills the control stream; the agent heartbeats only after it
    hears it was accepted, so a deadline counted from the entry time would expire it at once.)
    """
    client = make_client(coordinator_settings)
    registry = Registry(client, coordinator_settings)
    agent = FakeAgent(r, keys, "late")
    written_ms = int(time.time() * 1000) - 5 * agent.ttl_ms  # entry written five TTLs ago
    try:
        prepared = prepare_announce(agent.announce_payload(), written_ms)
        assert isinstance(prepared, PreparedAnnounce)
        before = (await r.time())[0] * 1000
        await registry.announce(f"{written_ms}-0", prepared)
    finally:
        await client.aclose()
    deadline = await r.zscore(keys.deadlines(), "late")
    assert deadline is not None
    assert deadline >= before + agent.ttl_ms

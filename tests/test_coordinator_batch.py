"""One script call per control batch: stream order, in-script replies and acks, fallbacks.

The consumer is driven by hand (``XREADGROUP`` here, then ``ControlConsumer.process``), so the
entries of a test are certainly applied as one batch.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from agent_sdk.connection import make_client
from coordinator import Coordinator, CoordinatorSettings
from coordinator.control import ANSWER_CHUNK, ControlConsumer, Entry
from coordinator.registry import ControlBatch, ControlResult, Registry
from coordinator.stats import CoordinatorStats
from schemas.envelope import Envelope, encode_json
from schemas.keys import COORDINATOR_GROUP, KeySpace
from tests.fake_agents import FakeAgent
from tests.support import wait_for


class CountingRegistry(Registry):
    """Counts script calls."""

    calls = 0

    async def apply(self, batch: ControlBatch) -> ControlResult:
        self.calls += 1
        return await super().apply(batch)


@pytest.fixture
async def consumer(
    coordinator_settings: CoordinatorSettings,
) -> AsyncIterator[ControlConsumer]:
    client = make_client(coordinator_settings)
    c = ControlConsumer(
        client,
        CountingRegistry(client, coordinator_settings),
        coordinator_settings,
        CoordinatorStats(),
    )
    await c.ensure_group()
    yield c
    await client.aclose()


async def read_all(consumer: ControlConsumer) -> list[Entry]:
    """Everything waiting, as the coordinator reads it (bytes), read as its consumer."""
    s = consumer.settings
    raw = make_client(s)
    try:
        got: Any = await raw.xreadgroup(
            COORDINATOR_GROUP, s.coordinator_id, {s.keys.control(): ">"}
        )
    finally:
        await raw.aclose()
    return list(got[0][1]) if got else []


async def replies(r: aioredis.Redis, agent: FakeAgent) -> list[dict[str, Any]]:
    """Every reply pushed to the agent's list, oldest first."""
    return [orjson.loads(x) for x in reversed(await r.lrange(agent.reply_key, 0, -1))]


async def event_types(r: aioredis.Redis, keys: KeySpace) -> list[tuple[str, str]]:
    return [(f["type"], f["instance_id"]) for _, f in await r.xrange(keys.events())]


async def nothing_pending(r: aioredis.Redis, keys: KeySpace) -> bool:
    pending: Any = await r.xpending(keys.control(), COORDINATOR_GROUP)
    return int(pending["pending"]) == 0


class Later:
    """Writes control entries with explicit ids a minute ahead (entry time after processing
    time: a heartbeat is only applied if it is not older than the deadline an announce set)."""

    def __init__(self, r: aioredis.Redis, keys: KeySpace) -> None:
        self.r = r
        self.keys = keys
        self.ms = 0

    async def send(self, agent: FakeAgent, type: str, payload: Any, **extra: Any) -> str:
        if not self.ms:
            self.ms = (await self.r.time())[0] * 1000 + 60_000
        self.ms += 1
        msg_id = uuid.uuid4().hex
        fields = {"v": "1", "id": msg_id, "kind": "control", "type": type, "sender": agent.name}
        fields |= {"payload": orjson.dumps(payload).decode(), **extra}
        await self.r.xadd(self.keys.control(), fields, id=f"{self.ms}-0")  # type: ignore[arg-type]
        return msg_id

    async def announce(self, agent: FakeAgent) -> str:
        return await self.send(
            agent, "announce", agent.announce_payload(), reply_to=agent.reply_key
        )

    async def heartbeat(self, agent: FakeAgent, load: int = 0, status: str = "ready") -> str:
        payload = {"instance_id": agent.instance_id, "load": load, "status": status}
        return await self.send(agent, "heartbeat", payload)


async def test_mixed_batch_is_one_script_call_in_stream_order(
    consumer: ControlConsumer, r: aioredis.Redis, keys: KeySpace
) -> None:
    x = FakeAgent(r, keys, "a1", host="box-1", pid=7)
    y = FakeAgent(r, keys, "a1")
    later = Later(r, keys)
    x_announce = await x.announce()
    await later.heartbeat(x, status="busy")
    y_first = await later.announce(y)  # refused: x holds the name
    await later.send(x, "leave", {"instance_id": x.instance_id}, reply_to=x.reply_key)
    y_second = await later.announce(y)  # accepted: x has left
    await later.heartbeat(y, load=2)
    entries = await read_all(consumer)
    assert len(entries) == 6
    await consumer.process(entries)

    assert isinstance(consumer._registry, CountingRegistry)
    assert consumer._registry.calls == 1
    got_x = await replies(r, x)
    assert [(m["type"], m["correlation_id"]) for m in got_x[:1]] == [
        ("announce_result", x_announce)
    ]
    assert got_x[0]["payload"]["instance_id"] == x.instance_id
    assert got_x[1]["type"] == "leave_result"
    assert got_x[1]["payload"] == {"removed": True}
    got_y = await replies(r, y)
    # the refusal goes out after the script: it comes after y's acceptance on the list
    by_id = {m["correlation_id"]: m for m in got_y}
    assert by_id[y_first]["error"]["code"] == "name_taken"
    assert by_id[y_first]["error"]["details"]["host"] == "box-1"
    assert by_id[y_first]["error"]["details"]["pid"] == 7
    assert "error" not in by_id[y_second]
    assert by_id[y_second]["payload"]["instance_id"] == y.instance_id

    assert await event_types(r, keys) == [
        ("agent_registered", x.instance_id),
        ("agent_updated", x.instance_id),
        ("agent_deregistered", x.instance_id),
        ("agent_registered", y.instance_id),
    ]
    assert await r.hget(keys.record("a1"), "instance_id") == y.instance_id
    assert await r.hget(keys.record("a1"), "load") == "2"
    assert await nothing_pending(r, keys)
    stats = consumer.stats
    assert (stats.announces, stats.refused, stats.heartbeats, stats.leaves) == (2, 1, 2, 1)


async def test_reply_bytes_are_the_schema_encoding(
    consumer: ControlConsumer, r: aioredis.Redis, keys: KeySpace
) -> None:
    """The reply assembled by the script is byte for byte ``encode_json`` of its envelope."""
    agent = FakeAgent(r, keys, "a1", metadata={"k": "v"}, capabilities=["x", "y"], tags=["t"])
    await agent.announce()
    await agent.leave(reply=True)
    await consumer.process(await read_all(consumer))
    raw = list(reversed(await r.lrange(agent.reply_key, 0, -1)))
    assert len(raw) == 2
    for text in raw:
        env = Envelope.model_validate(orjson.loads(text))
        assert encode_json(env).decode() == text


async def test_reannounce_keeps_registered_at_whatever_the_metadata_holds(
    consumer: ControlConsumer, r: aioredis.Redis, keys: KeySpace
) -> None:
    decoy = {"registered_at": "2000-01-01T00:00:00.000Z", "note": '"registered_at":"x"'}
    agent = FakeAgent(r, keys, "a1", metadata=decoy)
    await agent.announce()
    await consumer.process(await read_all(consumer))
    first = (await replies(r, agent))[0]["payload"]
    await r.delete(agent.reply_key)
    await agent.announce(version="2.0.0")
    await consumer.process(await read_all(consumer))
    second = (await replies(r, agent))[0]["payload"]
    assert second["registered_at"] == first["registered_at"]
    assert second["last_seen"] > first["last_seen"] or second["last_seen"] == first["last_seen"]
    assert second["metadata"] == decoy
    assert second["version"] == "2.0.0"
    assert await r.hget(keys.record("a1"), "registered_at") == first["registered_at"]
    _, fields = (await r.xrange(keys.events()))[-1]
    record = orjson.loads(fields["record"])
    assert record["registered_at"] == first["registered_at"]
    assert record["metadata"] == decoy


async def test_batch_redis_refuses_is_applied_entry_by_entry(
    consumer: ControlConsumer, r: aioredis.Redis, keys: KeySpace
) -> None:
    """An entry Redis refuses (a role index that is not a set) is dead-lettered alone."""
    await r.set(keys.role_index("broken"), "not a set")
    good1 = FakeAgent(r, keys, "g1")
    bad = FakeAgent(r, keys, "b1", role="broken")
    good2 = FakeAgent(r, keys, "g2")
    for agent in (good1, bad, good2):
        await agent.announce()
    await good1.heartbeat()
    bad_id = (await r.xrange(keys.control()))[1][0]
    await consumer.process(await read_all(consumer))

    for agent in (good1, good2):
        (reply,) = await replies(r, agent)
        assert "error" not in reply
    assert await r.smembers(keys.agents()) >= {"g1", "g2"}
    letters = await r.xrange(keys.deadletter())
    assert [f["source_id"] for _, f in letters] == [bad_id]
    assert letters[0][1]["code"] == "internal"
    assert await nothing_pending(r, keys)
    assert consumer.stats.heartbeats == 1
    assert consumer.stats.dead_letters == 1


class FailingRegistry(Registry):
    """Fails every script call of more than one entry, as a bug in the script would."""

    async def apply(self, batch: ControlBatch) -> ControlResult:
        if batch.entries > 1:
            raise ResponseError("ERR simulated script failure")
        return await super().apply(batch)


async def test_failed_script_call_is_retried_entry_by_entry(
    coordinator_settings: CoordinatorSettings, r: aioredis.Redis, keys: KeySpace
) -> None:
    client = make_client(coordinator_settings)
    registry = FailingRegistry(client, coordinator_settings)
    consumer = ControlConsumer(client, registry, coordinator_settings, CoordinatorStats())
    try:
        await consumer.ensure_group()
        agents = [FakeAgent(r, keys, f"a{i}") for i in range(3)]
        for agent in agents:
            await agent.announce()
        await agents[0].heartbeat()
        await consumer.process(await read_all(consumer))
    finally:
        await client.aclose()
    for agent in agents:
        (reply,) = await replies(r, agent)
        assert "error" not in reply
    assert await nothing_pending(r, keys)
    assert (consumer.stats.announces, consumer.stats.heartbeats) == (3, 1)
    assert consumer.stats.dead_letters == 0


async def test_values_with_nul_bytes_are_stored_as_sent(
    consumer: ControlConsumer, r: aioredis.Redis, keys: KeySpace
) -> None:
    """Every part of an announce is an argument of its own (the script splits nothing): a value
    holding a NUL byte is stored, answered and published as sent."""
    odd = FakeAgent(r, keys, "odd", description="a\x00b", metadata={"k": "\x00"})
    plain = FakeAgent(r, keys, "plain", description="ab")
    await odd.announce()
    await plain.announce()
    await consumer.process(await read_all(consumer))
    assert consumer.stats.announces == 2
    assert await r.hget(keys.record("odd"), "description") == "a\x00b"
    assert await r.hget(keys.record("plain"), "description") == "ab"
    (reply,) = await replies(r, odd)
    assert reply["payload"]["description"] == "a\x00b"
    assert reply["payload"]["metadata"] == {"k": "\x00"}


async def test_heartbeat_redis_refuses_fails_alone_in_its_run(
    consumer: ControlConsumer, r: aioredis.Redis, keys: KeySpace
) -> None:
    agents = [FakeAgent(r, keys, f"a{i}") for i in range(3)]
    for agent in agents:
        await agent.announce()
    await consumer.process(await read_all(consumer))
    await r.delete(keys.record("a1"))
    await r.set(keys.record("a1"), "not a hash")  # HMGET on it fails
    later = Later(r, keys)
    ids = [await later.heartbeat(agent, status="busy") for agent in agents]
    entries = await read_all(consumer)
    bad_entry = entries[1][0].decode()
    await consumer.process(entries)
    assert len(ids) == 3
    assert await r.hget(keys.record("a0"), "status") == "busy"
    assert await r.hget(keys.record("a2"), "status") == "busy"
    letters = await r.xrange(keys.deadletter())
    assert [f["source_id"] for _, f in letters] == [bad_entry]
    assert await nothing_pending(r, keys)
    assert consumer.stats.heartbeats == 2
    # each status change written once, although the run was applied twice
    updates = [t for t in await event_types(r, keys) if t[0] == "agent_updated"]
    assert len(updates) == 2


async def test_backlog_read_ahead_keeps_stream_order(
    coordinator_settings: CoordinatorSettings, r: aioredis.Redis, keys: KeySpace
) -> None:
    """A backlog read in batches of 4 (each next batch read and checked while the previous
    one's script runs) ends as the stream says, every entry applied once."""
    agents = [FakeAgent(r, keys, f"a{i}") for i in range(10)]
    later = Later(r, keys)
    for agent in agents:
        await later.announce(agent)
    for agent in agents:
        await later.heartbeat(agent, status="busy")
    for agent in agents[:5]:
        await later.send(agent, "leave", {"instance_id": agent.instance_id})
    for agent in agents[:2]:
        await later.announce(agent)  # back again
    settings = coordinator_settings.model_copy(update={"batch_size": 4})
    async with Coordinator(settings) as c:

        async def all_applied() -> bool:
            return await nothing_pending(r, keys) and c.stats.announces == 12

        await wait_for(all_applied, message="the backlog applied")
        assert (c.stats.heartbeats, c.stats.leaves, c.stats.claimed) == (10, 5, 0)
    assert await r.smembers(keys.agents()) == {"a0", "a1", "a5", "a6", "a7", "a8", "a9"}
    assert await r.hget(keys.record("a7"), "status") == "busy"
    assert await r.hget(keys.record("a0"), "status") == "ready"  # its latest announce
    types = [t for t, _ in await event_types(r, keys)]
    expected = ["agent_registered"] * 10 + ["agent_updated"] * 10
    expected += ["agent_deregistered"] * 5 + ["agent_registered"] * 2
    assert types == expected


async def test_a_slice_script_goes_out_before_the_next_slice_is_checked(
    consumer: ControlConsumer, r: aioredis.Redis, keys: KeySpace, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A burst of announcements is answered a slice at a time; Redis runs a slice's script
    while the next slice is checked (before, the next slice was checked first whenever it held
    fewer than 32 entries: Python and Redis took turns)."""
    order: list[str] = []
    real_apply = CountingRegistry.apply
    real_entry = ControlConsumer._entry

    async def apply(self: CountingRegistry, batch: ControlBatch) -> ControlResult:
        order.append("apply")
        return await real_apply(self, batch)

    def entry(self: ControlConsumer, eid: str, fields: Any, batch: Any, out: Any) -> None:
        order.append("check")
        real_entry(self, eid, fields, batch, out)

    monkeypatch.setattr(CountingRegistry, "apply", apply)
    monkeypatch.setattr(ControlConsumer, "_entry", entry)
    later = Later(r, keys)
    for i in range(2 * ANSWER_CHUNK + 1):
        await later.announce(FakeAgent(r, keys, f"s{i}"))
    stopping = asyncio.Event()
    running = asyncio.create_task(consumer.run(stopping))
    try:

        async def all_applied() -> bool:
            return await nothing_pending(r, keys) and len(await r.smembers(keys.agents())) == 33

        await wait_for(all_applied, message="the burst applied")
    finally:
        stopping.set()
        await running
    assert order[: order.index("apply")] == ["check"] * ANSWER_CHUNK
    assert order.count("apply") == 3

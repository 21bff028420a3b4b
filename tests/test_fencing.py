"""Fencing: epochs, tombstones, one fair cutoff, and instances that lose their name.

The registry rules are driven through ``Registry`` directly (the control script, no coordinator
loop), so the order in which late entries are applied is the test's, not a race's. The SDK rules
run a real ``Agent`` against an in-process coordinator.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis

from agent_sdk import Agent
from agent_sdk.connection import make_client
from agent_sdk.errors import NameLost
from agent_sdk.fence import Fence
from agent_sdk.messaging import Message
from agent_sdk.settings import Settings
from coordinator import Coordinator, CoordinatorSettings
from coordinator.registry import ControlBatch, Registry
from coordinator.validation import PreparedAnnounce, prepare_announce
from schemas.envelope import Envelope, Kind, encode_json
from schemas.keys import KeySpace
from tests.fake_agents import FakeAgent
from tests.support import wait_for


@pytest.fixture
async def registry(coordinator_settings: CoordinatorSettings) -> AsyncIterator[Registry]:
    client = make_client(coordinator_settings)
    yield Registry(client, coordinator_settings)
    await client.aclose()


def _announce(agent: FakeAgent, ms: int) -> PreparedAnnounce:
    prepared = prepare_announce(agent.announce_payload(), ms)
    assert isinstance(prepared, PreparedAnnounce)
    return prepared


async def _redis_ms(r: aioredis.Redis) -> int:
    sec, usec = await r.time()
    return int(sec) * 1000 + int(usec) // 1000


async def _apply_announce(registry: Registry, eid: str, prepared: PreparedAnnounce) -> Any:
    batch = ControlBatch()
    batch.announce(eid, prepared)
    return await registry.apply(batch)


async def test_each_registration_of_a_name_gets_a_larger_epoch(
    registry: Registry, r: aioredis.Redis, keys: KeySpace
) -> None:
    now = await _redis_ms(r)
    first, second = FakeAgent(r, keys, "n"), FakeAgent(r, keys, "n")
    assert await registry.announce(f"{now}-0", _announce(first, now)) is None
    e1 = int(await r.hget(keys.record("n"), "epoch"))
    # a re-announce of the holder keeps its registration, and so its epoch
    assert await registry.announce(f"{now}-1", _announce(first, now)) is None
    assert int(await r.hget(keys.record("n"), "epoch")) == e1
    assert await registry.leave("n", first.instance_id, f"{now}-2")
    assert await registry.announce(f"{now}-3", _announce(second, now)) is None
    e2 = int(await r.hget(keys.record("n"), "epoch"))
    assert e2 > e1
    # Redis lost the counter (data loss): it is seeded from the clock, so epochs still grow
    await r.delete(keys.epoch())
    third = FakeAgent(r, keys, "other")
    assert await registry.announce(f"{now}-4", _announce(third, now)) is None
    assert int(await r.hget(keys.record("other"), "epoch")) > e2


async def test_an_announce_applied_after_its_instance_left_is_stale(
    registry: Registry, r: aioredis.Redis, keys: KeySpace
) -> None:
    """Scenario 4 of the chaos run: a frozen coordinator resumes and applies a held announce
    after the agent left; the agent must not come back."""
    now = await _redis_ms(r)
    agent = FakeAgent(r, keys, "gone")
    prepared = _announce(agent, now)
    assert await registry.announce(f"{now}-0", prepared) is None
    assert await registry.leave("gone", agent.instance_id, f"{now + 1}-0")
    result = await _apply_announce(registry, f"{now}-0", prepared)  # the same entry, late
    assert result.stale == [f"{now}-0"]
    assert await r.exists(keys.record("gone")) == 0
    assert "gone" not in await r.smembers(keys.agents())
    assert "gone" not in await r.smembers(keys.role_index("worker"))


async def test_an_expired_instance_comes_back_only_with_a_new_announce(
    registry: Registry, r: aioredis.Redis, keys: KeySpace
) -> None:
    then = await _redis_ms(r) - 20_000  # it announced 20 s ago, then stopped heartbeating
    agent = FakeAgent(r, keys, "z")
    prepared = _announce(agent, then)
    assert await registry.announce(f"{then}-0", prepared) is None
    await r.zadd(keys.deadlines(), {"z": then + agent.ttl_ms})
    assert (await registry.sweep()).expired == 1
    # the announce that registered it, applied again late (a claimed duplicate): stale
    assert (await _apply_announce(registry, f"{then}-0", prepared)).stale == [f"{then}-0"]
    # a heartbeat written while it was still registered, applied late: dropped silently
    late_beat = (f"{then + 5}-0", "z", agent.instance_id, "0", "ready", "0")
    assert await registry.heartbeats([late_beat]) == []
    assert await r.exists(keys.record("z")) == 0
    # written after it expired (the instance woke up): told to re-announce, which registers it
    later = await _redis_ms(r) + 1
    new_beat = (f"{later}-0", "z", agent.instance_id, "0", "ready", "0")
    assert await registry.heartbeats([new_beat]) == [0]
    assert await registry.announce(f"{later}-1", _announce(agent, later)) is None
    assert await r.hget(keys.record("z"), "instance_id") == agent.instance_id


async def test_a_holder_is_never_replaced_on_a_clock_that_did_not_run(
    registry: Registry, r: aioredis.Redis, keys: KeySpace
) -> None:
    """Scenario 2 of the chaos run: after Redis was stopped for longer than the TTL, every
    deadline is in the past; the announce path must apply the sweeper's stall grace."""
    now = await _redis_ms(r)
    holder, rival = FakeAgent(r, keys, "h"), FakeAgent(r, keys, "h")
    assert await registry.announce(f"{now}-0", _announce(holder, now)) is None
    await r.zadd(keys.deadlines(), {"h": now - 1000})  # its deadline passed while Redis slept
    await r.hset(keys.clock(), mapping={"last_tick": now - 4000})  # nobody judged for 4 s
    refusal = await registry.announce(f"{now}-1", _announce(rival, now))
    assert refusal is not None
    assert refusal.code == "name_taken"
    assert await r.hget(keys.record("h"), "instance_id") == holder.instance_id
    grace = await r.hmget(keys.clock(), "grace_start", "grace_until")
    assert int(grace[0]) == now - 4000
    assert int(grace[1]) > now
    # once the grace is over, a holder that still did not heartbeat is replaced
    await r.hset(keys.clock(), mapping={"grace_until": now - 1, "last_tick": now})
    assert await registry.announce(f"{now}-2", _announce(rival, now)) is None
    assert await r.hget(keys.record("h"), "instance_id") == rival.instance_id
    # and the replaced instance is tombstoned: its held announce can no longer win the name
    assert await r.zscore(keys.tombstones(), holder.instance_id) is not None


async def test_a_replaced_instance_is_told_it_lost_its_name(
    coordinator: Coordinator, r: aioredis.Redis, keys: KeySpace
) -> None:
    old = FakeAgent(r, keys, "dup")
    assert "error" not in await old.register()
    await wait_for(lambda: r.exists(keys.record("dup")), message="registered")
    await wait_for(
        lambda: _not(r.exists(keys.record("dup"))), timeout=5, message="expired (no heartbeats)"
    )
    new = FakeAgent(r, keys, "dup")
    assert "error" not in await new.register()
    await old.heartbeat()
    told = await old.next_reply()
    assert told["type"] == "reannounce"
    assert told["payload"] == {
        "instance_id": old.instance_id,
        "reason": "name_lost",
        "holder": new.instance_id,
    }


async def _not(aw: Any) -> bool:
    return not await aw


def test_the_fence_runs_from_the_last_send_for_one_ttl() -> None:
    fence = Fence(ttl=5.0)
    assert not fence.valid
    assert fence.epoch is None
    fence.renew(time.monotonic(), epoch=7)
    assert fence.valid
    assert fence.epoch == 7
    assert 4.0 < fence.remaining <= 5.0
    fence.renew(time.monotonic() - 10.0)  # an older send never shortens it
    assert fence.valid
    fence.lapse()
    assert not fence.valid
    fence.renew(time.monotonic())
    assert fence.valid
    fence.lose(NameLost("taken"))
    fence.renew(time.monotonic())  # nothing renews a lost name
    assert not fence.valid
    assert fence.remaining == 0.0


async def test_wait_valid_returns_on_renewal_or_loss() -> None:
    fence = Fence(ttl=5.0)
    waiter = asyncio.create_task(fence.wait_valid())
    await asyncio.sleep(0)  # let it start waiting
    fence.renew(time.monotonic())
    assert await asyncio.wait_for(waiter, 5) is True
    fence.lapse()
    waiter = asyncio.create_task(fence.wait_valid())
    await asyncio.sleep(0)
    fence.lose(NameLost("taken"))
    assert await asyncio.wait_for(waiter, 5) is False


def _name_lost(agent: Agent, holder: str) -> bytes:
    env = Envelope(
        kind=Kind.CONTROL,
        type="reannounce",
        sender="coordinator",
        target=agent.name,
        payload={"instance_id": agent.instance_id, "reason": "name_lost", "holder": holder},
    )
    return encode_json(env)


async def test_an_agent_that_lost_its_name_stops(
    coordinator: Coordinator, settings: Settings, r: aioredis.Redis
) -> None:
    agent = Agent("lost-1", "worker", settings=settings)
    await agent.start()
    try:
        await r.lpush(agent.reply_key, _name_lost(agent, "someone-else"))
        await asyncio.wait_for(agent.wait_stopped(), 10)
        assert isinstance(agent.name_lost, NameLost)
        assert agent.name_lost.code == "name_lost"
        assert "someone-else" in str(agent.name_lost)
        assert not agent.fence.valid
    finally:
        await agent.stop()


async def test_on_name_lost_lets_the_program_decide(
    coordinator: Coordinator, settings: Settings, r: aioredis.Redis, keys: KeySpace
) -> None:
    seen: list[NameLost] = []
    handled: list[str] = []
    agent = Agent("lost-2", "worker", settings=settings, on_name_lost=seen.append)

    @agent.on("job")
    async def job(payload: Any, msg: Message) -> None:
        handled.append(msg.id)

    async with agent, Agent("sender-2", "client", settings=settings) as sender:
        await r.lpush(agent.reply_key, _name_lost(agent, "someone-else"))
        await wait_for(lambda: seen, message="on_name_lost called")
        assert agent.running
        assert agent.name_lost is seen[0]
        await sender.send("lost-2", "job", {})
        # the entry stays pending for whoever holds the name; this instance reads no more
        await wait_for(
            lambda: _pending(r, keys.inbox("lost-2")), message="the message waits in the inbox"
        )
        consumer = agent.messaging.consumer
        assert consumer is not None
        assert handled == []
        assert consumer.handled == 0


async def _pending(r: aioredis.Redis, stream: str) -> int:
    return int(await r.xlen(stream))


async def test_nothing_is_handled_while_the_lease_has_lapsed(
    coordinator: Coordinator, settings: Settings, r: aioredis.Redis
) -> None:
    handled: list[int] = []
    agent = Agent("frozen-1", "worker", settings=settings)

    @agent.on("job")
    async def job(payload: Any, msg: Message) -> None:
        handled.append(msg.delivery_count)

    async with agent, Agent("sender-3", "client", settings=settings) as sender:
        membership = agent._membership
        consumer = agent.messaging.consumer
        assert membership is not None
        assert consumer is not None
        await membership.stop()  # no heartbeats: the lease is not renewed
        agent.fence.lapse()  # as if the process had been frozen past its TTL
        await sender.send("frozen-1", "job", {})
        await wait_for(lambda: consumer.waiting_for_lease, message="the reader saw the lapse")
        assert handled == []
        inbox = agent.keys.inbox("frozen-1")
        summary: Any = await r.xpending(inbox, "agent")
        assert summary["pending"] == 0  # not even read: left for whoever holds the name
        # the registry holds the instance again: its streams are read again
        agent.fence.renew(time.monotonic())
        assert agent.host.heartbeats is not None
        await membership.start(agent.host.heartbeats)
        await wait_for(lambda: handled, message="the entry handled after the lease came back")
        assert handled == [1]


async def test_a_stale_refusal_is_announced_again(
    coordinator: Coordinator, r: aioredis.Redis, keys: KeySpace
) -> None:
    """An announce refused as stale carries the code ``stale`` (the SDK announces again)."""
    agent = FakeAgent(r, keys, "late")
    await r.zadd(keys.tombstones(), {agent.instance_id: await _redis_ms(r) + 60_000})
    reply = await agent.register()
    assert reply["error"]["code"] == "stale"
    assert await r.exists(keys.record("late")) == 0
    assert orjson.dumps(reply["error"]["details"]) == orjson.dumps(
        {"name": "late", "instance_id": agent.instance_id}
    )


async def test_an_announce_under_another_name_is_refused(
    coordinator: Coordinator, r: aioredis.Redis, keys: KeySpace
) -> None:
    """Heartbeats and leaves are matched on the sender: an announce whose sender is not the
    card's name would register a name its heartbeats never keep alive (or spoof another)."""
    agent = FakeAgent(r, keys, "mallory")
    reply = await agent.register(name="alice")  # card says alice, sender says mallory
    assert reply["error"]["code"] == "invalid_record"
    assert reply["error"]["details"]["field"] == "sender"
    assert await r.exists(keys.record("alice")) == 0

"""Claiming stranded control entries: never a batch in hand, never a live peer's slow batch.

Idle times are set with ``XCLAIM ... IDLE`` (no waiting): an entry "pending for 10 s" is one
whose idle time Redis reports as 10 s.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis

from agent_sdk.connection import make_client
from coordinator import CoordinatorSettings
from coordinator.control import ControlConsumer
from coordinator.recovery import Recovery
from coordinator.registry import Registry
from coordinator.stats import CoordinatorStats
from schemas.keys import COORDINATOR_GROUP, KeySpace
from tests.fake_agents import FakeAgent

PEER = "peer-1"


@pytest.fixture
async def recovery(
    coordinator_settings: CoordinatorSettings,
) -> AsyncIterator[Recovery]:
    settings = coordinator_settings.model_copy(update={"claim_idle": 1.0, "claim_live_idle": 30.0})
    client = make_client(settings)
    stats = CoordinatorStats()
    consumer = ControlConsumer(client, Registry(client, settings), settings, stats)
    await consumer.ensure_group()
    yield Recovery(client, consumer, settings, stats)
    await client.aclose()


async def strand(r: aioredis.Redis, keys: KeySpace, consumer: str, idle_ms: int) -> list[str]:
    """Read what waits as ``consumer``, never ack it, and make it look ``idle_ms`` idle."""
    got: Any = await r.xreadgroup(COORDINATOR_GROUP, consumer, {keys.control(): ">"})
    ids = [eid for eid, _ in got[0][1]]
    await set_idle(r, keys, consumer, ids, idle_ms)
    return ids


async def set_idle(
    r: aioredis.Redis, keys: KeySpace, consumer: str, ids: list[Any], idle_ms: int
) -> None:
    await r.xclaim(keys.control(), COORDINATOR_GROUP, consumer, 0, ids, idle=idle_ms, justid=True)


async def registered(r: aioredis.Redis, keys: KeySpace, agent: FakeAgent) -> bool:
    return bool(await r.hget(keys.record(agent.name), "instance_id") == agent.instance_id)


async def test_live_peer_slow_batch_is_not_claimed_until_stuck(
    recovery: Recovery, r: aioredis.Redis, keys: KeySpace
) -> None:
    await r.set(keys.coordinator_health(PEER), "{}", px=60_000)  # the peer is alive
    agent = FakeAgent(r, keys, "a1")
    await agent.announce()
    ids = await strand(r, keys, PEER, idle_ms=10_000)  # slow: 10 s in its hands
    assert await recovery.claim_once() == 0
    assert not await registered(r, keys, agent)
    await set_idle(r, keys, PEER, ids, 31_000)  # longer than claim_live_idle: stuck
    assert await recovery.claim_once() == 1
    assert await registered(r, keys, agent)
    assert "error" not in await agent.next_reply()
    assert recovery.stats.claimed == 1


async def test_dead_peer_entries_are_claimed_after_claim_idle(
    recovery: Recovery, r: aioredis.Redis, keys: KeySpace
) -> None:
    agent = FakeAgent(r, keys, "a1")
    await agent.announce()
    ids = await strand(r, keys, PEER, idle_ms=500)  # no health key: dead, but only 0.5 s
    assert await recovery.claim_once() == 0
    await set_idle(r, keys, PEER, ids, 1_500)
    assert await recovery.claim_once() == 1
    assert await registered(r, keys, agent)
    pending: Any = await r.xpending(keys.control(), COORDINATOR_GROUP)
    assert pending["pending"] == 0


async def test_own_entries_in_hand_are_never_claimed(
    recovery: Recovery, r: aioredis.Redis, keys: KeySpace
) -> None:
    me = recovery.settings.coordinator_id
    agent = FakeAgent(r, keys, "a1")
    await agent.announce()
    ids = await strand(r, keys, me, idle_ms=60_000)
    consumer = recovery._consumer
    consumer.in_hand.update(ids)  # the read loop is still applying this batch
    assert await recovery.claim_once() == 0
    consumer.in_hand.difference_update(ids)  # its apply failed: stranded, ours to retry
    assert await recovery.claim_once() == 1
    assert await registered(r, keys, agent)


async def ghost_heartbeats(r: aioredis.Redis, keys: KeySpace, n: int) -> None:
    ghost = FakeAgent(r, keys, "ghost")
    pipe = r.pipeline(transaction=False)
    payload = orjson.dumps({"instance_id": ghost.instance_id}).decode()
    for _ in range(n):
        fields = {"kind": "control", "type": "heartbeat", "sender": "ghost", "payload": payload}
        pipe.xadd(keys.control(), fields)  # type: ignore[arg-type]
    await pipe.execute()


async def apply_all(recovery: Recovery) -> None:
    s = recovery.settings
    client = make_client(s)
    try:
        while True:
            got: Any = await client.xreadgroup(
                COORDINATOR_GROUP, s.coordinator_id, {s.keys.control(): ">"}, count=500
            )
            if not got:
                return
            await recovery._consumer.process(list(got[0][1]))
    finally:
        await client.aclose()


async def test_processed_entries_are_trimmed_unprocessed_ones_kept(
    recovery: Recovery, r: aioredis.Redis, keys: KeySpace
) -> None:
    await ghost_heartbeats(r, keys, 50)
    stranded = await strand(r, keys, PEER, idle_ms=0)  # pending with a (dead) peer
    await ghost_heartbeats(r, keys, 1000)
    await apply_all(recovery)
    await recovery.step()  # the stranded entries are not idle long enough to be claimed
    assert int(await r.xlen(keys.control())) >= 1050  # nothing after the oldest pending goes
    assert [eid for eid, _ in await r.xrange(keys.control(), count=1)] == [stranded[0]]
    await set_idle(r, keys, PEER, stranded, 5_000)
    await recovery.step()  # claimed, applied, then the stream is trimmed
    assert recovery.stats.claimed == 50
    # MAXLEN/MINID ~ remove whole stream nodes (100 entries by default): a node's worth stays
    assert int(await r.xlen(keys.control())) < 200
    pending: Any = await r.xpending(keys.control(), COORDINATOR_GROUP)
    assert pending["pending"] == 0


async def test_undelivered_entries_are_not_trimmed(
    recovery: Recovery, r: aioredis.Redis, keys: KeySpace
) -> None:
    await ghost_heartbeats(r, keys, 1000)
    await recovery.step()  # nobody read them yet: all stay
    assert int(await r.xlen(keys.control())) == 1000

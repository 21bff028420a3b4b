"""Liveness: agents that stop heartbeating expire; agents that heartbeat never do, even when
every coordinator was away or Redis itself was blocked for longer than the TTL."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
import redis.asyncio as aioredis

from coordinator import Coordinator, CoordinatorSettings
from schemas.events import RegistryEvent
from schemas.keys import KeySpace
from tests.fake_agents import FakeAgent
from tests.support import wait_for


async def events(r: aioredis.Redis, keys: KeySpace) -> list[RegistryEvent]:
    entries: Any = await r.xrange(keys.events())
    return [RegistryEvent.from_fields(eid, fields) for eid, fields in entries]


async def expired(r: aioredis.Redis, keys: KeySpace, name: str) -> list[RegistryEvent]:
    return [e for e in await events(r, keys) if e.type == "agent_expired" and e.name == name]


async def redis_ms(r: aioredis.Redis) -> int:
    sec, usec = await r.time()
    return int(sec) * 1000 + int(usec) // 1000


async def registry_mentions(r: aioredis.Redis, keys: KeySpace, name: str) -> list[str]:
    """Every registry key (record, set, zset) that still mentions ``name``."""
    found = []
    async for key in r.scan_iter(match=f"{keys.registry_prefix}*", count=1000):
        kind = await r.type(key)
        if (
            (kind == "set" and await r.sismember(key, name))
            or (kind == "zset" and await r.zscore(key, name) is not None)
            or key == keys.record(name)
        ):
            found.append(key)
    return found


async def test_silent_agent_expires_everywhere_heartbeating_one_stays(
    coordinator: Coordinator, r: aioredis.Redis, keys: KeySpace
) -> None:
    alive = FakeAgent(r, keys, "alive", capabilities=["c"], tags=["t"])
    silent = FakeAgent(r, keys, "silent", capabilities=["c"], tags=["t"])
    await alive.register()
    reply = await silent.register()
    alive.start_heartbeats()
    try:
        (event,) = await wait_for(lambda: expired(r, keys, "silent"), message="silent expired")
        assert event.reason == "heartbeat_missed"
        assert event.instance_id == silent.instance_id
        assert event.role == "worker"
        assert event.last_seen is not None
        assert (
            event.last_seen.isoformat(timespec="milliseconds").replace("+00:00", "Z")
            == (reply["payload"]["last_seen"])
        )
        assert await registry_mentions(r, keys, "silent") == []
        # the heartbeating agent outlives several TTLs after that
        until = await redis_ms(r) + 3 * alive.ttl_ms

        async def later() -> bool:
            return await redis_ms(r) > until

        await wait_for(later, message="three TTLs of Redis time")
        assert await expired(r, keys, "alive") == []
        assert await r.sismember(keys.capability_index("c"), "alive")
        assert coordinator.stats.expiries == 1
    finally:
        await alive.stop_heartbeats()


async def test_restarted_coordinator_is_fair_to_agents_it_has_not_heard(
    coordinator: Coordinator,
    coordinator_settings: CoordinatorSettings,
    r: aioredis.Redis,
    keys: KeySpace,
) -> None:
    """No coordinator runs for longer than the TTL; agents keep heartbeating into the stream."""
    steady = [FakeAgent(r, keys, f"steady-{i}") for i in range(3)]
    quitter = FakeAgent(r, keys, "quitter")
    for agent in [*steady, quitter]:
        await agent.register()
        agent.start_heartbeats()
    try:
        await coordinator.stop()
        await quitter.stop_heartbeats()
        scores: Any = await r.zrange(keys.deadlines(), 0, -1, withscores=True)
        gone_until = max(int(s) for _, s in scores) + quitter.ttl_ms

        async def everyone_overdue() -> bool:
            return await redis_ms(r) > gone_until

        await wait_for(everyone_overdue, message="every deadline long past")
        settings = coordinator_settings.model_copy(update={"coordinator_id": "restarted"})
        async with Coordinator(settings) as restarted:
            await wait_for(lambda: expired(r, keys, "quitter"), message="quitter expired")
            for agent in steady:
                assert await expired(r, keys, agent.name) == []
                assert await r.sismember(keys.agents(), agent.name)
            assert restarted.stats.expiries == 1
    finally:
        for agent in steady:
            await agent.stop_heartbeats()


async def test_redis_blocked_longer_than_ttl_expires_nobody(
    coordinator: Coordinator, r: aioredis.Redis, keys: KeySpace
) -> None:
    agents = [FakeAgent(r, keys, f"agent-{i}") for i in range(3)]
    for agent in agents:
        await agent.register()
        agent.start_heartbeats()
    try:
        await r.execute_command("DEBUG", "SLEEP", "1.5")  # the fault: 3 x TTL, 5 x stall
        woke = await redis_ms(r)

        async def all_heard_after_wake() -> bool:
            scores: Any = await r.zrange(keys.deadlines(), 0, -1, withscores=True)
            return len(scores) == 3 and all(s > woke + agents[0].heartbeat_ms for _, s in scores)

        await wait_for(all_heard_after_wake, message="heartbeats after the stall")
        assert [e for e in await events(r, keys) if e.type == "agent_expired"] == []
        assert coordinator.sweeper is not None
    finally:
        for agent in agents:
            await agent.stop_heartbeats()


async def test_two_coordinators_expire_an_agent_once(
    coordinator: Coordinator,
    coordinator_settings: CoordinatorSettings,
    r: aioredis.Redis,
    keys: KeySpace,
) -> None:
    settings = coordinator_settings.model_copy(update={"coordinator_id": uuid.uuid4().hex})
    async with Coordinator(settings) as other:
        agents = [FakeAgent(r, keys, f"a{i}") for i in range(20)]
        for agent in agents:
            await agent.register()

        async def all_expired() -> bool:
            return await r.scard(keys.agents()) == 0

        await wait_for(all_expired, message="every agent expired")
        evs = [e.name for e in await events(r, keys) if e.type == "agent_expired"]
        assert sorted(evs) == sorted(a.name for a in agents)
        assert coordinator.stats.expiries + other.stats.expiries == 20


async def test_sweeper_survives_an_unexpected_error(
    coordinator_settings: CoordinatorSettings,
    r: aioredis.Redis,
    keys: KeySpace,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from coordinator.registry import Registry, SweepResult

    real = Registry.sweep
    failures = []

    async def flaky(self: Registry, limit: int = 1000) -> SweepResult:
        if not failures:
            failures.append(1)
            raise RuntimeError("a bug in the first sweep")
        return await real(self, limit)

    monkeypatch.setattr(Registry, "sweep", flaky)
    async with Coordinator(coordinator_settings) as c:
        await FakeAgent(r, keys, "silent").register()
        await wait_for(lambda: expired(r, keys, "silent"), message="expired despite the bug")
        assert failures == [1]
        assert c.running


async def test_registry_stays_consistent_under_two_coordinators(
    coordinator: Coordinator,
    coordinator_settings: CoordinatorSettings,
    r: aioredis.Redis,
    keys: KeySpace,
) -> None:
    """40 agents: some keep beating, some leave, some go silent; two coordinators share them."""
    settings = coordinator_settings.model_copy(update={"coordinator_id": "second"})
    agents = [
        FakeAgent(r, keys, f"agent-{i}", role=f"role-{i % 3}", capabilities=[f"cap-{i % 4}"])
        for i in range(40)
    ]
    keep, leave, silent = agents[:20], agents[20:30], agents[30:]
    async with Coordinator(settings) as second:
        for agent in agents:
            assert "error" not in await agent.register()
        for agent in keep:
            agent.start_heartbeats()
        try:
            for agent in leave:
                await agent.leave()

            async def settled() -> bool:
                return await r.smembers(keys.agents()) == {a.name for a in keep}

            await wait_for(settled, message="only the heartbeating agents remain")
            # every index entry has its record, and every record is in its indexes
            names = {a.name for a in keep}
            indexed: set[str] = set()
            async for key in r.scan_iter(match=f"{keys.registry_prefix}*", count=1000):
                if await r.type(key) == "set":
                    members = await r.smembers(key)
                    assert members <= names, key
                    indexed |= members
            assert indexed == names
            assert set(await r.zrange(keys.deadlines(), 0, -1)) == names
            for agent in keep:
                raw = await r.hgetall(keys.record(agent.name))
                assert await r.sismember(keys.role_index(raw["role"]), agent.name)
            evs = await events(r, keys)
            expired_names = [e.name for e in evs if e.type == "agent_expired"]
            assert sorted(expired_names) == sorted(a.name for a in silent)  # each exactly once
            left = [e.name for e in evs if e.type == "agent_deregistered"]
            assert sorted(left) == sorted(a.name for a in leave)
            assert coordinator.stats.heartbeats + second.stats.heartbeats > 0
        finally:
            for agent in keep:
                await agent.stop_heartbeats()

"""The core scenarios on a Redis Cluster and under Sentinel: registration, heartbeats and
expiry, discovery, send and request by name and by role, priorities, broadcasts, dead letters."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest

from agent_sdk import Agent, Bus, Settings
from agent_sdk.connection import make_client
from agent_sdk.embedded import free_port
from agent_sdk.messaging import Message
from coordinator import Coordinator
from schemas.errors import AgentNotFound, NoResponders
from tests.fake_agents import FakeAgent
from tests.support import wait_for
from tests.topologies import LocalSentinel


async def test_register_heartbeat_expire(scaled: Settings, scaled_coordinator: Coordinator) -> None:
    """An agent that heartbeats stays (its record follows its beats), one that falls silent
    expires with an event, one that leaves is gone at once; discovery sees all three."""
    r = make_client(scaled, decode_responses=True)
    keys = scaled.keys
    silent = FakeAgent(r, keys, "silent", capabilities=["x"])
    try:
        async with (
            Bus(scaled) as bus,
            Agent("alpha", "worker", settings=scaled, capabilities=["x"]),
        ):
            await silent.register()
            assert {a.name for a in await bus.discover(capabilities="x")} == {"alpha", "silent"}
            # one role and capabilities: the role x capability sets, once the layout says so
            await wait_for(lambda: _layout(r, scaled), message="the registry's layout")
            found = await bus.discover(role="worker", capabilities="x")
            assert {a.name for a in found} == {"alpha", "silent"}
            seen = (await bus.discover(role="worker"))[0].last_seen
            await wait_for(lambda: _last_seen_moved(bus, seen), timeout=5, message="a heartbeat")

            async def expired() -> list[Any]:
                events: Any = await r.xrange(keys.events())
                return [f for _, f in events if f["type"] == "agent_expired"]

            (event,) = await wait_for(expired, timeout=10, message="silent expired")
            assert event["name"] == "silent"
            assert event["reason"] == "heartbeat_missed"
            assert [a.name for a in await bus.discover(capabilities="x")] == ["alpha"]
            leaver = Agent("beta", "worker", settings=scaled)
            await leaver.start()
            assert {a.name for a in await bus.discover(role="worker")} == {"alpha", "beta"}
            await leaver.stop()
            assert [a.name for a in await bus.discover(role="worker")] == ["alpha"]
    finally:
        await r.aclose()


async def _layout(r: Any, settings: Settings) -> bool:
    return bool(await r.get(settings.keys.layout()) == "2")


async def _last_seen_moved(bus: Bus, before: Any) -> bool:
    now = await bus.discover(role="worker")
    return bool(now) and now[0].last_seen != before


async def test_send_request_roles(scaled: Settings, scaled_coordinator: Coordinator) -> None:
    got: list[Message] = []
    names = [f"svc-{i}" for i in range(6)]  # spread over the cluster's slots
    agents = [Agent(n, "svc", settings=scaled) for n in names]
    for a in agents:

        @a.on("echo")
        async def echo(payload: Any, msg: Message, me: str = a.name) -> Any:
            return {"me": me, "payload": payload}

        @a.on("note")
        async def note(payload: Any, msg: Message) -> None:
            got.append(msg)

    async with contextlib_all(agents), Bus(scaled) as bus:
        for n in names:
            assert await bus.request(n, "echo", n, timeout=10) == {"me": n, "payload": n}
            await bus.send(n, "note", {"to": n}, priority="critical")
        await wait_for(lambda: len(got) == len(names), timeout=10, message="every note")
        r = await bus.request(role="svc", type="echo", payload=1, timeout=10)
        assert r["payload"] == 1
        assert r["me"] in names
        many = await bus.request_many(role="svc", type="echo", payload=2, timeout=10)
        assert sorted(dict(many)) == sorted(names)
        replies = await asyncio.gather(
            *(bus.request(names[i % 6], "echo", i, timeout=10) for i in range(60))
        )
        assert [r["payload"] for r in replies] == list(range(60))
        with pytest.raises(AgentNotFound):
            await bus.send("nobody", "note", {})
        with pytest.raises(NoResponders):
            await bus.send(role="nobody", type="note", payload={})


class contextlib_all:
    """Start every agent; stop them all on exit."""

    def __init__(self, agents: list[Agent]) -> None:
        self.agents = agents

    async def __aenter__(self) -> None:
        await asyncio.gather(*(a.start() for a in self.agents))

    async def __aexit__(self, *exc: object) -> None:
        await asyncio.gather(*(a.stop() for a in self.agents))


async def test_pool_waits_for_a_connection_past_its_bound(scaled: Settings) -> None:
    """Past ``max_connections`` a call waits for a connection (up to ``pool_timeout``) under
    Sentinel and on a cluster as on one server, instead of failing with "Too many
    connections" (a host holds one command connection: its agents settling at once on stop,
    or after a failover, failed with it). redis-py's Sentinel and cluster pools do not wait."""
    client: Any = make_client(scaled, max_connections=1)
    key = f"{scaled.namespace}:pool-bound"
    try:
        # 20 commands at once on a pool of one connection (per node): each waits its turn
        lengths = await asyncio.gather(*(client.rpush(key, i) for i in range(20)))
        assert sorted(lengths) == list(range(1, 21))
    finally:
        await client.delete(key)
        await client.aclose()


async def test_master_lookups_at_once_keep_every_sentinel(local_sentinel: LocalSentinel) -> None:
    """Every connection opened asks the sentinels where the master is, and a host opens many
    at once (after a failover they all reconnect together). With the first sentinel down,
    redis-py's discovery wrote the sentinel that answered into two slots of its list and
    dropped the other: never asked again, and its sockets never closed (the unclosed-socket
    warnings of a failover under load)."""
    dead = free_port()
    url = local_sentinel.url.replace("://", f"://127.0.0.1:{dead},", 1)
    settings = Settings(redis_url=url, namespace=f"t{uuid.uuid4().hex[:10]}")
    client: Any = make_client(settings, max_connections=20)
    manager = client.connection_pool.sentinel_manager
    asked = list(manager.sentinels)
    assert len(asked) == 4
    try:
        assert all(await asyncio.gather(*(client.ping() for _ in range(20))))
        assert sorted(map(id, manager.sentinels)) == sorted(map(id, asked))
        assert manager.sentinels[0] is not asked[0]  # the one that answered came first
    finally:
        await client.aclose()
    for sentinel in asked:  # closing the client closed every sentinel's sockets
        pool = sentinel.connection_pool
        held = [*pool._available_connections, *pool._in_use_connections]
        assert [c for c in held if c.is_connected] == []

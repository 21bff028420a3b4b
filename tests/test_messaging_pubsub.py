"""Broadcast (live and durable) and topics, including recovery after connections are killed."""

from __future__ import annotations

from typing import Any

import pytest
import redis.asyncio as aioredis

from agent_sdk.messaging import Message
from agent_sdk.settings import Settings
from schemas.envelope import Kind
from schemas.errors import InvalidInput
from tests.messaging_helpers import node
from tests.support import wait_for


async def test_live_broadcast_reaches_every_agent_or_one_role(
    settings: Settings, r: aioredis.Redis
) -> None:
    got: dict[str, list[Message]] = {"a": [], "b": [], "x": []}
    async with (
        node(settings, "a", "pool", r=r) as a,
        node(settings, "b", "pool", r=r) as b,
        node(settings, "x", "other", r=r) as x,
    ):
        for name, m in (("a", a), ("b", b), ("x", x)):

            async def on_shutdown(payload: Any, msg: Message, who: str = name) -> None:
                got[who].append(msg)

            m.on("shutdown")(on_shutdown)
        assert await x.broadcast("shutdown", {"all": True}) == 3
        assert await x.broadcast("shutdown", {"all": False}, role="pool") == 2
        await wait_for(lambda: len(got["a"]) == 2 and len(got["b"]) == 2, timeout=5)
        await wait_for(lambda: len(got["x"]) == 1, timeout=5)
    assert got["x"][0].payload == {"all": True}
    assert got["a"][0].kind is Kind.BROADCAST
    assert got["a"][0].sender == "x"
    assert sorted(m.payload["all"] for m in got["a"]) == [False, True]


async def test_broadcast_many_reaches_handlers_in_order(
    settings: Settings, r: aioredis.Redis
) -> None:
    got: list[int] = []
    async with node(settings, "a", "pool", r=r) as a, node(settings, "x", "other", r=r) as x:

        @a.on("task")
        async def task(payload: Any) -> None:
            got.append(payload["n"])

        counts = await x.broadcast_many("task", [{"n": i} for i in range(100)], role="pool")
        assert counts == [1] * 100
        await wait_for(lambda: len(got) == 100, timeout=5)
    assert got == list(range(100))


async def test_durable_broadcast_many_queues_each_message_per_member(
    settings: Settings, r: aioredis.Redis
) -> None:
    async with node(settings, "c", "client", r=r) as c:
        async with (
            node(settings, "a", "pool", r=r, start=False),
            node(settings, "b", "pool", r=r, start=False),
        ):
            counts = await c.broadcast_many("reload", [{"v": 1}, {"v": 2}], role="pool",
                                            durable=True)  # fmt: skip
            assert counts == [2, 2]
            for name in ("a", "b"):
                entries = await r.xrange(settings.keys.inbox(name))
                assert [e[1]["payload"] for e in entries] == ['{"v":1}', '{"v":2}']
                assert {e[1]["target"] for e in entries} == {name}
        with pytest.raises(InvalidInput):
            await c.broadcast_many("reload", [{}], role="not a role")


async def test_durable_broadcast_queues_one_copy_per_live_member(
    settings: Settings, r: aioredis.Redis
) -> None:
    got: list[str] = []
    async with node(settings, "c", "client", r=r) as c:
        async with (
            node(settings, "a", "pool", r=r, start=False),
            node(settings, "b", "pool", r=r, start=False),
        ):
            # Members registered but not reading: copies wait in their inboxes.
            assert await c.broadcast("reload", {"v": 2}, role="pool", durable=True) == 2
            assert await r.xlen(settings.keys.inbox("a")) == 1
            assert await r.xlen(settings.keys.inbox("b")) == 1
        async with node(settings, "a", "pool", r=r) as a:

            @a.on("reload")
            async def reload(payload: Any, msg: Message) -> None:
                got.append(msg.target or "")

            await wait_for(lambda: got, timeout=5)
    assert got == ["a"]


async def test_topics_with_patterns(settings: Settings, r: aioredis.Redis) -> None:
    async with node(settings, "a", r=r) as a, node(settings, "b", r=r) as b:
        async with a.subscribe("news.*") as news, a.subscribe("news.eu") as eu:
            assert await b.publish("news.eu", {"h": 1}) == 2  # one connection, two patterns
            await b.publish("news.us", {"h": 2})
            await b.publish("sports.eu", {"h": 3})
            first = await news.get(timeout=5)
            second = await news.get(timeout=5)
            only = await eu.get(timeout=5)
        assert (first.payload, second.payload, only.payload) == ({"h": 1}, {"h": 2}, {"h": 1})
        assert first.kind is Kind.PUBLISH
        assert first.target == "news.eu"
        assert first.sender == "b"
        assert await b.publish("news.eu", {}) == 0  # unsubscribed on exit
        with pytest.raises(InvalidInput):
            a.subscribe("bad topic")


async def test_async_iteration_ends_when_closed(settings: Settings, r: aioredis.Redis) -> None:
    async with node(settings, "a", r=r) as a:
        sub = a.subscribe("t")
        async with sub:
            await a.publish("t", 1)
            await a.publish("t", 2)
            seen = []
            async for msg in sub:
                seen.append(msg.payload)
                if len(seen) == 2:
                    await sub.close()
        assert seen == [1, 2]


async def test_subscriptions_and_broadcasts_survive_killed_connections(
    settings: Settings, r: aioredis.Redis
) -> None:
    got: list[Any] = []
    async with node(settings, "a", r=r) as a, node(settings, "b", r=r) as b:

        @a.on("ping")
        async def ping(payload: Any) -> None:
            got.append(payload)

        @a.on("job")
        async def job(payload: Any) -> None:
            got.append(payload)

        async with a.subscribe("news.*") as sub:
            await r.execute_command("CLIENT", "KILL", "TYPE", "pubsub")
            await r.execute_command("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes")

            async def flows() -> bool:
                await b.publish("news.x", "again")
                try:
                    msg = await sub.get(timeout=0.2)
                except TimeoutError:
                    return False
                return bool(msg.payload == "again")

            await wait_for(flows, timeout=15, message="topic messages after the kill")

            async def broadcasts() -> bool:
                await b.broadcast("ping", "b")
                return "b" in got

            await wait_for(broadcasts, timeout=15, message="broadcasts after the kill")
            await b.send("a", "job", "direct")  # the stream reader reconnected too
            await wait_for(lambda: "direct" in got, timeout=15)


async def test_bus_client_publishes_and_subscribes(settings: Settings) -> None:
    from agent_sdk import Bus

    async with Bus(settings) as bus, Bus(settings) as other:
        async with bus.subscribe("alerts.*") as sub:
            assert await other.publish("alerts.disk", {"free": 1}) == 1
            msg = await sub.get(timeout=5)
        assert msg.payload == {"free": 1}
        assert msg.sender == other.sender

"""Routing by version: ``send``/``request``/``request_many(role=..., version="^2")`` reach a member
whose version is in the range (the newest such version), and sends without a version go to the
role's default version when one is set (any member otherwise). Real redis-server."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from typing import Any

import pytest
import redis.asyncio as aioredis

from agent_sdk import Agent, Bus
from agent_sdk.errors import AgentNotFound, InvalidInput, NoResponders
from agent_sdk.settings import Settings
from coordinator import Coordinator
from schemas.keys import KeySpace
from tests.support import wait_for

VERSIONS = {"sum-v1": "1.4.0", "sum-v20": "2.0.0", "sum-v21": "2.1.0"}


@pytest.fixture
async def fleet(coordinator: Coordinator, settings: Settings) -> AsyncIterator[dict[str, list]]:
    """Three members of role ``sum`` at 1.4.0, 2.0.0 and 2.1.0; each records what it got."""
    seen: dict[str, list[Any]] = {name: [] for name in VERSIONS}
    async with AsyncExitStack() as stack:
        for name, version in VERSIONS.items():
            agent = Agent(name, "sum", version=version, settings=settings)
            agent.on("which")(_recorder(seen[name], version))
            await stack.enter_async_context(agent)
        yield seen


def _recorder(into: list[Any], version: str) -> Callable[[Any], Awaitable[str]]:
    async def which(payload: Any) -> str:
        into.append(payload)
        return version

    return which


async def test_a_range_reaches_the_newest_version_in_it(
    fleet: dict[str, list[Any]], settings: Settings
) -> None:
    async with Bus(settings) as bus:
        assert await bus.request(role="sum", type="which", version="^2", timeout=5) == "2.1.0"
        assert await bus.request(role="sum", type="which", version="~2.0", timeout=5) == "2.0.0"
        assert await bus.request(role="sum", type="which", version="1.x", timeout=5) == "1.4.0"
        assert await bus.request(role="sum", type="which", version="<2", timeout=5) == "1.4.0"
        answers = {
            await bus.request(role="sum", type="which", version=">=1.4 <2.1", timeout=5)
            for _ in range(5)
        }
        assert answers == {"2.0.0"}
        # fire-and-forget by range lands on that member only
        for i in range(3):
            await bus.send(role="sum", type="which", payload=f"s{i}", version="~2.0")
        await wait_for(lambda: len(fleet["sum-v20"]) == 6 + 3, message="sends to ~2.0")
        assert fleet["sum-v20"][-3:] == ["s0", "s1", "s2"]
        assert fleet["sum-v1"] == [None, None]


async def test_request_many_asks_only_the_members_in_range(
    fleet: dict[str, list[Any]], settings: Settings
) -> None:
    async with Bus(settings) as bus:
        result = await bus.request_many("sum", "which", "all", version="^2", timeout=5)
        assert dict(result.replies) == {"sum-v20": "2.0.0", "sum-v21": "2.1.0"}
        assert result.complete
        every = await bus.request_many("sum", "which", "all", timeout=5)
        assert set(every.replies) == set(VERSIONS)


async def test_no_member_in_range_is_no_responders_at_once_naming_the_live_versions(
    fleet: dict[str, list[Any]], settings: Settings
) -> None:
    async with Bus(settings) as bus:
        with pytest.raises(NoResponders) as caught:
            await bus.request(role="sum", type="which", version="^3", timeout=30)
        assert caught.value.details["live_versions"] == ["1.4.0", "2.0.0", "2.1.0"]
        assert "'^3'" in caught.value.description
        with pytest.raises(NoResponders):
            await bus.send(role="sum", type="which", version=">=5")
        with pytest.raises(NoResponders):
            await bus.request_many("sum", "which", version="0.x", timeout=1)


async def test_bad_ranges_and_a_version_without_a_role_are_refused(
    fleet: dict[str, list[Any]], settings: Settings
) -> None:
    async with Bus(settings) as bus:
        with pytest.raises(InvalidInput, match="invalid"):
            await bus.request(role="sum", type="which", version="^^2")
        with pytest.raises(InvalidInput, match="role="):
            await bus.send("sum-v1", "which", version="^1")
        with pytest.raises(InvalidInput):
            await bus.request_many("sum", "which", version="two")


async def test_sends_without_a_version_go_to_the_default_version(
    fleet: dict[str, list[Any]], settings: Settings, r: aioredis.Redis, keys: KeySpace
) -> None:
    async with Bus(settings) as bus:
        await r.set(keys.role_default("sum"), "2.0.0")
        answers = Counter(
            await asyncio.gather(
                *(bus.request(role="sum", type="which", payload=i, timeout=5) for i in range(20))
            )
        )
        assert answers == Counter({"2.0.0": 20})
        for i in range(5):
            await bus.send(role="sum", type="which", payload=f"s{i}")
        await wait_for(lambda: len(fleet["sum-v20"]) == 25, message="sends to the default")
        # a default no live member has: any member, through the role queue, as without one
        await r.set(keys.role_default("sum"), "9.9.9")
        assert await bus.request(role="sum", type="which", timeout=5) in VERSIONS.values()
        # a range still wins over the default
        await r.set(keys.role_default("sum"), "1.4.0")
        assert await bus.request(role="sum", type="which", version="^2", timeout=5) == "2.1.0"
        assert await bus.request(role="sum", type="which", timeout=5) == "1.4.0"


async def test_without_a_default_the_role_queue_reaches_every_version(
    fleet: dict[str, list[Any]], settings: Settings
) -> None:
    async with Bus(settings) as bus:
        for i in range(30):
            await bus.send(role="sum", type="which", payload=i)
        await wait_for(lambda: sum(len(v) for v in fleet.values()) == 30, message="all handled")
        assert sorted(p for v in fleet.values() for p in v) == list(range(30))


async def test_a_versioned_request_to_a_member_that_dies_fails_fast(
    coordinator: Coordinator, settings: Settings
) -> None:
    stuck = asyncio.Event()
    agent = Agent("sum-slow", "slow", version="3.0.0", settings=settings)

    @agent.on("hang")
    async def hang(payload: Any) -> None:
        await stuck.wait()

    async with Bus(settings) as bus:
        await agent.start()
        ask = asyncio.create_task(bus.request(role="slow", type="hang", version="^3", timeout=60))
        consumer = agent.messaging.consumer
        assert consumer is not None
        await wait_for(lambda: consumer.in_flight == 1, message="the request is being handled")
        stopping = asyncio.create_task(agent.stop())  # drains for shutdown_grace, then leaves
        with pytest.raises(AgentNotFound, match="left or expired"):
            async with asyncio.timeout(15):
                await ask
        stuck.set()
        await stopping

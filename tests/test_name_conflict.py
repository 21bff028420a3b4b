"""``on_conflict``: a name held by another live instance is refused (naming the holder), or,
with ``"suffix"``, the agent takes the first free ``name-2``, ``name-3``... (agent_sdk.naming)."""

from __future__ import annotations

import asyncio
import os
from typing import Any

import pytest
import redis.asyncio as aioredis

from agent_sdk import Agent, Bus, Host, NameTaken
from agent_sdk.errors import InvalidInput
from agent_sdk.settings import Settings
from coordinator import Coordinator
from schemas.keys import KeySpace
from tests.support import wait_for


async def _holder(r: aioredis.Redis, keys: KeySpace, name: str) -> Any:
    return await r.hget(keys.record(name), "instance_id")


@pytest.mark.parametrize("explicit", [True, False])
async def test_refuse_names_the_holder(
    coordinator: Coordinator, settings: Settings, explicit: bool
) -> None:
    extra: dict[str, Any] = {"on_conflict": "refuse"} if explicit else {}
    async with Agent("solo", "worker", settings=settings) as first:
        second = Agent("solo", "worker", settings=settings, **extra)
        with pytest.raises(NameTaken) as caught:
            await second.start()
    assert caught.value.details["instance_id"] == first.instance_id
    assert caught.value.details["pid"] == os.getpid()
    assert first.instance_id in caught.value.description
    assert second.name == "solo"


async def test_refuse_on_a_host_names_the_holder(
    coordinator: Coordinator, settings: Settings
) -> None:
    async with Agent("taken", "worker", settings=settings) as holder, Host(settings) as host:
        agent = host.agent("taken", "worker")
        with pytest.raises(NameTaken) as caught:
            await agent.start()
        assert caught.value.details["instance_id"] == holder.instance_id
        assert "taken" not in host.agents  # refused: the host no longer carries it


async def test_suffix_takes_the_first_free_name_and_serves_it(
    coordinator: Coordinator, settings: Settings, r: aioredis.Redis, keys: KeySpace
) -> None:
    async with (
        Agent("worker", "worker", settings=settings) as first,
        Agent("worker-2", "worker", settings=settings) as second,
    ):
        fresh = Agent("worker", "worker", settings=settings, on_conflict="suffix")

        @fresh.on("who")
        async def who(payload: object) -> str:
            return fresh.name

        async with fresh, Bus(settings) as bus:
            assert fresh.name == "worker-3"
            assert fresh.record is not None
            assert fresh.record.name == "worker-3"
            assert await _holder(r, keys, "worker-3") == fresh.instance_id
            # the holders were not disturbed
            assert await _holder(r, keys, "worker") == first.instance_id
            assert await _holder(r, keys, "worker-2") == second.instance_id
            # its data plane answers under the name it got
            assert await bus.request("worker-3", "who", None, timeout=5) == "worker-3"
        assert await _holder(r, keys, "worker-3") is None  # it left under that name too


async def test_suffix_keeps_the_name_when_it_is_free(
    coordinator: Coordinator, settings: Settings
) -> None:
    async with Agent("free", "worker", settings=settings, on_conflict="suffix") as agent:
        assert agent.name == "free"


async def test_suffix_twice_in_parallel_gives_two_names(
    coordinator: Coordinator, settings: Settings, r: aioredis.Redis, keys: KeySpace
) -> None:
    async with Agent("twin", "worker", settings=settings):
        agents = [Agent("twin", "worker", settings=settings, on_conflict="suffix") for _ in "ab"]
        await asyncio.gather(*(a.start() for a in agents))
        try:
            names = {a.name for a in agents}
            assert len(names) == 2
            assert "twin" not in names
            assert all(n.startswith("twin-") for n in names)
            for agent in agents:
                assert await _holder(r, keys, agent.name) == agent.instance_id
        finally:
            await asyncio.gather(*(a.stop() for a in agents))


async def test_many_in_parallel_all_get_names(
    coordinator: Coordinator, settings: Settings, r: aioredis.Redis, keys: KeySpace
) -> None:
    """Eight lone agents of one name started at once: eight different names, all registered."""
    agents = [Agent("crowd", "worker", settings=settings, on_conflict="suffix") for _ in range(8)]
    await asyncio.gather(*(a.start() for a in agents))
    try:
        assert len({a.name for a in agents}) == 8
        assert "crowd" in {a.name for a in agents}  # the first free name went to one of them
        for agent in agents:
            assert await _holder(r, keys, agent.name) == agent.instance_id
    finally:
        await asyncio.gather(*(a.stop() for a in agents))


async def test_a_renamed_lone_agent_is_kept_alive_and_announces_again(
    coordinator: Coordinator, settings: Settings, r: aioredis.Redis, keys: KeySpace
) -> None:
    """Its host's reply list is named after the name it asked for, so it heartbeats in a lease
    (whose answers come to that list): dropped by the registry, it announces again."""
    async with (
        Agent("lone", "worker", settings=settings),
        Agent("lone", "worker", settings=settings, on_conflict="suffix") as agent,
    ):
        assert agent.name == "lone-2"
        await r.delete(keys.record("lone-2"))
        await r.srem(keys.agents(), "lone-2")
        await wait_for(lambda: _holder(r, keys, "lone-2"), message="announced again")
        assert await _holder(r, keys, "lone-2") == agent.instance_id
        beats = agent.host.heartbeats
        assert beats is not None
        sent = beats.sent
        await wait_for(lambda: beats.sent >= sent + 2, message="two more heartbeats")
        assert await _holder(r, keys, "lone-2") == agent.instance_id


async def test_suffix_on_a_host_avoids_the_names_it_carries(
    coordinator: Coordinator, settings: Settings, r: aioredis.Redis, keys: KeySpace
) -> None:
    host = Host(settings, name="fleet")
    first = host.agent("w", "worker")
    second = host.agent("w", "worker", on_conflict="suffix")
    assert second.name == "w-2"  # chosen when created: the host carries "w"
    with pytest.raises(InvalidInput, match="already carries"):
        host.agent("w", "worker")  # refuse (the default) on the host
    async with Agent("w-3", "worker", settings=settings) as elsewhere, host:
        assert {first.name, second.name} == {"w", "w-2"}
        # started on the running host: "w" and "w-2" are carried here, "w-3" is held elsewhere
        async with host.agent("w", "worker", on_conflict="suffix") as third:
            assert third.name == "w-4"
            assert host.agents["w-4"] is third
            assert await _holder(r, keys, "w-4") == third.instance_id
        assert "w-4" not in host.agents
        assert await _holder(r, keys, "w-3") == elsewhere.instance_id


async def test_suffix_on_a_host_in_parallel(
    coordinator: Coordinator, settings: Settings, r: aioredis.Redis, keys: KeySpace
) -> None:
    """Agents created on a host while the registry holds their names elsewhere get names the
    host does not carry either, when the host starts them together."""
    async with Agent("p", "worker", settings=settings), Agent("p-2", "worker", settings=settings):
        host = Host(settings, name="par")
        agents = [host.agent("p", "worker", on_conflict="suffix") for _ in range(3)]
        assert [a.name for a in agents] == ["p", "p-2", "p-3"]
        async with host:
            names = [a.name for a in agents]
            assert len(set(names)) == 3
            assert not {"p", "p-2"} & set(names)
            assert set(host.agents) == set(names)
            for agent in agents:
                assert await _holder(r, keys, agent.name) == agent.instance_id


def test_bad_on_conflict_is_refused(settings: Settings) -> None:
    with pytest.raises(InvalidInput, match="on_conflict"):
        Agent("x", "worker", settings=settings, on_conflict="rename")  # type: ignore[arg-type]
    with pytest.raises(InvalidInput, match="room for a suffix"):
        Agent("n" * 125, "worker", settings=settings, on_conflict="suffix")
    Agent("n" * 125, "worker", settings=settings)  # refuse: the full length is fine

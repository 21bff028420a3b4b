"""``agent.state``: persisted per agent name, readable with redis-cli, fenced by the epoch."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis

from agent_sdk import Agent
from agent_sdk.errors import InvalidInput, NameLost, PayloadTooLarge
from agent_sdk.settings import Settings
from coordinator import Coordinator
from schemas.keys import KeySpace
from tests.support import wait_for


async def test_state_survives_a_restart_and_reads_in_redis_cli(
    coordinator: Coordinator, settings: Settings, r: aioredis.Redis, keys: KeySpace
) -> None:
    async with Agent("keeper", "worker", settings=settings) as first:
        assert await first.state.get("runs") is None
        assert await first.state.get("runs", 0) == 0
        await first.state.set("runs", 1)
        await first.state.set("seen", {"docs": ["a", "b"]})
        await first.state.set("gone", True)
        await first.state.delete("gone")
        epoch = first.epoch
    raw: Any = await r.hgetall(keys.agent_state("keeper"))
    assert raw == {"runs": "1", "seen": '{"docs":["a","b"]}', "_epoch": str(epoch)}
    async with Agent("keeper", "worker", settings=settings) as second:
        assert await second.state.all() == {"runs": 1, "seen": {"docs": ["a", "b"]}}
        await second.state.set("runs", (await second.state.get("runs")) + 1)
        assert await second.state.get("runs") == 2


async def test_a_replaced_instance_cannot_overwrite_its_successors_state(
    coordinator: Coordinator, settings: Settings, r: aioredis.Redis, keys: KeySpace
) -> None:
    """A zombie: an instance that stopped heartbeating (frozen), was expired and replaced, and
    still runs without knowing it: its writes are refused by the epoch in the state hash."""
    async with Agent("fenced", "worker", settings=settings) as old:
        await old.state.set("owner", "old")
        membership = old._membership
        assert membership is not None
        await membership.stop()  # it freezes: no heartbeats, and it is not told anything
        await wait_for(lambda: _gone(r, keys, "fenced"), message="the old instance expired")
        async with Agent("fenced", "worker", settings=settings) as new:
            assert new.epoch is not None
            assert old.epoch is not None
            assert new.epoch > old.epoch
            await new.state.set("owner", "new")
            assert old.name_lost is None  # it still believes it holds the name
            with pytest.raises(NameLost, match="newer registration"):
                await old.state.set("owner", "old again")
            assert await new.state.get("owner") == "new"


async def _gone(r: aioredis.Redis, keys: KeySpace, name: str) -> bool:
    return not await r.exists(keys.record(name))


async def test_bad_state_input_is_refused(
    coordinator: Coordinator, settings: Settings, r: aioredis.Redis
) -> None:
    agent = Agent("picky", "worker", settings=settings)
    with pytest.raises(InvalidInput, match="not started"):
        agent.state  # noqa: B018 - the property raises
    async with agent:
        with pytest.raises(InvalidInput, match="state key"):
            await agent.state.set("_epoch", 1)
        with pytest.raises(InvalidInput, match="state key"):
            await agent.state.get("")
        with pytest.raises(PayloadTooLarge):
            await agent.state.set("big", "x" * (settings.max_payload_bytes + 1))
        assert orjson.loads(orjson.dumps(await agent.state.all())) == {}

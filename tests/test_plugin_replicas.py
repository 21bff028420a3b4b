"""Replicas between ``replicas.min`` and ``replicas.max``: the policy (pure), and a hosted
plugin that grows under a role-queue backlog and shrinks back after the cooldown. Real
redis-server and worker processes."""

from __future__ import annotations

from collections.abc import Awaitable
from pathlib import Path

import redis.asyncio as aioredis

from agent_sdk import Bus
from agent_sdk.settings import Settings
from coordinator import Coordinator
from coordinator.plugins.scaler import Reading, ScalePolicy
from schemas.keys import KeySpace
from tests.plugin_support import Make, make_supervisor, write_plugin
from tests.support import wait_for

__all__ = ["make_supervisor"]  # the fixture, used by name

SLOW_CODE = """
import asyncio
from agent_sdk.plugin import handler


@handler("work")
async def work(payload):
    await asyncio.sleep(0.05)  # the work itself
"""


def test_the_policy_grows_on_a_lasting_backlog_and_shrinks_after_the_cooldown() -> None:
    policy = ScalePolicy(interval=1, up_backlog=10, up_after=2, cooldown=5)
    busy, idle = Reading(backlog=25, load=1, capacity=1), Reading(backlog=0, load=0, capacity=1)
    assert policy.decide("u", busy, 1, 1, 3, now=0) == 0  # once is not enough
    assert policy.decide("u", busy, 1, 1, 3, now=1) == 1
    assert policy.decide("u", busy, 2, 1, 3, now=2) == 0  # the count starts again
    assert policy.decide("u", Reading(backlog=25, load=2, capacity=2), 2, 1, 3, now=3) == 1
    assert policy.decide("u", busy, 3, 1, 3, now=4) == 0
    assert policy.decide("u", busy, 3, 1, 3, now=5) == 0  # never above max
    # saturated with anything waiting counts as pressed too
    assert policy.decide("v", Reading(backlog=1, load=2, capacity=2), 2, 1, 3, now=0) == 0
    assert policy.decide("v", Reading(backlog=1, load=2, capacity=2), 2, 1, 3, now=1) == 1
    # idle: down only after the cooldown, one at a time, never below min
    assert policy.decide("u", idle, 3, 1, 3, now=6) == 0
    assert policy.decide("u", idle, 3, 1, 3, now=10) == 0
    assert policy.decide("u", idle, 3, 1, 3, now=11) == -1
    assert policy.decide("u", idle, 2, 1, 3, now=12) == 0
    assert policy.decide("u", idle, 2, 1, 3, now=16) == -1
    assert policy.decide("u", idle, 1, 1, 3, now=30) == 0
    # work in hand is not idle
    assert policy.decide("w", Reading(backlog=0, load=1, capacity=2), 2, 1, 3, now=0) == 0
    assert policy.decide("w", Reading(backlog=0, load=1, capacity=2), 2, 1, 3, now=100) == 0
    policy.forget("w")
    assert "w" not in policy.states


async def test_a_plugin_grows_under_backlog_and_shrinks_when_idle(
    coordinator: Coordinator,
    settings: Settings,
    r: aioredis.Redis,
    keys: KeySpace,
    tmp_path: Path,
    make_supervisor: Make,
) -> None:
    write_plugin(tmp_path, "elastic", code=SLOW_CODE, replicas={"min": 1, "max": 3})
    policy = ScalePolicy(interval=0.2, up_backlog=5, up_after=2, cooldown=1.0)

    async def members() -> int:
        return int(await r.scard(keys.role_index("elastic")))

    async with make_supervisor(tmp_path, scaling=policy) as supervisor, Bus(settings) as bus:
        assert await members() == 1
        for i in range(200):
            await bus.send(role="elastic", type="work", payload=i)
        await wait_for(lambda: supervisor.scaled_up == 2, timeout=30, message="3 replicas")
        assert await members() == 3
        names = set(await r.smembers(keys.role_index("elastic")))
        assert names == {"elastic.a0", "elastic.a1", "elastic.a2"}

        async def listed() -> set[str]:  # the plugin's record follows its replicas
            return set((await r.hget(keys.plugin("elastic"), "agents") or "").split(","))

        await wait_for(lambda: _equal(listed(), names), message="the replicas in the record")
        # the backlog drains; after the cooldown, back to min, one replica at a time
        await wait_for(lambda: supervisor.scaled_down == 2, timeout=60, message="back to 1")
        assert await r.smembers(keys.role_index("elastic")) == {"elastic.a0"}
        stats = await r.xinfo_groups(keys.role_queue("elastic"))
        assert [(g["lag"], g["pending"]) for g in stats] == [(0, 0)]  # all 200 handled


async def _equal(value: Awaitable[set[str]], expected: set[str]) -> bool:
    return await value == expected

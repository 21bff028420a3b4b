"""100 reloads in a row leak nothing: no process, no file descriptor, no task, no memory beyond
a small bound, no Redis key, no consumer left in a consumer group (a stopped instance deletes its
consumer from its groups on a clean stop). Real redis-server and worker processes."""

from __future__ import annotations

import asyncio
import gc
import re
from collections.abc import Awaitable
from pathlib import Path
from typing import Any

import psutil
import pytest
import redis.asyncio as aioredis

from agent_sdk import Agent, Bus
from agent_sdk.settings import Settings
from coordinator import Coordinator
from coordinator.plugins import PluginSupervisor
from schemas.keys import AGENT_GROUP, KeySpace
from tests.plugin_support import Make, make_supervisor, write_plugin
from tests.support import wait_for

__all__ = ["make_supervisor"]  # the fixture, used by name

RELOADS = 100
WARM_UP = 10
#: Growth of the supervisor's resident memory allowed over 90 reloads (allocator noise; a leak
#: of a worker's pipes, buffers or tasks per reload would show well above it).
MEMORY_SLACK = 8 * 1024 * 1024


async def _keys(r: aioredis.Redis, keys: KeySpace) -> set[str]:
    found = {k async for k in r.scan_iter(match=keys.all_keys_pattern(), count=1000)}
    # a reply list lives only while a reply waits in it; a version's entry is named after it;
    # a coordinator's health key lives by its TTL (on a loaded machine it can lapse a moment)
    # the live host's lease set is named after its instance (one per live host process: counted
    # by the test, below)
    health = keys.coordinator_health("")
    return {
        re.sub(r"version:1\.0\.\d+$", "version:V", re.sub(r"lease:.*$", "lease:L", k))
        for k in found
        if ":replies:" not in k and not k.startswith(health)
    }


async def _lease_sets(r: aioredis.Redis, keys: KeySpace) -> int:
    return len([k async for k in r.scan_iter(match=keys.lease_members("*"), count=1000)])


async def _consumers(r: aioredis.Redis, keys: KeySpace) -> dict[str, int]:
    counts: dict[str, int] = {}
    async for key in r.scan_iter(match=keys.all_keys_pattern(), count=1000, _type="stream"):
        groups: Any = await r.xinfo_groups(key)
        counts[key] = sum(int(g["consumers"]) for g in groups)
    return counts


def _snapshot(me: psutil.Process) -> dict[str, int]:
    gc.collect()
    return {
        "children": len(me.children(recursive=True)),
        "fds": me.num_fds(),
        "tasks": len(asyncio.all_tasks()),
        "rss": me.memory_info().rss,
    }


@pytest.mark.slow
@pytest.mark.timeout(600)
async def test_100_reloads_in_a_row_leak_nothing(
    coordinator: Coordinator,
    settings: Settings,
    r: aioredis.Redis,
    keys: KeySpace,
    tmp_path: Path,
    make_supervisor: Make,
) -> None:
    directory = write_plugin(tmp_path, "churn", version="1.0.0")
    me = psutil.Process()
    supervisor: PluginSupervisor
    async with make_supervisor(tmp_path) as supervisor, Bus(settings) as bus:

        async def reload(i: int) -> None:
            write_plugin(tmp_path, "churn", version=f"1.0.{i}")
            await supervisor.apply({directory})
            reply = await bus.request(role="churn", type="echo", payload=i, timeout=10)
            assert reply == {"echo": i, "version": f"1.0.{i}"}

        for i in range(1, WARM_UP + 1):
            await reload(i)
        before, keys_before = _snapshot(me), await _keys(r, keys)
        for i in range(WARM_UP + 1, RELOADS + 1):
            await reload(i)
        after, keys_after = _snapshot(me), await _keys(r, keys)

        assert supervisor.unit("churn") is not None
        assert [u.version for u in supervisor.units] == [f"1.0.{RELOADS}"]
        assert after["children"] == before["children"], (before, after)
        # a snapshot may catch a short-lived task (a flush, a watch tick) on either side; a task
        # leaked per reload would be 90 more
        assert after["tasks"] <= before["tasks"] + 3, (before, after)
        # a connection pool may open one more connection; a leak per reload would be 90
        assert after["fds"] - before["fds"] <= 3, (before, after)
        assert after["rss"] - before["rss"] < MEMORY_SLACK, (before, after)
        assert keys_after == keys_before
        assert await _lease_sets(r, keys) <= 1  # the live version's host: none left behind
        # one live instance: one consumer in the groups of its inbox and of the role queue,
        # none left behind by the 100 instances that stopped
        consumers = await _consumers(r, keys)
        assert consumers[keys.role_queue("churn")] == 1, consumers
        assert sum(consumers.values()) <= 3, consumers  # role queue + the live inbox (+ one)
        assert len(list(supervisor._workdir.iterdir())) <= 2  # type: ignore[union-attr]
    assert len(me.children(recursive=True)) == before["children"] - 1  # the last worker


async def test_a_clean_stop_deletes_the_consumer_only_where_nothing_is_pending(
    coordinator: Coordinator, settings: Settings, r: aioredis.Redis, keys: KeySpace
) -> None:
    stuck = asyncio.Event()
    quick, slow = (Agent(n, "leaver", settings=settings.model_copy(update={"shutdown_grace": 0.2}))
                   for n in ("leave-q", "leave-s"))  # fmt: skip

    @slow.on("hang")
    async def hang(payload: Any) -> None:
        await stuck.wait()

    for agent in (quick, slow):
        agent.on("ping")(_ping)

    async def names(stream: str) -> set[str]:
        rows: Any = await r.xinfo_consumers(stream, AGENT_GROUP)
        return {row["name"] for row in rows}

    async with quick, Bus(settings) as bus:
        queue = keys.role_queue("leaver")
        await bus.send("leave-q", "ping", None)
        await bus.send(role="leaver", type="ping", payload=None)
        await wait_for(lambda: _equal(names(queue), {quick.instance_id}), message="queue read")
        await wait_for(lambda: _equal(names(keys.inbox("leave-q")), {quick.instance_id}),
                       message="inbox read")  # fmt: skip
        await slow.start()
        await quick.stop()
        assert quick.instance_id not in await names(queue)
        assert await names(keys.inbox("leave-q")) == set()
        await bus.send("leave-s", "hang", None)
        consumer = slow.messaging.consumer
        assert consumer is not None
        await wait_for(lambda: consumer.in_flight == 1, message="the entry is in hand")
        await slow.stop()  # the handler outlives the grace: the entry stays pending, and so
        assert await names(keys.inbox("leave-s")) == {slow.instance_id}  # does its consumer
        pending: Any = await r.xpending(keys.inbox("leave-s"), AGENT_GROUP)
        assert pending["pending"] == 1  # kept for the next instance of the name
        stuck.set()


async def _ping(payload: Any) -> None:
    return None


async def _equal(value: Awaitable[object], expected: object) -> bool:
    return await value == expected

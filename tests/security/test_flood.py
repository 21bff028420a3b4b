"""Attack: a flood of control entries. ``agentbus coordinator check`` reports the lag and fails
past ``--max-lag``; in acl mode the forged entries are refused in bulk (one dead letter per
claimed sender and batch, with ``count``) instead of one letter and one log line each.

How long new agents wait behind a flood is measured in bench/control_flood.py (docs/SECURITY.md);
tests hold no timing thresholds.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid

import orjson
import redis.asyncio as aioredis
from click.testing import CliRunner, Result

from agent_sdk.connection import make_client
from coordinator import Coordinator
from coordinator.cli.main import cli
from coordinator.lag import control_lag
from schemas.envelope import new_id
from tests.security.conftest import World
from tests.support import wait_for

FLOOD = 20_000


async def _check(world: World, *args: str) -> Result:
    s = world.settings("operator")
    env = {"AGENTBUS_SECURITY": s.security}
    if world.secure:
        env |= {"AGENTBUS_REDIS_USERNAME": world.users["operator"],
                "AGENTBUS_REDIS_PASSWORD": world.passwords["operator"]}  # fmt: skip
    argv = ["--redis-url", s.url, "--namespace", s.namespace, "coordinator", "check", *args]
    return await asyncio.to_thread(CliRunner().invoke, cli, argv, env=env)


async def test_flood_is_reported_then_drained(world: World) -> None:
    keys = world.keys
    # a coordinator that is alive (fresh health key) but reads nothing: a frozen or buried one
    frozen = f"frozen-{uuid.uuid4().hex[:6]}"
    await world.admin.set(keys.coordinator_health(frozen), json.dumps({"id": frozen}), px=60_000)
    await world.admin.zadd(keys.coordinators(), {frozen: int(time.time() * 1000)})
    mallory = await world.raw("mallory")
    payload = orjson.dumps({"instance_id": "x" * 12, "load": 0, "status": "ready", "epoch": 1})
    async with mallory.pipeline(transaction=False) as pipe:
        for _ in range(FLOOD):
            pipe.xadd(keys.control(), {
                "v": "1", "id": new_id(), "kind": "control", "type": "heartbeat",
                "sender": "alice", "sent_at": "2026-01-01T00:00:00.000Z", "payload": payload,
            })  # fmt: skip
        await pipe.execute()
    behind = await _check(world, "--max-lag", "1000")
    assert behind.exit_code == 1, behind.output
    assert "NOT keeping up" in behind.output
    assert f"lag {FLOOD} unread entries" in behind.output
    assert (await _check(world, "--max-lag", str(FLOOD))).exit_code == 0  # at the threshold
    await world.admin.delete(keys.coordinator_health(frozen))

    async with Coordinator(world.coordinator_settings()) as coord:
        client = make_client(world.coordinator_settings())
        try:
            await wait_for(
                lambda: _drained(client, coord), message="the flood read through", timeout=60
            )
        finally:
            await client.aclose()
        ok = await _check(world, "--max-lag", "1000")
        assert ok.exit_code == 0, ok.output
        assert "lag 0 unread entries" in ok.output
        letters = await world.admin.xrange(keys.deadletter())
        if world.secure:  # refused in bulk: a letter per batch, counting every entry
            assert 0 < len(letters) <= FLOOD // coord.settings.batch_size + 2
            assert sum(int(f["count"]) for _, f in letters) == FLOOD
            assert {f["code"] for _, f in letters} == {"unauthenticated"}
            assert coord.control is not None
            assert coord.control.screen is not None
            assert coord.control.screen.unauthenticated == FLOOD
        else:  # documented: believed (heartbeats of an unknown instance of alice: applied)
            assert letters == []
            assert coord.stats.heartbeats == FLOOD


async def _drained(client: aioredis.Redis, coord: Coordinator) -> bool:
    lag = await control_lag(client, coord.settings)
    return lag.entries == 0 and lag.pending == 0

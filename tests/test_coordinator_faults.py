"""Faults: coordinators dying abruptly or by SIGKILL, a SIGTERM drain, Redis restarting empty."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from agent_sdk.embedded import RedisServer
from coordinator import Coordinator, CoordinatorSettings
from coordinator.health import check, live_coordinators
from schemas.keys import COORDINATOR_GROUP, KeySpace
from tests.fake_agents import FakeAgent
from tests.support import wait_for

ROOT = Path(__file__).resolve().parent.parent


class Daemon:
    """``python -m coordinator`` in a child process, logging to a file."""

    def __init__(self, settings: CoordinatorSettings, coordinator_id: str) -> None:
        self.id = coordinator_id
        self.log = Path(tempfile.mkstemp(prefix="coordinator-", suffix=".log")[1])
        env = {
            **os.environ,
            "AGENTBUS_REDIS_URL": settings.url,
            "AGENTBUS_NAMESPACE": settings.namespace,
            "AGENTBUS_COORDINATOR_ID": coordinator_id,
            "AGENTBUS_SWEEP_INTERVAL": "0.02",
            "AGENTBUS_CLAIM_IDLE": "0.5",
            "AGENTBUS_HEALTH_INTERVAL": "0.2",
            "AGENTBUS_READ_BLOCK": "0.5",
            "AGENTBUS_STALL_THRESHOLD": "0.3",
        }
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "coordinator"], cwd=ROOT, env=env, stderr=out
            )

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    async def wait(self, timeout: float = 20.0) -> int:
        return await asyncio.to_thread(self.proc.wait, timeout)

    def cleanup(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.log.unlink(missing_ok=True)


@pytest.fixture
def daemons() -> Iterator[list[Daemon]]:
    started: list[Daemon] = []
    yield started
    for d in started:
        d.cleanup()


async def start_daemon(
    settings: CoordinatorSettings, daemons: list[Daemon], coordinator_id: str
) -> Daemon:
    daemon = Daemon(settings, coordinator_id)
    daemons.append(daemon)

    async def healthy() -> bool:
        assert daemon.proc.poll() is None, daemon.output()
        return await check(settings, coordinator_id)

    await wait_for(healthy, timeout=30, message="the daemon's health key")
    return daemon


async def strand_entries(r: aioredis.Redis, keys: KeySpace, consumer: str) -> int:
    """Read what is waiting as ``consumer`` and never ack: a coordinator that died mid-batch."""
    got: Any = await r.xreadgroup(COORDINATOR_GROUP, consumer, {keys.control(): ">"}, count=100)
    return len(got[0][1]) if got else 0


async def no_pending(r: aioredis.Redis, keys: KeySpace) -> bool:
    pending: Any = await r.xpending(keys.control(), COORDINATOR_GROUP)
    return pending["pending"] == 0


async def test_health_key_and_check(
    coordinator_settings: CoordinatorSettings, r: aioredis.Redis, keys: KeySpace
) -> None:
    assert not await check(coordinator_settings)
    c = Coordinator(coordinator_settings)
    async with c:
        assert c.ready.is_set()
        assert await r.pttl(keys.coordinator_health(c.id)) > 0
        assert await check(coordinator_settings)
        assert await check(coordinator_settings, c.id)
        assert not await check(coordinator_settings, "someone-else")
        assert set(await live_coordinators(coordinator_settings)) == {c.id}
    assert not await check(coordinator_settings, c.id)
    assert not await check(coordinator_settings)
    await c.stop()  # idempotent
    await c.wait_stopped()


async def test_abruptly_stopped_coordinator_is_taken_over(
    coordinator: Coordinator,
    coordinator_settings: CoordinatorSettings,
    r: aioredis.Redis,
    keys: KeySpace,
) -> None:
    dead_id = coordinator.id
    await coordinator.kill()  # no drain, no cleanup: its health key expires on its own
    stranded = FakeAgent(r, keys, "stranded")
    msg_id = await stranded.announce()
    assert await strand_entries(r, keys, dead_id) == 1
    settings = coordinator_settings.model_copy(update={"coordinator_id": "survivor"})
    async with Coordinator(settings) as survivor:
        reply = await stranded.next_reply()
        assert reply["correlation_id"] == msg_id
        assert "error" not in reply
        assert survivor.stats.claimed >= 1
        await wait_for(lambda: no_pending(r, keys), message="no pending entries")
        # registration and expiry keep working
        late = FakeAgent(r, keys, "late")
        assert "error" not in await late.register()

        async def both_expired() -> bool:
            return await r.scard(keys.agents()) == 0

        await wait_for(both_expired, message="silent agents expired")

        async def dead_consumer_pruned() -> bool:
            consumers: Any = await r.xinfo_consumers(keys.control(), COORDINATOR_GROUP)
            return dead_id not in {c["name"] for c in consumers}

        await wait_for(dead_consumer_pruned, timeout=20, message="dead consumer removed")


async def test_sigkilled_daemon_is_taken_over(
    coordinator: Coordinator,
    coordinator_settings: CoordinatorSettings,
    r: aioredis.Redis,
    keys: KeySpace,
    daemons: list[Daemon],
) -> None:
    daemon = await start_daemon(coordinator_settings, daemons, f"daemon-{uuid.uuid4().hex[:6]}")
    await coordinator.stop()  # leave the daemon alone on the stream for a moment
    first = FakeAgent(r, keys, "first")
    assert "error" not in await first.register()
    daemon.proc.send_signal(signal.SIGKILL)
    assert await daemon.wait() == -signal.SIGKILL
    stranded = FakeAgent(r, keys, "stranded")
    msg_id = await stranded.announce()
    assert await strand_entries(r, keys, daemon.id) == 1
    settings = coordinator_settings.model_copy(update={"coordinator_id": "survivor"})
    async with Coordinator(settings):
        reply = await stranded.next_reply()
        assert reply["correlation_id"] == msg_id
        assert "error" not in reply
        await wait_for(lambda: no_pending(r, keys), message="no pending entries")

        async def all_expired() -> bool:
            return await r.scard(keys.agents()) == 0

        await wait_for(all_expired, message="silent agents expired")


async def test_sigterm_drains_and_exits_zero(
    coordinator_settings: CoordinatorSettings,
    r: aioredis.Redis,
    keys: KeySpace,
    daemons: list[Daemon],
) -> None:
    daemon = await start_daemon(coordinator_settings, daemons, "term-me")
    agent = FakeAgent(r, keys, "a1")
    assert "error" not in await agent.register()
    daemon.proc.send_signal(signal.SIGTERM)
    assert await daemon.wait() == 0, daemon.output()
    assert "draining" in daemon.output()
    assert not await check(coordinator_settings, "term-me")
    assert await no_pending(r, keys)


@pytest.fixture
async def own_redis() -> AsyncIterator[RedisServer]:
    """A private server this test may kill and restart (empty) without hurting others."""
    server = RedisServer()
    with server:
        yield server


async def test_redis_restart_empty_recreates_group_and_continues(
    own_redis: RedisServer, namespace: str
) -> None:
    settings = CoordinatorSettings(
        redis_url=own_redis.url,
        namespace=namespace,
        coordinator_id="restart-test",
        sweep_interval=0.02,
        health_interval=0.2,
        read_block=0.3,
        retry_attempts=2,
        retry_max_backoff=0.2,
    )
    keys = settings.keys
    r = aioredis.Redis(port=own_redis.port, decode_responses=True)
    try:
        async with Coordinator(settings) as c:
            assert "error" not in await FakeAgent(r, keys, "before").register()
            own_redis.kill()
            own_redis.start()  # same port, no data: the group and the registry are gone
            after = FakeAgent(r, keys, "after")
            reply = await after.register(timeout=30)
            assert "error" not in reply
            assert await r.sismember(keys.agents(), "after")
            assert c.running
            assert await check(settings, c.id) or await wait_for(
                lambda: check(settings, c.id), message="health key rewritten"
            )
    finally:
        await r.aclose()


async def test_second_signal_exits_at_once(
    own_redis: RedisServer, namespace: str, daemons: list[Daemon]
) -> None:
    """Redis is frozen (SIGSTOP), so the drain cannot finish; a second signal ends it anyway."""
    settings = CoordinatorSettings(redis_url=own_redis.url, namespace=namespace)
    daemon = await start_daemon(settings, daemons, "impatient")
    assert own_redis.process is not None
    os.kill(own_redis.process.pid, signal.SIGSTOP)
    try:
        daemon.proc.send_signal(signal.SIGTERM)
        await wait_for(lambda: "draining" in daemon.output(), message="the drain started")
        daemon.proc.send_signal(signal.SIGINT)
        assert await daemon.wait() == 128 + signal.SIGINT, daemon.output()
        assert "second signal" in daemon.output()
    finally:
        os.kill(own_redis.process.pid, signal.SIGCONT)


async def test_check_is_false_when_redis_is_unreachable(namespace: str) -> None:
    from agent_sdk.embedded import free_port

    settings = CoordinatorSettings(
        redis_url=f"redis://127.0.0.1:{free_port()}/0", namespace=namespace, connect_timeout=1
    )
    assert not await check(settings)
    assert not await check(settings, "anyone")

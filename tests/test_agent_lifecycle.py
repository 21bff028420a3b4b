"""Agent membership end to end: real redis-server, real coordinator (in process)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis
from click.testing import CliRunner

from agent_sdk import Agent, Bus, NameTaken, Settings
from agent_sdk.errors import InvalidInput, NoCoordinator, Refused
from agent_sdk.types import AgentStatus
from coordinator import Coordinator
from coordinator.cli.main import cli
from schemas.keys import KeySpace
from tests.support import wait_for

ROOT = Path(__file__).resolve().parent.parent


async def index_members(r: aioredis.Redis, keys: KeySpace, name: str) -> list[str]:
    """Every registry index set (and the deadline zset) that still names ``name``."""
    found = []
    async for key in r.scan_iter(match=f"{keys.registry_prefix}*", count=1000):
        kind = await r.type(key)
        if (kind == "set" and await r.sismember(key, name)) or (
            kind == "zset" and await r.zscore(key, name) is not None
        ):
            found.append(key)
    return found


async def test_register_makes_a_readable_record_and_indexes(
    coordinator: Coordinator, settings: Settings, keys: KeySpace, r: aioredis.Redis
) -> None:
    async with Agent(
        "summarizer-1",
        "summarizer",
        capabilities=["pdf", "summarize"],
        tags=["eu", "gpu"],
        version="1.2.3",
        max_concurrency=4,
        metadata={"model": "small"},
        settings=settings,
    ) as agent:
        assert agent.record is not None
        assert agent.record.instance_id == agent.instance_id
        assert agent.id == agent.name == "summarizer-1"

        raw = await r.hgetall(keys.record("summarizer-1"))
        assert raw["name"] == "summarizer-1"
        assert raw["role"] == "summarizer"
        assert raw["version"] == "1.2.3"
        assert raw["instance_id"] == agent.instance_id
        assert raw["status"] == "ready"
        assert raw["max_concurrency"] == "4"
        assert raw["pid"] == str(os.getpid())
        assert raw["host"]
        assert raw["capabilities"] == '["pdf","summarize"]'
        assert raw["metadata"] == '{"model":"small"}'
        assert str(raw["registered_at"]).endswith("Z")

        assert await r.sismember(keys.agents(), "summarizer-1")
        assert await r.sismember(keys.role_index("summarizer"), "summarizer-1")
        assert await r.sismember(keys.capability_index("pdf"), "summarizer-1")
        assert await r.sismember(keys.capability_index("summarize"), "summarizer-1")
        assert await r.sismember(keys.tag_index("eu"), "summarizer-1")
        assert await r.sismember(keys.tag_index("gpu"), "summarizer-1")

        got = await agent.get("summarizer-1")
        assert got is not None
        assert got.capabilities == ("pdf", "summarize")
        assert got.metadata == {"model": "small"}


async def test_clean_exit_deregisters_at_once(
    coordinator: Coordinator, settings: Settings, keys: KeySpace, r: aioredis.Redis
) -> None:
    agent = Agent("leaver", "worker", tags=["t1"], settings=settings)
    async with agent:
        assert await r.exists(keys.record("leaver"))
    assert agent.stopped.is_set()
    assert agent.record is None
    # the leave is acknowledged before __aexit__ returns: no wait needed, but allow scheduling
    await wait_for(
        lambda: _gone(r, keys, "leaver"), timeout=1.0, message="record and indexes removed"
    )
    await agent.stop()  # idempotent


async def _gone(r: aioredis.Redis, keys: KeySpace, name: str) -> bool:
    return not await r.exists(keys.record(name)) and not await index_members(r, keys, name)


async def test_stop_is_idempotent_and_start_after_stop_refused(
    coordinator: Coordinator, settings: Settings
) -> None:
    agent = Agent("twice", "worker", settings=settings)
    await agent.start()
    await agent.start()
    await asyncio.gather(agent.stop(), agent.stop())
    assert agent.stopped.is_set()
    with pytest.raises(Exception, match="was stopped"):
        await agent.start()


async def test_name_conflict_raises_name_taken_with_details(
    coordinator: Coordinator, settings: Settings
) -> None:
    async with Agent("unique", "worker", settings=settings) as first:
        second = Agent("unique", "worker", settings=settings)
        with pytest.raises(NameTaken) as caught:
            await second.start()
        err = caught.value
        assert err.code == "name_taken"
        assert "AGENTBUS_NAME_WAIT" in err.description  # how to wait out a dead holder
        assert err.details["instance_id"] == first.instance_id
        assert err.details["pid"] == os.getpid()
        assert second.stopped.is_set()
        # the refused agent did not disturb the holder
        record = await first.get("unique")
        assert record is not None
        assert record.instance_id == first.instance_id


async def test_no_coordinator_names_url_and_namespace(
    redis_server: object, settings: Settings
) -> None:
    lonely = settings.model_copy(update={"announce_timeout": 0.3})
    agent = Agent("alone", "worker", settings=lonely)
    with pytest.raises(NoCoordinator) as caught:
        await agent.start()
    message = str(caught.value)
    assert settings.display_url in message
    assert settings.namespace in message
    assert agent.stopped.is_set()
    # the hint is a command the CLI takes as it is (global options before the verb)
    hint = message.split("Start one with: ", 1)[1].split()
    assert hint[0] == "agentbus"
    ran = CliRunner().invoke(cli, [*hint[1:], "--help"])
    assert ran.exit_code == 0, ran.output
    assert "Run the coordinator daemon" in ran.output


async def test_an_unanswered_announcement_is_taken_back_by_a_leave(
    settings: Settings, r: aioredis.Redis, keys: KeySpace
) -> None:
    """Given up on, an announcement may still be applied (answered just after the timeout):
    the agent follows it with a leave of the same instance, applied after it. Otherwise a name
    under its host's lease would live as long as the host, held by nobody."""
    agent = Agent(
        "orphan", "worker", settings=settings.model_copy(update={"announce_timeout": 0.3})
    )
    with pytest.raises(NoCoordinator):
        await agent.start()
    rows: Any = await r.xrange(keys.control())
    sent = [(f["type"], orjson.loads(f["payload"])["instance_id"]) for _, f in rows]
    assert sent == [("announce", agent.instance_id), ("leave", agent.instance_id)]


async def test_no_coordinator_message_hides_the_password(settings: Settings) -> None:
    url = settings.url.replace("redis://", "redis://user:s3cret@")
    lonely = settings.model_copy(update={"announce_timeout": 0.2, "retry_attempts": 0})
    secret = Settings.load(**{**lonely.model_dump(), "redis_url": url})
    agent = Agent("alone", "worker", settings=secret)
    with pytest.raises(Exception) as caught:  # noqa: PT011 - auth error or NoCoordinator
        await agent.start()
    assert "s3cret" not in str(caught.value)


async def test_set_status_is_visible_in_the_record(
    coordinator: Coordinator, settings: Settings, keys: KeySpace, r: aioredis.Redis
) -> None:
    async with Agent("stateful", "worker", settings=settings) as agent:
        agent.set_status("busy")
        assert agent.status is AgentStatus.BUSY
        await wait_for(
            lambda: _field(r, keys.record("stateful"), "status", "busy"), message="status busy"
        )
        agent.set_load(1)
        agent.set_status(AgentStatus.READY)
        await wait_for(lambda: _field(r, keys.record("stateful"), "status", "ready"))
        await wait_for(lambda: _field(r, keys.record("stateful"), "load", "1"))


async def _field(r: aioredis.Redis, key: str, field: str, value: str) -> bool:
    return bool(await r.hget(key, field) == value)


async def test_reannounces_after_the_registry_lost_the_record(
    coordinator: Coordinator, settings: Settings, keys: KeySpace, r: aioredis.Redis
) -> None:
    async with Agent("phoenix", "worker", tags=["x"], settings=settings) as agent:
        assert agent.record is not None
        await r.delete(keys.record("phoenix"))
        await r.zrem(keys.deadlines(), "phoenix")
        await wait_for(
            lambda: r.hget(keys.record("phoenix"), "instance_id"),
            timeout=5.0,
            message="the agent re-announced",
        )
        assert await r.hget(keys.record("phoenix"), "instance_id") == agent.instance_id
        assert await r.sismember(keys.tag_index("x"), "phoenix")


async def test_reannounces_after_stalling_longer_than_its_ttl(
    coordinator: Coordinator, settings: Settings, keys: KeySpace, r: aioredis.Redis
) -> None:
    async with Agent("sleeper", "worker", settings=settings) as agent:
        membership = agent._membership
        assert membership is not None
        before = membership.reannounces
        # The scenario, not synchronisation: block the whole event loop (agent and coordinator)
        # for longer than the TTL, as a GC pause or a blocking call would.
        time.sleep(settings.ttl * 2)  # noqa: ASYNC251
        await wait_for(lambda: membership.reannounces > before, message="a re-announce")
        await wait_for(
            lambda: _field(r, keys.record("sleeper"), "instance_id", agent.instance_id),
            message="record held by the same instance",
        )


@pytest.fixture
def agent_env(settings: Settings) -> dict[str, str]:
    return {
        **os.environ,
        "AGENTBUS_REDIS_URL": settings.url,
        "AGENTBUS_NAMESPACE": settings.namespace,
        "AGENTBUS_HEARTBEAT_INTERVAL": str(settings.heartbeat_interval),
        "AGENTBUS_TTL": str(settings.ttl),
        "PYTHONPATH": str(ROOT),
    }


@pytest.fixture
def spawn(agent_env: dict[str, str]) -> Iterator[object]:
    procs: list[subprocess.Popen[str]] = []

    def start(*args: str) -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.agent_process", *args],
            cwd=ROOT,
            env=agent_env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        for stream in (proc.stdin, proc.stdout):
            if stream is not None:
                stream.close()


async def _ready(proc: subprocess.Popen[str]) -> str:
    assert proc.stdout is not None
    line = await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), 30)
    assert line.startswith("ready "), line
    return line.split()[1]


async def test_sigkilled_agent_disappears_from_record_and_indexes(
    coordinator: Coordinator, settings: Settings, keys: KeySpace, r: aioredis.Redis, spawn: object
) -> None:
    proc = spawn("victim", "worker", "cap-a,cap-b", "tag-a")  # type: ignore[operator]
    instance = await _ready(proc)
    assert await r.hget(keys.record("victim"), "instance_id") == instance
    assert await index_members(r, keys, "victim")
    proc.send_signal(signal.SIGKILL)
    await wait_for(
        lambda: _gone(r, keys, "victim"),
        timeout=settings.ttl + settings.heartbeat_interval + 10,
        message="the killed agent expired from the record and every index",
    )


async def test_name_wait_takes_over_a_dead_instances_name(
    coordinator: Coordinator, settings: Settings, keys: KeySpace, r: aioredis.Redis, spawn: object
) -> None:
    proc = spawn("heir", "worker")  # type: ignore[operator]
    old = await _ready(proc)
    proc.send_signal(signal.SIGKILL)
    async with Agent("heir", "worker", settings=settings, name_wait=30) as agent:
        assert agent.instance_id != old
        assert await r.hget(keys.record("heir"), "instance_id") == agent.instance_id


async def test_bus_is_idempotent_and_reads_the_registry(
    coordinator: Coordinator, settings: Settings
) -> None:
    bus = Bus(settings)
    await bus.start()
    await bus.start()
    async with Agent("seen", "worker", settings=settings):
        record = await bus.get("seen")
        assert record is not None
        assert record.role == "worker"
    assert await bus.get("seen") is None
    await bus.stop()
    await bus.stop()
    assert bus.stopped.is_set()


async def test_agents_can_share_one_bus(coordinator: Coordinator, settings: Settings) -> None:
    async with Bus(settings) as bus:
        agents = [Agent(f"shared-{i}", "pool", bus=bus) for i in range(5)]
        for agent in agents:
            await agent.start()
        assert [r.name for r in await bus.discover(role="pool")] == [a.name for a in agents]
        for agent in agents:
            await agent.stop()
        assert bus.started  # the agents did not close the bus they were lent
        assert await bus.discover(role="pool") == []


def test_invalid_cards_are_refused_before_any_io() -> None:
    with pytest.raises(InvalidInput, match="bad name"):
        Agent("bad name", "worker", settings=Settings(redis_url="redis://127.0.0.1:1/0"))
    with pytest.raises(InvalidInput, match="version"):
        Agent("ok", "worker", version="1.0", settings=Settings(redis_url="redis://127.0.0.1:1/0"))


async def test_a_record_too_large_is_refused(coordinator: Coordinator, settings: Settings) -> None:
    big = {f"k{i}": "x" * 1000 for i in range(32)}
    agent = Agent("bloated", "worker", metadata=big, settings=settings)
    with pytest.raises(Refused) as caught:
        await agent.start()
    assert caught.value.code == "too_large"
    assert agent.stopped.is_set()


async def test_heartbeats_survive_killed_connections(
    coordinator: Coordinator, settings: Settings, keys: KeySpace, r: aioredis.Redis
) -> None:
    async with Agent("tough", "worker", settings=settings) as agent:
        before = await r.hget(keys.record("tough"), "last_seen")
        ours = [
            c["id"]
            for c in await r.client_list()
            if c.get("name") == f"agentbus:{settings.namespace}"
        ]
        assert len(ours) >= 2  # at least the agent's pool and its reply router
        for cid in ours:
            await r.client_kill_filter(_id=cid)

        async def seen_later() -> bool:
            return bool(await r.hget(keys.record("tough"), "last_seen") != before)

        await wait_for(seen_later, message="heartbeats after the cut")
        assert await r.hget(keys.record("tough"), "instance_id") == agent.instance_id

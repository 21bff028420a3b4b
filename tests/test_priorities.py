"""Priorities: critical, important, normal and low streams per inbox and role queue; readers
take higher ones first, and a lower one still gets its turn (the starvation bound)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import redis.asyncio as aioredis

from agent_sdk import Agent, Host
from agent_sdk.errors import InvalidInput
from agent_sdk.messaging.sources import STARVATION_TURN
from agent_sdk.settings import Settings
from agent_sdk.types import Message
from coordinator import Coordinator
from schemas.envelope import Envelope, Kind, encode_fields
from schemas.keys import KeySpace
from tests.support import wait_for


def _busy_worker(agent: Agent, done: list[str]) -> asyncio.Event:
    """Handlers of ``agent``: ``block`` waits for the returned event; ``job`` records its
    payload."""
    release = asyncio.Event()

    @agent.on("block")
    async def block(payload: Any) -> None:
        await release.wait()

    @agent.on("job")
    async def job(payload: Any) -> None:
        done.append(payload)

    return release


async def _busy(agent: Agent, sender: Agent, **target: Any) -> None:
    """Occupy ``agent``'s only slot."""
    await sender.send(type="block", payload=None, **target)
    consumer = agent.messaging.consumer
    assert consumer is not None
    await wait_for(lambda: consumer.in_flight == 1, message="the agent is busy")


async def test_higher_priorities_are_taken_first_from_an_inbox(
    coordinator: Coordinator, settings: Settings
) -> None:
    done: list[str] = []
    worker = Agent("prio-w", "worker", settings=settings)
    release = _busy_worker(worker, done)
    async with worker, Agent("prio-s", "client", settings=settings) as sender:
        await _busy(worker, sender, to="prio-w")
        for priority in ("low", "normal", "important", "critical", "low", "critical"):
            await sender.send("prio-w", "job", priority, priority=priority)
        release.set()
        await wait_for(lambda: len(done) == 6, message="every job")
    assert done == ["critical", "critical", "important", "normal", "low", "low"]


async def test_role_queues_and_requests_take_a_priority(
    coordinator: Coordinator, settings: Settings, r: aioredis.Redis, keys: KeySpace
) -> None:
    done: list[str] = []
    worker = Agent("prio-r", "ranked", settings=settings)
    release = _busy_worker(worker, done)

    @worker.on("ask")
    async def ask(payload: Any) -> str:
        return f"answer {payload}"

    async with worker, Agent("prio-c", "client", settings=settings) as sender:
        await _busy(worker, sender, role="ranked")
        await sender.send(role="ranked", type="job", payload="normal")
        await sender.send(role="ranked", type="job", payload="low", priority="low")
        await sender.send(role="ranked", type="job", payload="important", priority="important")
        answer = asyncio.create_task(
            sender.request(role="ranked", type="ask", payload=1, priority="critical", timeout=10)
        )
        critical = keys.prioritized(keys.role_queue("ranked"), "critical")
        await wait_for(lambda: r.xlen(critical), message="the request queued")
        release.set()
        assert await answer == "answer 1"
        await wait_for(lambda: len(done) == 3, message="every job")
    assert done == ["important", "normal", "low"]


async def test_a_lower_priority_is_not_starved(
    coordinator: Coordinator, settings: Settings
) -> None:
    done: list[str] = []
    worker = Agent("prio-st", "worker", settings=settings)
    release = _busy_worker(worker, done)
    async with worker, Agent("prio-s2", "client", settings=settings) as sender:
        await _busy(worker, sender, to="prio-st")
        await sender.send("prio-st", "job", "low", priority="low")
        for i in range(4 * STARVATION_TURN):
            await sender.send("prio-st", "job", f"critical-{i}", priority="critical")
        release.set()
        await wait_for(lambda: len(done) == 4 * STARVATION_TURN + 1, message="every job")
    # one slot: a read takes one entry and parks one more, and the low one waits at most
    # STARVATION_TURN reads
    assert done.index("low") <= 2 * STARVATION_TURN
    criticals = [d for d in done if d != "low"]
    assert criticals == [f"critical-{i}" for i in range(4 * STARVATION_TURN)]


async def test_priority_streams_filled_before_the_agent_starts_are_read(
    coordinator: Coordinator, settings: Settings, r: aioredis.Redis, keys: KeySpace
) -> None:
    """Entries written by hand (no ring, nobody listening) to an agent's critical inbox before
    it starts are found and read first."""
    for priority in ("low", "critical", "normal"):
        env = Envelope(kind=Kind.SEND, type="job", sender="by-hand", payload=priority)
        await r.xadd(keys.prioritized(keys.inbox("prio-late"), priority), encode_fields(env))
    done: list[str] = []
    host = Host(settings, name="prio-host")
    worker = host.agent("prio-late", "worker")

    @worker.on("job")
    async def job(payload: Any, msg: Message) -> None:
        done.append(payload)

    async with host:
        await wait_for(lambda: len(done) == 3, message="the three entries")
    assert done[0] == "critical"
    assert set(done) == {"critical", "normal", "low"}


async def test_a_ring_of_a_new_priority_stream_is_heard(
    coordinator: Coordinator, settings: Settings, r: aioredis.Redis, keys: KeySpace
) -> None:
    done: list[str] = []
    worker = Agent("prio-ring", "worker", settings=settings)

    @worker.on("job")
    async def job(payload: Any) -> None:
        done.append(payload)

    async with worker:
        family = keys.inbox("prio-ring")
        env = Envelope(kind=Kind.SEND, type="job", sender="by-hand", payload="urgent")
        await r.xadd(keys.prioritized(family, "important"), encode_fields(env))
        assert await r.publish(keys.bell(family), "important") == 1
        await wait_for(lambda: done == ["urgent"], message="the important entry")


async def test_an_unknown_priority_is_refused(coordinator: Coordinator, settings: Settings) -> None:
    async with Agent("prio-bad", "worker", settings=settings) as agent:
        with pytest.raises(InvalidInput, match="priority must be one of"):
            await agent.send("prio-bad", "job", None, priority="urgent")  # type: ignore[arg-type]

"""Handlers on a worker pool (``messaging.workers``): order, concurrency, drops, stop; and the
pub/sub reader that feeds the broadcast pool."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis.asyncio.connection import AbstractConnection

from agent_sdk.messaging.handlers import Message
from agent_sdk.messaging.workers import WorkerPool
from agent_sdk.settings import Settings
from schemas.envelope import Envelope, Kind
from tests.messaging_helpers import node
from tests.support import wait_for


def _msg(n: int) -> Message:
    env = Envelope(id=f"m{n}", kind=Kind.BROADCAST, type="t", sender="s", payload={"n": n})
    return Message(env, source="chan")


async def test_fast_handlers_run_in_order_on_one_worker() -> None:
    seen: list[int] = []

    async def run(msg: Message) -> None:
        seen.append(msg.payload["n"])

    live = WorkerPool(run, what="broadcast handler")
    for i in range(100):
        live.put(_msg(i))
    await wait_for(lambda: len(seen) == 100, timeout=5)
    assert seen == list(range(100))
    assert len(live._workers) == 1  # no task per message
    await live.stop(1.0)


async def test_waiting_handlers_run_at_once_up_to_the_worker_limit() -> None:
    release = asyncio.Event()
    running = 0
    peak = 0

    async def run(msg: Message) -> None:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await release.wait()
        running -= 1

    live = WorkerPool(run, workers=4)
    for i in range(10):
        live.put(_msg(i))
    await wait_for(lambda: running == 4, timeout=5, message="four handlers running")
    assert len(live._workers) == 4
    release.set()
    await wait_for(lambda: not live._queue and running == 0, timeout=5)
    assert peak == 4
    await live.stop(1.0)


async def test_a_full_queue_drops_and_counts(caplog: pytest.LogCaptureFixture) -> None:
    release = asyncio.Event()
    done: list[int] = []

    async def run(msg: Message) -> None:
        await release.wait()
        done.append(msg.payload["n"])

    live = WorkerPool(run, queue_max=5, workers=1, what="broadcast handler")
    for i in range(8):
        live.put(_msg(i))
    # the worker has not run yet: 5 queued, 3 dropped
    assert live.dropped == 3
    assert "broadcast handlers fall behind: 1 message(s) dropped" in caplog.text
    release.set()
    await wait_for(lambda: len(done) == 5, timeout=5)
    assert done == [0, 1, 2, 3, 4]
    await live.stop(1.0)


async def test_stop_lets_running_handlers_finish_within_grace() -> None:
    finished: list[int] = []
    started, release = asyncio.Event(), asyncio.Event()

    async def run(msg: Message) -> None:
        started.set()
        await release.wait()
        finished.append(msg.payload["n"])

    live = WorkerPool(run, what="broadcast handler")
    live.put(_msg(1))
    await started.wait()
    stopping = asyncio.create_task(live.stop(5.0))
    await wait_for(lambda: live._settled is not None, timeout=5, message="stop waiting")
    assert not stopping.done()  # it waits for the running handler
    release.set()
    await stopping
    assert finished == [1]
    assert not live._workers


async def test_a_handler_failure_does_not_stop_the_worker(
    caplog: pytest.LogCaptureFixture,
) -> None:
    seen: list[int] = []

    async def run(msg: Message) -> None:
        if msg.payload["n"] == 0:
            raise RuntimeError("boom")
        seen.append(msg.payload["n"])

    live = WorkerPool(run, what="broadcast handler")
    live.put(_msg(0))
    live.put(_msg(1))
    await wait_for(lambda: seen == [1], timeout=5)
    assert "broadcast handler failed" in caplog.text
    await live.stop(1.0)


async def test_pubsub_reader_drains_the_hiredis_reader_directly(
    settings: Settings, r: aioredis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The pub/sub loop reads pushes off the parser's hiredis reader, not through
    ``read_response`` (≈ 5 µs a message): if redis-py changes its internals this fails, and the
    loop would silently fall back to the slow path."""
    real = AbstractConnection.read_response
    pubsub_reads = 0

    async def counted(self: AbstractConnection, *a: Any, **kw: Any) -> Any:
        nonlocal pubsub_reads
        if kw.get("push_request"):
            pubsub_reads += 1
        return await real(self, *a, **kw)

    monkeypatch.setattr(AbstractConnection, "read_response", counted)
    got: list[int] = []
    async with node(settings, "a", "pool", r=r) as a, node(settings, "x", "other", r=r) as x:

        @a.on("tick")
        async def tick(payload: Any) -> None:
            got.append(payload["n"])

        for i in range(50):
            await x.broadcast("tick", {"n": i}, role="pool")
        await wait_for(lambda: len(got) == 50, timeout=5)
    assert got == list(range(50))
    assert pubsub_reads == 0

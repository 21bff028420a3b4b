"""Auto-batching of sends, broadcasts and publishes (``messaging.batcher``), on real Redis."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis
from redis.asyncio.connection import Connection
from redis.exceptions import ConnectionError as RedisConnectionError

from agent_sdk.connection import make_client
from agent_sdk.messaging.batcher import Batcher, Op
from agent_sdk.messaging.scripts import Scripts
from agent_sdk.messaging.sender import Sender
from agent_sdk.settings import Settings
from schemas.errors import AgentNotFound, NoResponders, PayloadTooLarge
from tests.messaging_helpers import register


@pytest.fixture
async def sender(settings: Settings) -> Any:
    client = make_client(settings)
    try:
        yield Sender(client, settings, Scripts.register(client), "tx")
    finally:
        await client.aclose()


async def _inbox_numbers(r: aioredis.Redis, settings: Settings, name: str) -> list[int]:
    entries = await r.xrange(settings.keys.inbox(name))
    return [orjson.loads(fields["payload"])["n"] for _, fields in entries]


async def test_a_lone_send_goes_out_alone(
    sender: Sender, settings: Settings, r: aioredis.Redis
) -> None:
    await register(r, settings, "rx", "worker", "i1")
    await sender.send("rx", "note", {"n": 1})
    assert (sender.batcher.flushes, sender.batcher.commands) == (1, 1)
    assert await _inbox_numbers(r, settings, "rx") == [1]


async def test_concurrent_sends_are_batched_in_call_order(
    sender: Sender, settings: Settings, r: aioredis.Redis
) -> None:
    await register(r, settings, "rx", "worker", "i1")
    ids = await asyncio.gather(*(sender.send("rx", "note", {"n": i}) for i in range(200)))
    assert len(set(ids)) == 200
    assert sender.batcher.commands == 200
    assert sender.batcher.flushes < 200  # calls made during a round trip shared the next one
    assert await _inbox_numbers(r, settings, "rx") == list(range(200))
    entries = await r.xrange(settings.keys.inbox("rx"))
    assert [f["id"] for _, f in entries] == ids


async def test_errors_stay_with_their_call(
    sender: Sender, settings: Settings, r: aioredis.Redis
) -> None:
    await register(r, settings, "rx", "worker", "i1")
    calls = []
    for i in range(30):
        if i % 3 == 1:
            calls.append(sender.send("ghost", "note", {"n": i}))
        elif i % 3 == 2:
            calls.append(sender.send(None, "note", {"n": i}, role="nobody"))
        else:
            calls.append(sender.send("rx", "note", {"n": i}))
    results = await asyncio.gather(*calls, return_exceptions=True)
    assert sender.batcher.flushes < 30
    for i, res in enumerate(results):
        expected = (str, AgentNotFound, NoResponders)[i % 3]
        assert isinstance(res, expected), (i, res)
    missing = [res for res in results if isinstance(res, AgentNotFound)]
    assert all(e.details == {"agent": "ghost"} for e in missing)
    assert await _inbox_numbers(r, settings, "rx") == list(range(0, 30, 3))


async def test_payload_limit_is_checked_per_message(settings: Settings, r: aioredis.Redis) -> None:
    small = settings.model_copy(update={"max_payload_bytes": 100})
    client = make_client(small)
    try:
        sender = Sender(client, small, Scripts.register(client), "tx")
        await register(r, small, "rx", "worker", "i1")
        payloads = [{"n": i, "pad": "x" * (200 if i == 3 else 1)} for i in range(6)]
        results = await asyncio.gather(
            *(sender.send("rx", "note", p) for p in payloads), return_exceptions=True
        )
        assert isinstance(results[3], PayloadTooLarge)
        assert all(isinstance(res, str) for i, res in enumerate(results) if i != 3)
        assert await _inbox_numbers(r, small, "rx") == [0, 1, 2, 4, 5]
    finally:
        await client.aclose()


async def test_broadcasts_publishes_and_sends_share_a_batch(
    sender: Sender, settings: Settings, r: aioredis.Redis
) -> None:
    await register(r, settings, "rx", "worker", "i1")
    pubsub = r.pubsub()
    await pubsub.subscribe(settings.keys.broadcast_channel())
    try:
        calls = []
        for i in range(20):
            calls.append(sender.broadcast("hello", {"n": i}))
            calls.append(sender.publish("news.x", {"n": i}))
            calls.append(sender.send("rx", "note", {"n": i}))
        results = await asyncio.gather(*calls)
        assert sender.batcher.flushes < 60
        assert results[0::3] == [1] * 20  # one subscriber on the broadcast channel
        assert results[1::3] == [0] * 20  # nobody on the topic
        got = []
        async with asyncio.timeout(10):
            while len(got) < 20:
                msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1)
                if msg is not None:
                    got.append(orjson.loads(msg["data"])["payload"]["n"])
        assert got == list(range(20))
        assert await _inbox_numbers(r, settings, "rx") == list(range(20))
    finally:
        await pubsub.aclose()  # type: ignore[no-untyped-call]


async def test_a_batch_reloads_a_flushed_script(
    sender: Sender, settings: Settings, r: aioredis.Redis
) -> None:
    await register(r, settings, "rx", "worker", "i1")
    await sender.send("rx", "note", {"n": -1})
    await r.script_flush()
    results = await asyncio.gather(
        *(sender.send("rx", "note", {"n": i}) for i in range(10)), return_exceptions=True
    )
    assert all(isinstance(res, str) for res in results), results
    assert await _inbox_numbers(r, settings, "rx") == [-1, *range(10)]


async def test_calls_of_one_loop_turn_share_one_round_trip(
    sender: Sender, settings: Settings, r: aioredis.Redis
) -> None:
    """A gather of sends made while nothing is in flight leaves as one pipeline, in order."""
    await register(r, settings, "rx", "worker", "i1")
    ids = await asyncio.gather(*(sender.send("rx", "note", {"n": i}) for i in range(20)))
    assert (sender.batcher.flushes, sender.batcher.commands) == (1, 20)
    entries = await r.xrange(settings.keys.inbox("rx"))
    assert [f["id"] for _, f in entries] == ids


async def test_a_call_cancelled_while_waiting_is_dropped(
    settings: Settings, r: aioredis.Redis
) -> None:
    client = make_client(settings)
    try:
        batcher = Batcher(client)
        key = settings.keys.inbox("cancel-test")
        first = asyncio.create_task(batcher.run(Op(("RPUSH", key, "a"))))
        await asyncio.sleep(0)  # let it start: it leads the next round trip
        second = asyncio.create_task(batcher.run(Op(("RPUSH", key, "b"))))
        third = asyncio.create_task(batcher.run(Op(("RPUSH", key, "c"))))
        await asyncio.sleep(0)  # both are queued behind the first
        second.cancel()
        assert await first == 1
        assert await third == 2
        with pytest.raises(asyncio.CancelledError):
            await second
        assert await r.lrange(key, 0, -1) == ["a", "c"]
        assert (batcher.flushes, batcher.commands) == (2, 2)
    finally:
        await client.aclose()


async def test_a_batch_whose_connection_breaks_is_retried(
    sender: Sender, settings: Settings, r: aioredis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The packed write fails once (as on a connection Redis dropped): the lane reconnects and
    writes the batch again; every call gets its own result, nothing is lost."""
    await register(r, settings, "rx", "worker", "i1")
    real_send = Connection.send_packed_command
    failures = [RedisConnectionError("Connection reset by peer (injected)")]
    batches: list[int] = []

    async def flaky(self: Connection, command: Any, check_health: bool = True) -> None:
        if isinstance(command, bytes) and command.count(b"EVALSHA") > 1:
            batches.append(command.count(b"EVALSHA"))
            if failures:
                raise failures.pop()
        await real_send(self, command, check_health)

    monkeypatch.setattr(Connection, "send_packed_command", flaky)
    results = await asyncio.gather(*(sender.send("rx", "note", {"n": i}) for i in range(20)))
    assert all(isinstance(res, str) for res in results)
    assert not failures
    assert batches == [20, 20]  # the 20 calls of one loop turn left together, twice
    assert await _inbox_numbers(r, settings, "rx") == list(range(20))


async def test_broadcast_many_is_one_round_trip_in_order(
    sender: Sender, settings: Settings, r: aioredis.Redis
) -> None:
    pubsub = r.pubsub()
    await pubsub.subscribe(settings.keys.broadcast_channel())
    try:
        counts = await sender.broadcast_many("hello", [{"n": i} for i in range(50)])
        assert counts == [1] * 50  # one subscriber received each
        assert (sender.batcher.flushes, sender.batcher.commands) == (1, 50)
        got = []
        async with asyncio.timeout(10):
            while len(got) < 50:
                msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1)
                if msg is not None:
                    got.append(orjson.loads(msg["data"]))
        assert [m["payload"]["n"] for m in got] == list(range(50))
        assert len({m["id"] for m in got}) == 50  # one envelope per payload
        assert {(m["kind"], m["type"], m["target"]) for m in got} == {("broadcast", "hello", "*")}
        assert await sender.broadcast_many("hello", []) == []
        assert sender.batcher.flushes == 1  # nothing to send: no round trip
    finally:
        await pubsub.aclose()  # type: ignore[no-untyped-call]


async def test_broadcast_many_checks_every_payload_before_sending(
    settings: Settings, r: aioredis.Redis
) -> None:
    small = settings.model_copy(update={"max_payload_bytes": 100})
    client = make_client(small)
    try:
        sender = Sender(client, small, Scripts.register(client), "tx")
        payloads = [{"n": i, "pad": "x" * (200 if i == 3 else 1)} for i in range(6)]
        with pytest.raises(PayloadTooLarge):
            await sender.broadcast_many("hello", payloads)
        assert sender.batcher.commands == 0
    finally:
        await client.aclose()


async def test_run_many_queued_behind_calls_keeps_call_order(
    settings: Settings, r: aioredis.Redis
) -> None:
    """A group sent while a round trip is in flight joins the next batch after the calls made
    before it, and before those made after it."""
    client = make_client(settings)
    try:
        batcher = Batcher(client)
        key = settings.keys.inbox("order-test")
        first = asyncio.create_task(batcher.run(Op(("RPUSH", key, "a"))))
        await asyncio.sleep(0)  # it leads the next round trip
        group = asyncio.create_task(
            batcher.run_many([Op(("RPUSH", key, v)) for v in ("b", "c", "d")])
        )
        await asyncio.sleep(0)
        last = asyncio.create_task(batcher.run(Op(("RPUSH", key, "e"))))
        assert await first == 1
        assert await group == [2, 3, 4]
        assert await last == 5
        assert await r.lrange(key, 0, -1) == ["a", "b", "c", "d", "e"]
        assert (batcher.flushes, batcher.commands) == (2, 5)
    finally:
        await client.aclose()


async def test_run_many_raises_the_first_error_reply(settings: Settings, r: aioredis.Redis) -> None:
    client = make_client(settings)
    try:
        batcher = Batcher(client)
        key = settings.keys.inbox("error-test")
        await r.set(key, "not a list")
        with pytest.raises(Exception, match="WRONGTYPE"):
            await batcher.run_many([Op(("GET", key)), Op(("RPUSH", key, "x"))])
    finally:
        await client.aclose()

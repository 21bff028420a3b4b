"""Delivery guarantees of the streams: backpressure, redelivery, leases, takeover, dead letters."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import redis.asyncio as aioredis

from agent_sdk.messaging import Message, list_dead_letters
from agent_sdk.messaging.replier import Replier
from agent_sdk.settings import Settings
from schemas.errors import ErrorCode, RequestTimeout
from schemas.keys import AGENT_GROUP
from tests.messaging_helpers import node, register
from tests.support import wait_for


async def test_backpressure_reads_no_more_than_free_slots(
    settings: Settings, r: aioredis.Redis
) -> None:
    release = asyncio.Event()
    running = 0
    peak = 0
    loads: list[int] = []
    async with (
        node(settings, "w", "pool", r=r, max_concurrency=2, on_load=loads.append) as w,
        node(settings, "c", "client", r=r) as c,
    ):

        @w.on("hold")
        async def hold(payload: Any) -> None:
            nonlocal running, peak
            running += 1
            peak = max(peak, running)
            await release.wait()
            running -= 1

        for _ in range(3):
            await c.send("w", "hold", {})
            await c.send(role="pool", type="hold", payload={})
        await wait_for(lambda: running == 2, timeout=5, message="two handlers running")
        inbox = await r.xpending(settings.keys.inbox("w"), "agent")
        queue = await r.xpending(settings.keys.role_queue("pool"), AGENT_GROUP)
        # Only two entries were read (taken into the pending lists); four wait unread.
        assert inbox["pending"] + queue["pending"] == 2
        assert w.consumer is not None
        assert w.consumer.slots.load == 2
        assert max(loads) == 2
        release.set()
        await wait_for(lambda: w.consumer is not None and w.consumer.handled == 6, timeout=10)
        assert peak == 2
        assert loads[-1] == 0


async def test_failed_send_is_redelivered_then_dead_lettered(
    settings: Settings, r: aioredis.Redis
) -> None:
    settings = settings.model_copy(update={"max_deliveries": 3})
    counts: list[int] = []
    async with node(settings, "w", r=r) as w, node(settings, "c", r=r) as c:

        @w.on("flaky")
        async def flaky(payload: Any, msg: Message) -> None:
            counts.append(msg.delivery_count)
            raise RuntimeError("always fails")

        mid = await c.send("w", "flaky", {"n": 1})
        dead = await wait_for(
            lambda: list_dead_letters(r, settings), timeout=15, message="a dead letter"
        )
    assert counts == [1, 2, 3]
    assert dead[0].code == "max_deliveries"
    assert dead[0].original["id"] == mid
    assert dead[0].source == settings.keys.inbox("w")
    assert (await r.xpending(settings.keys.inbox("w"), "agent"))["pending"] == 0


async def test_redelivered_message_succeeds_on_retry(settings: Settings, r: aioredis.Redis) -> None:
    seen: list[tuple[str, int]] = []
    async with node(settings, "w", "pool", r=r) as w, node(settings, "c", "client", r=r) as c:

        @w.on("once")
        async def once(payload: Any, msg: Message) -> None:
            seen.append((msg.id, msg.delivery_count))
            if msg.delivery_count == 1:
                raise RuntimeError("first try fails")

        mid = await c.send(role="pool", type="once", payload={})
        await wait_for(lambda: len(seen) == 2, timeout=10, message="the retry")
        assert seen == [(mid, 1), (mid, 2)]  # same message id: the idempotency key
        await wait_for(
            lambda: _pending(r, settings.keys.role_queue("pool"), AGENT_GROUP), timeout=5
        )


async def _pending(r: aioredis.Redis, key: str, group: str) -> bool:
    return (await r.xpending(key, group))["pending"] == 0


async def test_long_handler_keeps_its_lease(settings: Settings, r: aioredis.Redis) -> None:
    """A handler running for several TTLs is not redelivered to anyone."""
    release = asyncio.Event()
    calls: list[str] = []
    async with (
        node(settings, "w1", "pool", r=r) as w1,
        node(settings, "w2", "pool", r=r) as w2,
        node(settings, "c", "client", r=r) as c,
    ):
        for name, m in (("w1", w1), ("w2", w2)):

            async def slow(payload: Any, msg: Message, who: str = name) -> None:
                calls.append(who)
                await release.wait()

            m.on("slow")(slow)
        await c.send(role="pool", type="slow", payload={})
        await wait_for(lambda: calls, timeout=5)
        key = settings.keys.role_queue("pool")
        assert w1.consumer is not None
        assert w2.consumer is not None
        rounds = (w1.consumer.claim_rounds, w2.consumer.claim_rounds)
        enough = int(3 * settings.ttl / settings.claim_interval) + 1  # three TTLs of claiming

        def claimed_long_enough() -> bool:
            assert w1.consumer is not None
            assert w2.consumer is not None
            return (
                w1.consumer.claim_rounds - rounds[0] >= enough
                and w2.consumer.claim_rounds - rounds[1] >= enough
            )

        await wait_for(claimed_long_enough, timeout=15, message="claim rounds over 3 TTLs")
        info = await r.xpending_range(key, AGENT_GROUP, "-", "+", 10)
        assert info[0]["times_delivered"] == 1
        assert info[0]["time_since_delivered"] < settings.ttl_ms
        assert len(calls) == 1
        release.set()


async def test_takeover_of_entries_left_by_the_previous_instance(
    settings: Settings, r: aioredis.Redis
) -> None:
    got: list[Message] = []
    inbox = settings.keys.inbox("w")
    async with node(settings, "c", "client", r=r) as c:
        # The previous instance read two entries and died before acknowledging them.
        await r.xgroup_create(inbox, "agent", id="0", mkstream=True)
        await c.send("w", "job", {"n": 1}, queue_if_absent=True)
        await c.send("w", "job", {"n": 2}, queue_if_absent=True)
        await r.xreadgroup("agent", "old-instance", {inbox: ">"}, count=2)
        async with node(settings, "w", r=r, instance_id="new-instance") as w:

            @w.on("job")
            async def job(payload: Any, msg: Message) -> None:
                got.append(msg)

            await wait_for(lambda: len(got) == 2, timeout=5)
        assert [m.payload["n"] for m in got] == [1, 2]
        assert [m.delivery_count for m in got] == [2, 2]
        assert (await r.xpending(inbox, "agent"))["pending"] == 0


async def test_a_name_new_to_redis_needs_no_takeover(
    settings: Settings, r: aioredis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The join made the inbox's group: nothing is pending there and no consumer was left,
    so nothing is claimed or pruned (a burst of new agents costs no round trip each); what
    was queued before the agent existed is still delivered."""
    from agent_sdk.messaging.consumer import Consumer

    pruned: list[str] = []
    real_prune = Consumer.prune_consumers

    async def prune(self: Consumer, s: Any, idle_limit: int | None = None) -> list[str]:
        pruned.append(s.key)
        return await real_prune(self, s, idle_limit)

    monkeypatch.setattr(Consumer, "prune_consumers", prune)
    got: list[Any] = []
    inbox = settings.keys.inbox("w")
    async with node(settings, "c", "client", r=r) as c:
        await c.send("w", "job", {"n": 1}, queue_if_absent=True)  # a stream with no group yet
        async with node(settings, "w", r=r) as w:

            @w.on("job")
            async def job(payload: Any) -> None:
                got.append(payload["n"])

            await wait_for(lambda: got == [1], timeout=5)
            assert w.consumer is not None
            assert w.consumer not in w.consumer.reader._takeovers
            assert inbox not in pruned


async def test_poison_entries_are_dead_lettered_and_the_reader_goes_on(
    settings: Settings, r: aioredis.Redis
) -> None:
    got: list[Any] = []
    inbox = settings.keys.inbox("w")
    async with node(settings, "w", r=r) as w:

        @w.on("job")
        async def job(payload: Any) -> None:
            got.append(payload)

        await r.xadd(inbox, {"payload": "{}"})  # no type
        await r.xadd(inbox, {"type": "job", "payload": "{not json"})
        await r.xadd(inbox, {"type": "job", "v": "9", "payload": "1"})
        await r.xadd(inbox, {"type": "mystery", "payload": "1"})
        await r.xadd(inbox, {"type": "job", "payload": '"ok"'})
        await wait_for(lambda: got, timeout=5)
        dead = await wait_for(
            lambda: _dead_count(r, settings, 4), timeout=5, message="four dead letters"
        )
    assert got == ["ok"]
    codes = sorted(d.code for d in dead)
    assert codes == sorted(
        [
            ErrorCode.UNDECODABLE,
            ErrorCode.UNDECODABLE,
            ErrorCode.UNSUPPORTED_VERSION,
            ErrorCode.UNKNOWN_TYPE,
        ]
    )
    raw = await r.xrange(settings.keys.deadletter())
    fields = raw[0][1]
    assert {"reason", "code", "source", "source_id", "failed_at"} <= set(fields)
    assert fields["source"] == inbox
    assert (await r.xpending(inbox, "agent"))["pending"] == 0


async def _dead_count(r: aioredis.Redis, settings: Settings, n: int) -> Any:
    dead = await list_dead_letters(r, settings)
    return dead if len(dead) >= n else None


async def test_expired_request_is_dropped_and_dead_lettered(
    settings: Settings, r: aioredis.Redis
) -> None:
    calls: list[Any] = []
    async with node(settings, "c", "client", r=r) as c:
        # "w" is registered but not running: the request expires in its inbox.
        await register(r, settings, "w", "worker", "i1")
        with pytest.raises(RequestTimeout):
            await c.request("w", "job", {}, timeout=0.2)
        async with node(settings, "w", r=r) as w:

            @w.on("job")
            async def job(payload: Any) -> None:
                calls.append(payload)

            dead = await wait_for(lambda: list_dead_letters(r, settings), timeout=5)
    assert calls == []
    assert dead[0].code == ErrorCode.DEADLINE_EXCEEDED
    assert dead[0].original["kind"] == "request"


async def test_consumers_of_dead_instances_are_pruned(
    settings: Settings, r: aioredis.Redis
) -> None:
    key = settings.keys.role_queue("pool")
    # A dead instance that read (and acknowledged) an entry before it died.
    await r.xgroup_create(key, AGENT_GROUP, id="0", mkstream=True)
    entry = await r.xadd(key, {"type": "x"})
    await r.xreadgroup(AGENT_GROUP, "dead-instance", {key: ">"}, count=1)
    await r.xack(key, AGENT_GROUP, entry)
    async with node(settings, "w", "pool", r=r, instance_id="live") as w:
        assert w.consumer is not None
        role_stream = w.consumer.streams[1]
        assert await w.consumer.prune_consumers(role_stream) == []  # not idle long enough yet

        async def pruned() -> bool:
            assert w.consumer is not None
            return await w.consumer.prune_consumers(role_stream) == ["dead-instance"]

        await wait_for(pruned, timeout=10 * settings.ttl + 10, interval=0.2)
        names = {c["name"] for c in await r.xinfo_consumers(key, AGENT_GROUP)}
        assert "dead-instance" not in names


async def test_idle_inbox_read_does_not_hold_back_role_work(
    settings: Settings, r: aioredis.Redis
) -> None:
    """The idle blocking read (inbox + role queue) reserves slots; role work still gets every
    slot, and the inbox still answers while the role holds all but none."""
    release = asyncio.Event()
    running = 0
    async with (
        node(settings, "w", "pool", r=r, max_concurrency=3) as w,
        node(settings, "c", "client", r=r) as c,
    ):

        @w.on("hold")
        async def hold(payload: Any) -> str:
            nonlocal running
            running += 1
            await release.wait()
            return "done"

        assert w.consumer is not None
        consumer = w.consumer
        await wait_for(lambda: consumer.blocking, timeout=5, message="idle read")
        assert consumer.slots.load == 0  # a reservation is not load
        for _ in range(4):
            await c.send(role="pool", type="hold", payload={})
        await wait_for(lambda: running == 3, timeout=5, message="three role handlers")
        release.set()
        assert await c.request("w", "hold", {}, timeout=5) == "done"  # the inbox still works
        await wait_for(lambda: consumer.handled == 5, timeout=5)


async def test_a_slot_frees_when_the_handler_returns_not_when_its_reply_lands(
    settings: Settings, r: aioredis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With ``max_concurrency=1`` the next entry is read and handled while the reply of the
    previous one is still on its way (here: held back); the reply then arrives as usual."""
    gate = asyncio.Event()
    real = Replier.reply

    async def held(self: Replier, *args: Any, **kwargs: Any) -> None:
        await gate.wait()
        await real(self, *args, **kwargs)

    monkeypatch.setattr(Replier, "reply", held)
    seen: list[str] = []
    async with node(settings, "s", r=r, max_concurrency=1) as s, node(settings, "c", r=r) as c:

        @s.on("first")
        async def first(payload: Any) -> int:
            seen.append("first")
            return 1

        @s.on("second")
        async def second(payload: Any) -> None:
            seen.append("second")

        request = asyncio.create_task(c.request("s", "first", {}, timeout=10))
        await wait_for(lambda: seen == ["first"], timeout=5, message="the first handler")
        await c.send("s", "second", {})
        await wait_for(lambda: seen == ["first", "second"], timeout=5, message="the second")
        assert not request.done()  # its reply is still held back
        gate.set()
        assert await request == 1

"""Usage stats: counted right, batched (no round trip per message), readable, kept on failure."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from agent_sdk.connection import make_client
from agent_sdk.settings import Settings
from agent_sdk.usage import TypeUsage, UsageRecorder, parse_usage, read_usage
from schemas.errors import ConnectionFailed
from schemas.keys import KeySpace
from tests.support import wait_for


@pytest.fixture
async def client(settings: Settings) -> AsyncIterator[aioredis.Redis]:
    c = make_client(settings)
    yield c
    await c.aclose()


async def test_invocations_errors_and_latency_are_counted_by_type(
    client: aioredis.Redis, settings: Settings, r: aioredis.Redis, keys: KeySpace
) -> None:
    rec = UsageRecorder(client, settings, "worker-1", interval=3600)
    for _ in range(8):
        rec.record("summarize", 0.003)  # 3 ms: bucket le_5
    rec.record("summarize", 0.040, error=True)  # 40 ms: bucket le_50
    rec.record("summarize", 20.0, error=True)  # beyond the last bound
    rec.record("search", 0.0005)
    assert rec.pending == 11
    assert not await r.exists(keys.stats("worker-1"))  # nothing written before a flush
    await rec.flush()
    assert rec.pending == 0
    raw: dict[str, str] = await r.hgetall(keys.stats("worker-1"))  # type: ignore[assignment]
    assert raw["summarize.invocations"] == "10"
    assert raw["summarize.errors"] == "2"
    assert raw["summarize.latency_ms.le_5"] == "8"
    assert raw["summarize.latency_ms.le_50"] == "1"
    assert raw["summarize.latency_ms.le_inf"] == "1"
    assert float(raw["summarize.latency_ms.sum"]) == pytest.approx(20064.0)
    assert raw["summarize.last_at"].endswith("Z")
    assert raw["search.invocations"] == "1"
    assert "search.errors" not in raw
    assert "started_at" in raw

    # a second flush adds to what is there
    rec.record("search", 0.002, error=True)
    await rec.flush()
    search, summarize = await read_usage(client, settings, "worker-1")
    assert (search.type, search.invocations, search.errors) == ("search", 2, 1)
    assert summarize.invocations == 10
    assert summarize.error_rate == pytest.approx(0.2)
    assert summarize.mean_ms == pytest.approx(2006.4)
    p50 = summarize.percentile_ms(0.5)
    assert p50 is not None
    assert 1 < p50 <= 5


async def test_a_flush_is_one_round_trip_however_many_messages(
    client: aioredis.Redis, settings: Settings, r: aioredis.Redis
) -> None:
    rec = UsageRecorder(client, settings, "busy", interval=3600)
    before = await _commands_processed(r)
    for i in range(1000):
        rec.record(f"t{i % 3}", 0.001 * (i % 7))
    after_records = await _commands_processed(r)
    await rec.flush()
    after_flush = await _commands_processed(r)
    # only our own INFO calls ran while recording; the flush sent one pipelined batch
    assert after_records - before == 1
    assert sum(u.invocations for u in await read_usage(client, settings, "busy")) == 1000
    assert after_flush - after_records < 60  # a few commands per type, not per message


async def _commands_processed(r: aioredis.Redis) -> int:
    info = await r.info("stats")
    return int(info["total_commands_processed"])


async def test_a_failed_flush_keeps_the_counts_for_the_next(
    settings: Settings, r: aioredis.Redis, keys: KeySpace
) -> None:
    dead = Settings(
        redis_url="redis://127.0.0.1:1/0", namespace=settings.namespace, retry_attempts=0
    )
    broken = make_client(dead)
    rec = UsageRecorder(broken, settings, "flaky", interval=3600)
    rec.record("x", 0.001)
    try:
        with pytest.raises(ConnectionFailed):
            await rec.flush()
    finally:
        await broken.aclose()
    assert rec.pending == 1
    good = make_client(settings)
    try:
        rec._client = good  # the connection is back
        rec.record("x", 0.001)
        await rec.flush()
    finally:
        await good.aclose()
    assert await r.hget(keys.stats("flaky"), "x.invocations") == "2"


async def test_the_background_task_flushes_and_stop_flushes_the_rest(
    client: aioredis.Redis, settings: Settings, r: aioredis.Redis, keys: KeySpace
) -> None:
    async with UsageRecorder(client, settings, "bg", interval=3600) as rec:
        rec.record("ping", 0.001)
    assert await r.hget(keys.stats("bg"), "ping.invocations") == "1"


def test_percentiles_interpolate_within_buckets() -> None:
    rows = parse_usage(
        {
            "a.invocations": "4",
            "a.latency_ms.le_10": "2",
            "a.latency_ms.le_25": "2",
            "a.latency_ms.sum": "60",
            "dotted.type.errors": "1",
        }
    )
    a, dotted = rows
    assert isinstance(a, TypeUsage)
    assert a.percentile_ms(0.5) == pytest.approx(10.0)  # the 2nd of 4 sits at the top of le_10
    assert a.percentile_ms(1.0) == pytest.approx(25.0)
    assert a.as_dict()["mean_ms"] == 15.0
    assert dotted.type == "dotted.type"
    assert dotted.errors == 1
    assert dotted.percentile_ms(0.5) is None


async def test_one_call_has_p50_p95_mean_and_max_equal(
    client: aioredis.Redis, settings: Settings
) -> None:
    rec = UsageRecorder(client, settings, "once", interval=3600)
    rec.record("ping", 0.0003)  # 0.3 ms: inside the le_1 bucket
    await rec.flush()
    (u,) = await read_usage(client, settings, "once")
    assert u.invocations == 1
    assert u.mean_ms == pytest.approx(0.3)
    assert u.min_ms == pytest.approx(0.3)
    assert u.max_ms == pytest.approx(0.3)
    assert u.percentile_ms(0.5) == pytest.approx(0.3)
    assert u.percentile_ms(0.95) == pytest.approx(0.3)
    assert u.as_dict()["max_ms"] == pytest.approx(0.3)


async def test_percentiles_stay_between_the_fastest_and_the_slowest(
    client: aioredis.Redis, settings: Settings
) -> None:
    rec = UsageRecorder(client, settings, "spread", interval=3600)
    for ms in (11.0, 12.0, 13.0, 14.0):  # all in le_25: interpolation alone would reach 25
        rec.record("t", ms / 1000)
    await rec.flush()
    rec.record("t", 0.0115)  # a second flush keeps the extremes (min/max kept by the script)
    await rec.flush()
    (u,) = await read_usage(client, settings, "spread")
    assert (u.min_ms, u.max_ms) == (pytest.approx(11.0), pytest.approx(14.0))
    for q in (0.0, 0.5, 0.95, 1.0):
        p = u.percentile_ms(q)
        assert p is not None
        assert 11.0 <= p <= 14.0


async def test_a_new_instance_starts_afresh_and_a_replaced_one_adds_nothing(
    client: aioredis.Redis, settings: Settings, r: aioredis.Redis, keys: KeySpace
) -> None:
    old = UsageRecorder(client, settings, "w", instance_id="old", interval=3600)
    await old.start()
    old.record("job", 0.001)
    await old.flush()
    assert await r.hget(keys.stats("w"), "instance_id") == "old"

    new = UsageRecorder(client, settings, "w", instance_id="new", interval=3600)
    new.started_at = "9" + new.started_at[1:]  # surely later than the old one's start
    await new.start()  # claims the hash at once, before it handled anything
    await wait_for(lambda: _field_is(r, keys.stats("w"), "instance_id", "new"), message="claim")
    stats: dict[str, str] = await r.hgetall(keys.stats("w"))  # type: ignore[assignment]
    assert stats == {"instance_id": "new", "started_at": new.started_at}
    assert await read_usage(client, settings, "w") == []  # not the old instance's call

    old.record("job", 0.001)  # a late flush of the replaced instance
    await old.flush()
    assert await read_usage(client, settings, "w") == []
    new.record("job", 0.002)
    await new.stop()
    (u,) = await read_usage(client, settings, "w")
    assert u.invocations == 1
    await old.stop()


async def _field_is(r: aioredis.Redis, key: str, field: str, value: str) -> bool:
    return bool(await r.hget(key, field) == value)

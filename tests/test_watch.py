"""The registry change feed reader: resumable, in order, exactly once, filtered, reconnecting."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from functools import partial

import orjson
import pytest
import redis.asyncio as aioredis

from agent_sdk.connection import make_client
from agent_sdk.settings import Settings
from agent_sdk.watch import EventsLost, latest_id, watch_registry
from schemas.errors import InvalidInput
from schemas.events import RegistryEvent, RegistryEventType
from schemas.keys import KeySpace
from tests.support import wait_for


@pytest.fixture
async def client(settings: Settings) -> AsyncIterator[aioredis.Redis]:
    c = make_client(settings)
    yield c
    await c.aclose()


async def _change(
    r: aioredis.Redis, keys: KeySpace, type_: str, name: str, role: str = "worker"
) -> str:
    """Write one event the way the coordinator does (flat fields) and return its revision."""
    fields = {
        "type": type_,
        "name": name,
        "instance_id": f"i-{name}",
        "role": role,
        "at": "2026-11-21T10:00:00.000Z",
    }
    if type_ == "agent_updated":
        fields["changes"] = orjson.dumps({"load": [0, 1]}).decode()
    if type_ == "agent_expired":
        fields["reason"] = "heartbeat_missed"
        fields["last_seen"] = "2026-11-21T09:59:59.000Z"
    rev = await r.xadd(keys.events(), fields)  # type: ignore[arg-type]
    return str(rev)


async def _take(stream: AsyncIterator[RegistryEvent], n: int) -> list[RegistryEvent]:
    out: list[RegistryEvent] = []
    async for event in stream:
        out.append(event)
        if len(out) == n:
            break
    return out


async def test_a_reader_that_stops_and_resumes_sees_every_change_once_in_order(
    client: aioredis.Redis, r: aioredis.Redis, keys: KeySpace
) -> None:
    written = [await _change(r, keys, "agent_registered", f"a{i}") for i in range(10)]
    first = await _take(watch_registry(client, keys, block_ms=100), 4)
    resume_at = first[-1].revision
    assert resume_at is not None
    # more changes happen while the reader is away
    written += [await _change(r, keys, "agent_updated", f"a{i}") for i in range(5)]
    rest = await _take(watch_registry(client, keys, since=resume_at, block_ms=100), 11)
    seen = [e.revision for e in first + rest]
    assert seen == written
    assert rest[-1].type is RegistryEventType.AGENT_UPDATED
    assert rest[-1].changes == {"load": [0, 1]}


async def test_live_events_arrive_while_blocked(
    client: aioredis.Redis, r: aioredis.Redis, keys: KeySpace
) -> None:
    await _change(r, keys, "agent_registered", "old")
    reader = asyncio.create_task(_take(watch_registry(client, keys, since="now"), 3))
    # events written before the reader resolved "now" would not be for it: wait until it is
    # blocked in XREAD (visible in CLIENT LIST as cmd=xread)
    await wait_for(partial(_blocked_readers, r, keys.ns), message="reader blocked in XREAD")
    revs = [await _change(r, keys, "agent_registered", f"n{i}") for i in range(3)]
    events = await asyncio.wait_for(reader, 10)
    assert [e.revision for e in events] == revs
    assert [e.name for e in events] == ["n0", "n1", "n2"]


async def _blocked_readers(r: aioredis.Redis, ns: str) -> bool:
    """Whether a client of this test's namespace (make_client names it) is blocked in XREAD."""
    clients = await r.client_list()
    return any(c.get("cmd") == "xread" and c.get("name") == f"agentbus:{ns}" for c in clients)


async def test_filters_by_role_type_and_name(
    client: aioredis.Redis, r: aioredis.Redis, keys: KeySpace
) -> None:
    await _change(r, keys, "agent_registered", "a", role="search")
    await _change(r, keys, "agent_registered", "b", role="summarize")
    await _change(r, keys, "agent_expired", "a", role="search")
    await _change(r, keys, "agent_expired", "b", role="summarize")
    await _change(r, keys, "agent_deregistered", "c", role="search")

    async def first(n: int, **filters: object) -> list[tuple[str, str]]:
        stream = watch_registry(client, keys, block_ms=50, **filters)  # type: ignore[arg-type]
        return [(e.type.value, e.name) for e in await _take(stream, n)]

    assert await first(3, roles=["search"]) == [
        ("agent_registered", "a"),
        ("agent_expired", "a"),
        ("agent_deregistered", "c"),
    ]
    assert await first(2, types=["agent_expired"]) == [
        ("agent_expired", "a"),
        ("agent_expired", "b"),
    ]
    assert await first(
        2, names=["b"], types=[RegistryEventType.AGENT_EXPIRED, "agent_registered"]
    ) == [
        ("agent_registered", "b"),
        ("agent_expired", "b"),
    ]
    # a filter that matches nothing so far yields the next matching change, not an old one
    reader = asyncio.create_task(first(1, roles=["new-role"]))
    later = await _change(r, keys, "agent_registered", "d", role="new-role")
    assert await asyncio.wait_for(reader, 10) == [("agent_registered", "d")]
    assert later


async def test_an_undecodable_entry_is_skipped_not_fatal(
    client: aioredis.Redis, r: aioredis.Redis, keys: KeySpace
) -> None:
    await r.xadd(keys.events(), {"type": "no_such_type", "name": "x"})
    good = await _change(r, keys, "agent_registered", "ok")
    (event,) = await _take(watch_registry(client, keys), 1)
    assert event.revision == good


async def test_resuming_after_trimming_raises_events_lost(
    client: aioredis.Redis, r: aioredis.Redis, keys: KeySpace
) -> None:
    old = await _change(r, keys, "agent_registered", "a")
    for i in range(5):
        await _change(r, keys, "agent_registered", f"b{i}")
    await r.xtrim(keys.events(), maxlen=2, approximate=False)
    with pytest.raises(EventsLost) as caught:
        await _take(watch_registry(client, keys, since=old), 1)
    assert caught.value.details["after"] == old
    assert caught.value.code == "events_lost"
    # a resume point that is still held is fine, trimmed or not
    held = await latest_id(r, keys.events())
    newer = await _change(r, keys, "agent_registered", "c")
    (event,) = await _take(watch_registry(client, keys, since=held), 1)
    assert event.revision == newer


async def test_the_reader_survives_a_dropped_connection(
    settings: Settings, r: aioredis.Redis, keys: KeySpace
) -> None:
    # no redis-py retries: the reader's own reconnect loop has to do the work
    plain = make_client(settings.model_copy(update={"retry_attempts": 0}))
    try:
        written = [await _change(r, keys, "agent_registered", f"a{i}") for i in range(3)]
        stream = watch_registry(plain, keys, block_ms=200)
        got = await _take(stream, 3)
        killed = await r.execute_command(  # type: ignore[no-untyped-call]
            "CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes"
        )
        assert killed >= 1
        written += [await _change(r, keys, "agent_registered", f"b{i}") for i in range(3)]
        got += await _take(stream, 3)
        assert [e.revision for e in got] == written
        await stream.aclose()  # type: ignore[attr-defined]
    finally:
        await plain.aclose()


async def test_a_malformed_resume_point_is_refused(client: aioredis.Redis, keys: KeySpace) -> None:
    with pytest.raises(InvalidInput, match="invalid resume point 'yesterday'"):
        await _take(watch_registry(client, keys, since="yesterday"), 1)
    with pytest.raises(InvalidInput, match="unknown registry event type"):
        await _take(watch_registry(client, keys, types=["agent_exploded"]), 1)

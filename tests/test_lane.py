"""``agent_sdk.lane``: one held connection, raw replies, errors as values, retries, cancellation."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis.asyncio.connection import AbstractConnection
from redis.exceptions import NoScriptError, ResponseError

from agent_sdk.connection import make_client
from agent_sdk.lane import Lane
from agent_sdk.settings import Settings
from tests.support import wait_for


@pytest.fixture
async def lane(settings: Settings) -> AsyncIterator[Lane]:
    client = make_client(settings)
    lane = Lane(client)
    yield lane
    await lane.aclose()
    await client.aclose()


async def test_replies_in_order_with_errors_as_values(lane: Lane, settings: Settings) -> None:
    key = f"{settings.namespace}:lane"
    replies = await lane.execute(
        [("SET", key, "v"), ("INCR", key), ("GET", key), ("EVALSHA", "0" * 40, 0)]
    )
    assert replies[0] in (b"OK", True)
    assert isinstance(replies[1], ResponseError)
    assert replies[2] == b"v"
    assert isinstance(replies[3], NoScriptError)
    with pytest.raises(ResponseError):
        await lane.call("INCR", key)


async def test_replies_are_read_off_the_hiredis_reader(
    lane: Lane, monkeypatch: pytest.MonkeyPatch
) -> None:
    """If redis-py changes its parser internals this fails (the lane would silently fall back
    to ``read_response``, ≈ 2-5 µs a reply)."""
    calls = 0
    real = AbstractConnection.read_response

    async def counted(self: AbstractConnection, *a: Any, **kw: Any) -> Any:
        nonlocal calls
        calls += 1
        return await real(self, *a, **kw)

    await lane.call("PING")  # connect first (the handshake may use read_response)
    monkeypatch.setattr(AbstractConnection, "read_response", counted)
    assert await lane.execute([("ECHO", str(i)) for i in range(100)]) == [
        str(i).encode() for i in range(100)
    ]
    assert calls == 0


async def test_a_cancelled_call_drops_the_connection_and_the_next_works(
    lane: Lane, settings: Settings
) -> None:
    blocked = asyncio.create_task(lane.call("BLPOP", f"{settings.namespace}:empty", 5))
    await wait_for(lambda: lane._busy, timeout=5, message="BLPOP in flight")
    blocked.cancel()
    with pytest.raises(asyncio.CancelledError):
        await blocked
    assert await lane.call("ECHO", "after") == b"after"  # not the BLPOP's late reply


async def test_a_killed_connection_is_retried(lane: Lane, r: aioredis.Redis) -> None:
    await lane.call("CLIENT", "SETNAME", "lane-under-test")
    await r.execute_command("CLIENT", "KILL", "SKIPME", "yes", "TYPE", "normal")
    assert await lane.call("ECHO", "again") == b"again"


async def test_one_round_trip_at_a_time(lane: Lane, settings: Settings) -> None:
    first = asyncio.create_task(lane.call("BLPOP", f"{settings.namespace}:empty", 1))
    await wait_for(lambda: lane._busy, timeout=5)
    with pytest.raises(RuntimeError, match="one round trip at a time"):
        await lane.call("PING")
    first.cancel()
    await asyncio.gather(first, return_exceptions=True)


async def test_a_reset_connection_is_retried(lane: Lane) -> None:
    """A socket reset while reading (Redis killed or restarted) is a connection error the
    client's retry policy handles, as a killed connection's EOF is: not a raw ``OSError``
    that escapes to the caller (found by the host fault suite: a restart under a host logged
    hundreds of "read loop failed" tracebacks)."""
    await lane.call("PING")
    conn = lane._conn
    assert conn is not None
    stream: Any = conn._parser._stream  # type: ignore[attr-defined]

    async def reset(n: int = -1) -> bytes:
        raise ConnectionResetError(104, "Connection reset by peer")

    stream.read = reset  # this connection only: the retry reconnects with a new stream
    assert await lane.call("ECHO", "again") == b"again"

"""``agent_sdk.writethrough``: commands written in the caller's turn, replies in order, errors as
exceptions of their own command, a broken connection written again, a close that fails what is
left."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import redis
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from agent_sdk import writethrough
from agent_sdk.connection import make_client
from agent_sdk.embedded import RedisServer
from agent_sdk.settings import Settings
from agent_sdk.writethrough import WriteThrough


@pytest.fixture
async def writer(settings: Settings) -> AsyncIterator[WriteThrough]:
    client = make_client(settings)
    w = WriteThrough(client)
    await w.start()
    yield w
    await w.aclose()
    await client.aclose()


async def test_commands_reach_redis_before_the_submitting_turn_ends(
    writer: WriteThrough, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What a burst submits in one turn is on the wire while the burst goes on: a blocking
    read by another client, made in the same turn (the event loop cannot run meanwhile), gets
    what was submitted just before it."""
    monkeypatch.setattr(writethrough, "_COALESCE", 0.0)  # every submit writes
    key = f"{settings.namespace}:wt"
    assert await writer.run(("PING",)) in (b"PONG", "PONG")  # connected
    other = redis.Redis.from_url(settings.url)
    try:
        first = writer.submit(("RPUSH", key, "a"))
        assert other.blpop([key], timeout=5) == (key.encode(), b"a")  # blocks this turn
        futures = [writer.submit(("RPUSH", key, str(i))) for i in range(100)]
        assert await first == 1
        assert [await f for f in futures] == list(range(1, 101))
        assert other.llen(key) == 100
    finally:
        other.close()


async def test_commands_submitted_right_after_a_write_go_with_the_next(
    writer: WriteThrough, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Within ``_COALESCE`` of a write, commands queue (one system call for many); the reading
    task writes them once the turn ends, in order."""
    await writer.run(("PING",))  # connected
    monkeypatch.setattr(writethrough, "_COALESCE", 3600.0)
    writes = writer.writes_now
    key = f"{settings.namespace}:wt-coalesce"
    futures = [writer.submit(("RPUSH", key, str(i))) for i in range(50)]
    assert [await f for f in futures] == list(range(1, 51))
    assert writer.writes_now == writes  # none written in the submitting turn: all in one


async def test_an_error_reply_fails_its_command_only(
    writer: WriteThrough, settings: Settings
) -> None:
    key = f"{settings.namespace}:wt-err"
    ok, bad, after = (
        writer.submit(("SET", key, "v")),
        writer.submit(("INCR", key)),
        writer.submit(("GET", key)),
    )
    assert await ok in (b"OK", "OK", True)
    with pytest.raises(ResponseError):
        await bad
    assert await after == b"v"


async def test_a_killed_connection_is_written_again(
    writer: WriteThrough, settings: Settings, r: aioredis.Redis
) -> None:
    key = f"{settings.namespace}:wt-kill"
    await writer.run(("CLIENT", "SETNAME", "writethrough-under-test"))
    blocked = writer.submit(("BLPOP", key, 5))  # in flight when the connection dies
    await r.execute_command("CLIENT", "KILL", "SKIPME", "yes", "TYPE", "normal")
    behind = writer.submit(("ECHO", "behind"))
    await r.rpush(key, "x")
    assert await asyncio.wait_for(blocked, 10) == [key.encode(), b"x"]
    assert await behind == b"behind"


async def test_close_fails_what_was_not_answered(settings: Settings) -> None:
    client = make_client(settings)
    w = WriteThrough(client)
    await w.start()
    try:
        await w.run(("PING",))
        blocked = w.submit(("BLPOP", f"{settings.namespace}:wt-never", 30))
    finally:
        await w.aclose()
        await client.aclose()
    with pytest.raises(RedisConnectionError):
        await blocked
    with pytest.raises(RuntimeError):
        w.submit(("PING",))


async def test_a_demoted_server_is_a_broken_connection_not_an_error_reply(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A ``READONLY`` reply (a Sentinel failover demoted the master) is retried on a new
    connection, as a broken one is; a server that stays read-only fails the command with a
    connection error, which the SDK reports as Redis being unavailable."""
    monkeypatch.setattr(writethrough, "_BACKOFF", 0.001)
    with RedisServer() as server:
        client = aioredis.Redis.from_url(server.url)
        w = WriteThrough(client)
        await w.start()
        try:
            assert await w.run(("SET", "k", "1")) in (b"OK", True)
            # a replica of nothing that answers: writes are refused with READONLY from now on
            await client.execute_command("REPLICAOF", "127.0.0.1", "1")
            with pytest.raises(RedisConnectionError, match="read-only"):
                await w.run(("SET", "k", "2"))
            await client.execute_command("REPLICAOF", "NO", "ONE")
            assert await w.run(("GET", "k")) == b"1"
        finally:
            await w.aclose()
            await client.aclose()

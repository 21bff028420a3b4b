"""``agent_sdk.writethrough``: commands written in the caller's turn, replies in order, errors as
exceptions of their own command, a broken connection written again, a close that fails what is
left, and posted commands (``CLIENT REPLY SKIP``, or their replies dropped where it is
refused)."""

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
    """Within ``_COALESCE`` of a write made in the same turn, commands queue (one system call
    for many); the reading task writes them once the turn ends, in order."""
    await writer.run(("PING",))  # connected
    monkeypatch.setattr(writethrough, "_COALESCE", 3600.0)
    writes = writer.writes_now
    key = f"{settings.namespace}:wt-coalesce"
    futures = [writer.submit(("RPUSH", key, str(i))) for i in range(50)]
    assert [await f for f in futures] == list(range(1, 51))
    assert writer.writes_now == writes + 1  # the turn's first at once, the other 49 together


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


async def _posts_and_submits(w: WriteThrough, r: aioredis.Redis, channel: str) -> None:
    """Posts interleaved with submits: every post delivered, every submit answered in order."""
    pubsub = r.pubsub()
    await pubsub.subscribe(channel)
    try:
        assert (await pubsub.get_message(timeout=5))["type"] == "subscribe"  # type: ignore[index]
        answers = []
        for i in range(20):
            w.post(("PUBLISH", channel, f"post-{i}"))
            answers.append(w.submit(("ECHO", f"echo-{i}")))
        assert [await a for a in answers] == [f"echo-{i}".encode() for i in range(20)]
        got = []
        while len(got) < 20:
            msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=5)
            assert msg is not None, f"only {len(got)} of 20 posts arrived"
            data = msg["data"]
            got.append(data.decode() if isinstance(data, bytes) else data)
        assert got == [f"post-{i}" for i in range(20)]
    finally:
        await pubsub.aclose()  # type: ignore[attr-defined]


async def test_posted_commands_get_no_reply(
    writer: WriteThrough, settings: Settings, r: aioredis.Redis
) -> None:
    """A post is written with ``CLIENT REPLY SKIP``: Redis sends nothing back for it, so the
    replies of the submits around it stay in order and nothing waits for one."""
    await writer.run(("PING",))  # connected, and asked about CLIENT REPLY
    assert writer._skip is True
    await _posts_and_submits(writer, r, f"{settings.namespace}:wt-post")
    assert not writer._items  # nothing left waiting for a reply


async def test_a_post_written_at_once_leaves_the_reading_task_asleep(
    writer: WriteThrough, settings: Settings, r: aioredis.Redis
) -> None:
    """The answer to a direct request is written in the answering turn; with no reply to read
    and nothing queued, the reading task is not woken for it (a loop turn per answer)."""
    await writer.run(("PING",))  # connected, and asked about CLIENT REPLY
    await asyncio.sleep(0)  # the next turn: the first write of this one goes at once
    key = f"{settings.namespace}:wt-asleep"
    writer.post(("RPUSH", key, "a"))
    assert not writer._wake.is_set()
    assert await r.blpop([key], timeout=5) == (key, "a")
    writer.submit(("PING",))
    assert writer._wake.is_set()  # a reply to read: woken


async def test_posts_where_client_reply_is_refused_have_their_replies_dropped(
    settings: Settings, r: aioredis.Redis, redis_server: RedisServer
) -> None:
    """A user without ``+client|reply`` (or a proxy) refuses ``CLIENT REPLY``: the connection
    is asked first, and a post there is a submit whose reply is dropped."""
    user = f"{settings.namespace}-noreply"
    await r.execute_command(
        "ACL", "SETUSER", user, "on", ">pw", "~*", "&*", "+@all", "-client|reply"
    )
    client = aioredis.Redis.from_url(redis_server.url.replace("redis://", f"redis://{user}:pw@", 1))
    w = WriteThrough(client)
    await w.start()
    try:
        await w.run(("PING",))
        assert w._skip is False
        await _posts_and_submits(w, r, f"{settings.namespace}:wt-post-refused")
    finally:
        await w.aclose()
        await client.aclose()
        await r.execute_command("ACL", "DELUSER", user)


async def test_posts_go_on_after_the_connection_is_killed(
    writer: WriteThrough, settings: Settings, r: aioredis.Redis
) -> None:
    """A new connection is asked again before anything is posted on it (what was posted on the
    dead one before its death was seen is lost: at-most-once)."""
    await writer.run(("CLIENT", "SETNAME", "writethrough-post-under-test"))
    await r.execute_command("CLIENT", "KILL", "SKIPME", "yes", "TYPE", "normal")
    assert await writer.run(("ECHO", "again")) == b"again"  # on a new connection
    await _posts_and_submits(writer, r, f"{settings.namespace}:wt-post-kill")
    assert writer._skip is True

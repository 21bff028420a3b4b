"""Pushes handed over as the connection receives them (``agent_sdk.lane.hand_over_replies``):
what the pub/sub hub does on one server, so no task is woken per message.

On a real server: a message reaches the sink with no task reading the connection; the pushes
received before the hand-over still come back from the read, in order; a read then ends only
with the connection (killed: ``ConnectionError``; a reply hiredis cannot parse: the same).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis.asyncio.client import PubSub
from redis.exceptions import ConnectionError as RedisConnectionError

from agent_sdk.connection import make_client
from agent_sdk.lane import hand_over_replies, hiredis_reader
from agent_sdk.messaging.links import read_pushes
from agent_sdk.settings import Settings
from tests.support import wait_for


@pytest.fixture
async def pubsub(settings: Settings) -> AsyncIterator[PubSub]:
    client = make_client(settings)
    ps = client.pubsub()
    yield ps
    await ps.aclose()  # type: ignore[no-untyped-call,unused-ignore]
    await client.aclose()


def _texts(push: Any) -> list[str]:
    return [p.decode() if isinstance(p, bytes) else str(p) for p in push]


async def test_a_message_reaches_the_sink_with_no_task_reading(
    pubsub: PubSub, r: aioredis.Redis, settings: Settings
) -> None:
    channel = f"{settings.namespace}:handover"
    await pubsub.subscribe(channel)
    assert pubsub.connection is not None
    before = await read_pushes(pubsub)  # the confirmation, read the usual way
    assert _texts(before[0])[:2] == ["subscribe", channel]
    got: list[list[str]] = []
    assert hand_over_replies(pubsub.connection, lambda push: got.append(_texts(push)))
    for i in range(3):
        await r.publish(channel, f"m{i}")
    await wait_for(lambda: len(got) == 3, message="3 messages handed over")
    assert got == [["message", channel, f"m{i}"] for i in range(3)]


async def test_pushes_received_before_the_hand_over_are_read_first_in_order(
    pubsub: PubSub, r: aioredis.Redis, settings: Settings
) -> None:
    channel = f"{settings.namespace}:handover-order"
    await pubsub.subscribe(channel)
    await read_pushes(pubsub)  # the confirmation
    assert pubsub.connection is not None
    _, stream = hiredis_reader(pubsub.connection) or (None, None)
    assert stream is not None
    await r.publish(channel, "early")
    await wait_for(lambda: len(stream._buffer) > 0, message="the early message buffered")
    got: list[list[str]] = []
    early = await read_pushes(pubsub, lambda push: got.append(_texts(push)))
    assert [_texts(p) for p in early] == [["message", channel, "early"]]
    await r.publish(channel, "late")
    await wait_for(lambda: got == [["message", channel, "late"]], message="the late one")


async def test_a_read_after_the_hand_over_ends_with_the_connection(
    pubsub: PubSub, r: aioredis.Redis, settings: Settings
) -> None:
    channel = f"{settings.namespace}:handover-end"
    await pubsub.subscribe(channel)
    await read_pushes(pubsub)
    got: list[Any] = []
    read = asyncio.create_task(read_pushes(pubsub, got.append))
    await r.publish(channel, "m")
    await wait_for(lambda: len(got) == 1, message="the message handed over")
    assert not read.done()  # it only waits for the end of the connection
    assert pubsub.connection is not None
    host, port = pubsub.connection._writer.get_extra_info("sockname")[:2]
    assert await r.client_kill_filter(addr=f"{host}:{port}") == 1
    with pytest.raises(ConnectionError):
        await asyncio.wait_for(read, 10)


async def test_an_unparsable_reply_ends_the_read_with_a_connection_error(
    pubsub: PubSub, settings: Settings
) -> None:
    await pubsub.subscribe(f"{settings.namespace}:handover-bad")
    await read_pushes(pubsub)
    assert pubsub.connection is not None
    got: list[Any] = []
    read = asyncio.create_task(read_pushes(pubsub, got.append))
    _, stream = hiredis_reader(pubsub.connection) or (None, None)
    # the read is waiting: what arrives now goes to the sink
    await wait_for(lambda: stream._waiter is not None, message="the read waiting")
    stream.feed_data(b"?not RESP\r\n")  # as if the server had sent it
    with pytest.raises(RedisConnectionError, match="unreadable reply"):
        await asyncio.wait_for(read, 10)
    assert got == []

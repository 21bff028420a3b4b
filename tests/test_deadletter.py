"""Dead letters: listing, replaying to the source stream, deleting."""

from __future__ import annotations

from typing import Any

import pytest
import redis.asyncio as aioredis

from agent_sdk.connection import make_client
from agent_sdk.messaging import Message, list_dead_letters, replay
from agent_sdk.messaging.deadletter import delete_dead_letter
from agent_sdk.settings import Settings
from schemas.errors import ErrorCode, InvalidInput
from tests.messaging_helpers import node
from tests.support import wait_for


async def test_list_and_replay_a_dead_letter(settings: Settings, r: aioredis.Redis) -> None:
    got: list[Message] = []
    client = make_client(settings)
    try:
        async with node(settings, "w", r=r) as w, node(settings, "c", r=r) as c:
            mid = await c.send("w", "later", {"n": 1}, headers={"traceparent": "00-x"})
            dead = await wait_for(lambda: list_dead_letters(client, settings), timeout=5)
            letter = dead[0]
            assert letter.code == ErrorCode.UNKNOWN_TYPE
            assert letter.type == "later"
            assert letter.original["id"] == mid
            assert letter.source == settings.keys.inbox("w")
            assert "no handler for message type 'later'" in letter.reason
            assert letter.failed_at.endswith("Z")

            @w.on("later")  # the fix is deployed: replay the dead letter
            async def later(payload: Any, msg: Message) -> None:
                got.append(msg)

            await replay(client, settings, letter.id)
            await wait_for(lambda: got, timeout=5)
            assert got[0].id == mid  # same message id: handlers can deduplicate
            assert got[0].payload == {"n": 1}
            assert got[0].headers == {"traceparent": "00-x"}
            assert await list_dead_letters(client, settings) == []
            with pytest.raises(InvalidInput, match="no dead letter"):
                await replay(client, settings, letter.id)
    finally:
        await client.aclose()


async def test_list_order_and_delete(settings: Settings, r: aioredis.Redis) -> None:
    client = make_client(settings)
    try:
        async with node(settings, "w", r=r):
            for i in range(3):
                await r.xadd(settings.keys.inbox("w"), {"payload": str(i)})  # no type
            dead = await wait_for(
                lambda: _at_least(client, settings, 3), timeout=5, message="three dead letters"
            )
        oldest = await list_dead_letters(client, settings, newest_first=False)
        assert [d.id for d in oldest] == [d.id for d in reversed(dead)]
        assert [d.original["payload"] for d in oldest] == ["0", "1", "2"]
        assert await delete_dead_letter(client, settings, oldest[0].id) == 1
        assert len(await list_dead_letters(client, settings, count=10)) == 2
    finally:
        await client.aclose()


async def _at_least(client: aioredis.Redis, settings: Settings, n: int) -> Any:
    dead = await list_dead_letters(client, settings)
    return dead if len(dead) >= n else None

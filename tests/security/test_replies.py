"""Attacks 2-3 and 8: forging a reply, stealing replies, reading another agent's inbox."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from redis.exceptions import NoPermissionError

from agent_sdk.messaging import Message
from coordinator import Coordinator
from tests.security.conftest import World
from tests.support import wait_for


async def test_forged_reply(world: World, coord: Coordinator) -> None:
    release = asyncio.Event()
    async with world.agent("bob", "bob") as bob, world.agent("alice", "alice") as alice:

        @bob.on("quote")
        async def quote(payload: Any, msg: Message) -> dict[str, int]:
            await release.wait()
            return {"price": 10}

        asking = asyncio.create_task(alice.request("bob", "quote", {}, timeout=5))
        mallory = await world.raw("mallory")
        inbox = world.keys.inbox("bob")
        if world.secure:  # the request cannot be read, and a guessed reply is dropped
            with pytest.raises(NoPermissionError):
                await mallory.xrange(inbox)
            for key in [alice.router.key]:
                await mallory.lpush(key, json.dumps({
                    "v": 1, "id": "x1", "kind": "reply", "type": "quote", "sender": "bob",
                    "sent_at": "2026-01-01T00:00:00.000Z", "correlation_id": "guess",
                    "payload": {"price": 0},
                }))  # fmt: skip
            release.set()
            assert await asking == {"price": 10}
            return
        entries = await wait_for(lambda: mallory.xrange(inbox), message="the request")
        request = entries[-1][1]
        await mallory.lpush(request["reply_to"], json.dumps({
            "v": 1, "id": "x1", "kind": "reply", "type": "quote", "sender": "bob",
            "sent_at": "2026-01-01T00:00:00.000Z", "correlation_id": request["id"],
            "payload": {"price": 0},
        }))  # fmt: skip
        assert await asking == {"price": 0}  # documented: the forged answer wins
        release.set()


async def test_reply_from_another_sender_is_dropped(world: World, coord: Coordinator) -> None:
    """acl mode: a reply to a named request is taken only from the agent asked (a holder of the
    correlation id, bob's handler say, cannot answer it as someone else)."""
    async with world.agent("alice", "alice") as alice:
        router = alice.router
        fut = router.expect("cid-1", sender="bob" if world.secure else None)

        def reply(sender: str, n: int) -> str:
            return json.dumps({
                "v": 1, "id": f"r{n}", "kind": "reply", "type": "t", "sender": sender,
                "sent_at": "2026-01-01T00:00:00.000Z", "correlation_id": "cid-1", "payload": n,
            })  # fmt: skip

        await world.admin.lpush(router.key, reply("carol", 1))
        await world.admin.lpush(router.key, reply("bob", 2))
        env = await asyncio.wait_for(fut, 5)
        if world.secure:
            assert (env.sender, env.payload, router.forged) == ("bob", 2, 1)
        else:  # documented: the first reply with the id wins, whoever claims to send it
            assert (env.sender, env.payload) == ("carol", 1)


async def test_stealing_replies_and_reading_inboxes(world: World, coord: Coordinator) -> None:
    async with world.agent("bob", "bob"), world.agent("alice", "alice") as alice:
        mallory = await world.raw("mallory")
        inbox = world.keys.inbox("bob")
        queue = world.keys.role_queue("payments")
        await world.admin.xgroup_create(queue, "agent", id="0", mkstream=True)
        if world.secure:
            with pytest.raises(NoPermissionError):
                await mallory.brpop([alice.router.key], timeout=0.01)
            with pytest.raises(NoPermissionError):
                await mallory.xreadgroup("agent", "mallory", {inbox: ">"}, count=1)
            with pytest.raises(NoPermissionError):
                await mallory.xreadgroup("agent", "mallory", {queue: ">"}, count=1)
            with pytest.raises(NoPermissionError):
                await mallory.xrange(inbox)
        else:  # documented: anyone may pop replies and consume any inbox or queue
            assert await mallory.brpop([alice.router.key], timeout=0.01) is None
            await mallory.xreadgroup("agent", "mallory", {inbox: ">"}, count=1)
            await mallory.xreadgroup("agent", "mallory", {queue: ">"}, count=1)

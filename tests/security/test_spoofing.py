"""Attack 1: a message claiming another sender (inbox, broadcast and topic)."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from redis.exceptions import NoPermissionError

from agent_sdk.errors import InvalidInput, PermissionDenied
from agent_sdk.messaging import Message
from coordinator import Coordinator
from tests.security.conftest import World
from tests.support import wait_for


async def test_spoofed_sender_on_an_inbox(world: World, coord: Coordinator) -> None:
    got: list[Message] = []
    async with world.agent("bob", "bob") as bob, world.agent("alice", "alice") as alice:

        @bob.on("pay")
        async def pay(payload: Any, msg: Message) -> None:
            got.append(msg)

        await alice.send("bob", "pay", {"n": 1})  # the real alice
        await wait_for(lambda: len(got) == 1, message="alice's message")
        mallory = await world.raw("mallory")
        inbox = world.keys.inbox("bob")
        await mallory.xadd(inbox, {
            "v": "1", "id": "0190000000000000000000000a", "kind": "send", "type": "pay",
            "sender": "alice", "sent_at": "2026-01-01T00:00:00.000Z", "target": "bob",
            "payload": '{"n": 1000000}',
        })  # fmt: skip
        await mallory.publish(world.keys.bell(inbox), "")
        if world.secure:
            letters = await wait_for(
                lambda: world.admin.xrange(world.keys.deadletter()), message="dead letter"
            )
            assert letters[0][1]["code"] == "unauthenticated"
            assert "'alice' is not proved" in letters[0][1]["reason"]
            assert [m.payload for m in got] == [{"n": 1}]
        else:  # documented: accepted as alice's
            await wait_for(lambda: len(got) == 2, message="the forged message handled")
            assert got[1].sender == "alice"
            assert got[1].payload == {"n": 1000000}


async def test_direct_requests_only_outside_acl_mode(world: World, coord: Coordinator) -> None:
    """``durable=False`` carries no proof of its sender: refused in acl mode, where agents do
    not even listen on their direct channel; answered otherwise."""
    async with world.agent("bob", "bob") as bob, world.agent("alice", "alice") as alice:

        @bob.on("ping")
        async def ping(payload: Any) -> Any:
            return payload

        if world.secure:
            with pytest.raises(InvalidInput, match="not available with AGENTBUS_SECURITY=acl"):
                await alice.request("bob", "ping", 1, durable=False)
            mallory = await world.raw("mallory")  # may not even publish there
            with pytest.raises(NoPermissionError):
                await mallory.publish(world.keys.direct_channel("bob"), b"{}")
        else:
            assert await alice.request("bob", "ping", 1, durable=False) == 1


def _forged(type: str, sender: str, payload: Any) -> str:
    return json.dumps({
        "v": 1, "id": "0190000000000000000000000b", "kind": "broadcast", "type": type,
        "sender": sender, "sent_at": "2026-01-01T00:00:00.000Z", "payload": payload,
    })  # fmt: skip


async def test_spoofed_sender_on_a_broadcast_and_a_topic(world: World, coord: Coordinator) -> None:
    """mallory may publish on broadcast and topic channels (the policy lets her), but a raw
    ``PUBLISH`` claiming alice is not proved by alice: handled as alice's in ``off`` mode,
    dropped and counted in acl mode. Pub/sub keeps the order of one server, so once alice's
    genuine message that follows has arrived, the forged one was seen (and dropped) first."""
    got: list[Message] = []
    async with world.agent("bob", "bob") as bob, world.agent("alice", "alice") as alice:

        @bob.on("halt")
        async def halt(payload: Any, msg: Message) -> None:
            got.append(msg)

        mallory = await world.raw("mallory")
        async with bob.subscribe("news.*") as news:
            await mallory.publish(world.keys.broadcast_channel(), _forged("halt", "alice", 1))
            await mallory.publish(world.keys.topic_channel("news.eu"), _forged("x", "alice", 2))
            await alice.broadcast("halt", 3)
            await alice.publish("news.eu", 4)
            await wait_for(lambda: any(m.payload == 3 for m in got), message="the broadcast")
            topic = [(await news.get(timeout=5)).payload]
            if world.secure:
                assert [m.payload for m in got] == [3]
                assert topic == [4]
                verifier = bob.host.plane.hub.verifier if bob.host.plane else None
                assert verifier is not None
                assert verifier.unproved == 2
            else:  # documented: both handled as alice's
                topic.append((await news.get(timeout=5)).payload)
                assert [(m.sender, m.payload) for m in got] == [("alice", 1), ("alice", 3)]
                assert topic == [2, 4]


async def test_a_topic_the_policy_refuses_fails_the_subscription_at_once(
    world: World, coord: Coordinator
) -> None:
    """Before: Redis's NOPERM reply to the PSUBSCRIBE was dropped as an unknown push and the
    subscription waited 10 s, then raised TimeoutError (and every reconnect asked again). Now it
    raises PermissionDenied (code ``permission``) at once, and the hub goes on serving what it
    was allowed: a topic of the policy still arrives."""
    async with world.agent("bob", "bob") as bob, world.agent("alice", "alice") as alice:
        if world.secure:
            started = time.monotonic()
            with pytest.raises(PermissionDenied) as e:
                async with bob.subscribe("secret.*"):
                    pass
            assert time.monotonic() - started < 2.0
            assert e.value.code == "permission"
            assert "secret.*" in str(e.value)
        else:  # documented: no topic is refused
            async with bob.subscribe("secret.*"):
                pass
        async with bob.subscribe("news.*") as news:
            await alice.publish("news.eu", 5)
            assert (await news.get(timeout=5)).payload == 5

"""Attacks 10 and 12-15: a crafted dead letter, flooding a busy agent, oversize messages, topic
subscriptions, and data rendered by the CLI."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from redis.exceptions import NoPermissionError
from rich.console import Console

from agent_sdk import Agent
from agent_sdk.messaging import Message, replay
from coordinator import Coordinator
from coordinator.cli.render import agent_details, agents_table
from schemas.agent import AgentRecord
from schemas.errors import InboxFull, InvalidInput, PayloadTooLarge
from tests.messaging_helpers import record
from tests.security.conftest import World


async def test_a_busy_agent_flooded(world: World, coord: Coordinator) -> None:
    """acl mode: the receiver's cap (published by it) refuses sends past it with InboxFull;
    default mode: every send is acknowledged and the oldest are trimmed away silently."""
    block = asyncio.Event()
    caps = {"inbox_maxlen": 50}  # acl: bob's own cap; default: the sender's setting
    async with (
        Agent("bob", "worker", settings=world.settings("bob", **caps)) as bob,
        Agent("alice", "worker", settings=world.settings("alice", **caps)) as alice,
    ):

        @bob.on("work")
        async def work(payload: Any, msg: Message) -> None:
            await block.wait()

            sent, refused = 0, 0
            for i in range(400):
                try:
                    await alice.send("bob", "work", {"i": i})
                    sent += 1
                except InboxFull:
                    refused += 1
            inbox = world.keys.inbox("bob")
            if world.secure:
                assert refused > 0
                assert sent <= 51
                assert await world.admin.xlen(inbox) == sent  # nothing trimmed
            else:  # documented: all acknowledged, some trimmed without a word
                assert (sent, refused) == (400, 0)
                assert await world.admin.xlen(inbox) < 400
            block.set()


async def test_oversize_message(world: World, coord: Coordinator) -> None:
    """The receiver's byte limit is enforced by the send script, whatever the sender's own
    setting says."""
    async with world.agent("bob", "bob", max_payload_bytes=2048):
        big = world.settings("alice", max_payload_bytes=4 * 1024 * 1024)
        async with Agent("alice", "worker", settings=big) as alice:
            body = "x" * (256 * 1024)
            if world.secure:
                with pytest.raises(PayloadTooLarge, match="the receiver accepts"):
                    await alice.send("bob", "blob", body)
                assert await world.admin.xlen(world.keys.inbox("bob")) == 0
            else:  # documented: only a well-behaved sender checks
                await alice.send("bob", "blob", body)
                assert await world.admin.xlen(world.keys.inbox("bob")) == 1


async def test_crafted_dead_letter_is_not_replayed(world: World) -> None:
    """Both modes now: replay writes only messages, only to inboxes and role queues of the
    namespace (before: a crafted letter wrote a leave into the control stream, and a key
    outside the namespace)."""
    keys = world.keys
    crafted = [
        {"source": keys.control(), "orig.kind": "control", "orig.type": "leave"},
        {"source": "elsewhere:key", "orig.kind": "send", "orig.type": "x"},
        {"source": keys.replies("alice", "i"), "orig.kind": "reply", "orig.type": "x"},
        {"source": keys.inbox("bob"), "orig.kind": "control", "orig.type": "leave"},
    ]
    operator = world.settings("operator")
    client = await world.raw("operator")
    from agent_sdk.connection import make_client

    sdk = make_client(operator)
    try:
        for fields in crafted:
            letter_id = await world.admin.xadd(keys.deadletter(), {
                "reason": "r", "code": "c", "source_id": "1-0", "failed_at": "x",
                "orig.sender": "alice", **fields,
            })  # fmt: skip
            with pytest.raises(InvalidInput, match=r"not replayed|only messages"):
                await replay(sdk, operator, letter_id)
        assert await world.admin.xlen(keys.control()) == 0
        assert not await world.admin.exists("elsewhere:key")
        assert await client.xlen(keys.deadletter()) == len(crafted)
    finally:
        await sdk.aclose()


async def test_topic_subscriptions_are_limited(world: World) -> None:
    """acl mode: a user may PSUBSCRIBE only the topic patterns of its policy (each pattern
    costs every PUBLISH on the server), so 50,000 patterns are refused at the first."""
    mallory = await world.raw("mallory")
    pubsub = mallory.pubsub()
    try:
        await pubsub.psubscribe(world.keys.topic_channel("news.*"))  # in the policy
        assert (await pubsub.get_message(timeout=2))["type"] == "psubscribe"
        if world.secure:
            await pubsub.psubscribe(world.keys.topic_channel("x0.*"))
            with pytest.raises(NoPermissionError):
                await pubsub.get_message(timeout=1)
        else:  # documented: any number
            await pubsub.psubscribe(*(world.keys.topic_channel(f"x{i}.*") for i in range(500)))
    finally:
        await pubsub.aclose()


def test_registry_fields_are_rendered_safely() -> None:
    """Both modes: markup and terminal escapes in a card are shown, not interpreted; a newline
    cannot forge a line."""
    rec = record("evil", "worker", "i1")
    evil = AgentRecord.model_validate({
        **rec.model_dump(), "description": "[bold red]x[/] \x1b[2J\x1b]8;;http://e\x07y\nforged",
    })  # fmt: skip
    console = Console(record=True, width=200, force_terminal=True, color_system=None)
    console.print(agents_table([evil], 200))
    console.print(agent_details(evil))
    text = console.export_text()
    assert "\x1b" not in text
    assert "\\x1b[2J" in text
    assert "[bold red]x[/]" in text
    assert "\\x0aforged" in text

"""Attack: ``XADD <other inbox> MAXLEN 0`` wipes entries the receiver has not read. Neither
mode can prevent it (permission to append is permission to trim); both detect it: the
receiver's loss watch dead-letters a ``messages_lost`` record with the count."""

from __future__ import annotations

import asyncio
from typing import Any

from agent_sdk import Agent
from coordinator import Coordinator
from tests.security.conftest import World
from tests.support import wait_for

SENT = 10


async def test_inbox_wiped_by_another_sender_is_reported(world: World, coord: Coordinator) -> None:
    release = asyncio.Event()
    handled: list[Any] = []
    bob = Agent("bob", "worker", settings=world.settings("bob", loss_check=0.1), max_concurrency=1)

    @bob.on("job")
    async def job(payload: Any) -> None:
        handled.append(payload)
        await release.wait()

    async with bob, world.agent("alice", "alice") as alice:
        for i in range(SENT):
            await alice.send("bob", "job", i)
        await wait_for(lambda: handled == [0], message="bob busy with the first")
        mallory = await world.raw("mallory")
        inbox = world.keys.inbox("bob")
        await mallory.xadd(inbox, {"x": "1"}, maxlen=0, approximate=False)
        assert await world.admin.xlen(inbox) == 0
        letters = await wait_for(
            lambda: _letters(world, "messages_lost"), message="the loss reported"
        )
        (letter,) = letters
        assert letter["source"] == inbox
        # everything bob had not read: alice's unread messages and mallory's own entry
        unread = SENT - len(handled)
        assert unread - 1 <= int(letter["count"]) <= unread + 1, letter
        assert "removed before they were read" in letter["reason"]
        plane = bob.host.plane
        assert plane is not None
        # counted once the check's script has answered: the letter can be read a moment before
        await wait_for(
            lambda: plane.reader.losses.lost == int(letter["count"]), message="the loss counted"
        )
        release.set()
        # reported once: another check finds nothing new
        assert await plane.reader.losses.check([inbox]) == 0


async def _letters(world: World, code: str) -> list[dict[str, str]]:
    return [f for _, f in await world.admin.xrange(world.keys.deadletter()) if f["code"] == code]

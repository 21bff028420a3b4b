"""``Turnstile``: a burst of callers goes through ``per_turn`` per turn of the event loop, in
arrival order; a lone caller at once; a caller cancelled while waiting gives its place up."""

from __future__ import annotations

import asyncio

import pytest

from agent_sdk.turnstile import Turnstile


async def test_a_burst_goes_through_per_turn_in_arrival_order() -> None:
    gate = Turnstile(per_turn=4)
    turn = 0
    passed: list[tuple[int, int]] = []  # (caller, the turn it went through in)

    async def ticker() -> None:
        nonlocal turn
        while True:
            await asyncio.sleep(0)
            turn += 1

    async def caller(i: int) -> None:
        await gate.enter()
        passed.append((i, turn))

    tick = asyncio.create_task(ticker())
    await asyncio.gather(*(caller(i) for i in range(10)))
    tick.cancel()
    assert [i for i, _ in passed] == list(range(10))
    turns = [t for _, t in passed]
    assert turns[:4] == [turns[0]] * 4  # the first four in the first turn
    assert turns[4] > turns[3]  # then four per later turn
    assert turns[8] > turns[7]
    assert max(turns.count(t) for t in set(turns)) == 4


async def test_a_lone_caller_goes_through_at_once() -> None:
    gate = Turnstile(per_turn=1)
    for _ in range(3):  # one per turn, each in its own turn: never waits
        await gate.enter()
        await asyncio.sleep(0)
        await asyncio.sleep(0)


async def test_a_caller_cancelled_while_waiting_is_skipped() -> None:
    gate = Turnstile(per_turn=1)
    first, waiting, after = (asyncio.create_task(gate.enter()) for _ in range(3))
    await asyncio.sleep(0)  # all three came in one turn: the first went through
    assert first.done()
    assert not waiting.done()
    waiting.cancel()
    await asyncio.wait_for(after, 1)
    assert waiting.cancelled()


def test_per_turn_must_be_positive() -> None:
    with pytest.raises(ValueError, match="per_turn"):
        Turnstile(per_turn=0)

"""Stopping tasks for sure (``agent_sdk.tasks``): a lost cancellation is repeated."""

from __future__ import annotations

import asyncio

import pytest

from agent_sdk.tasks import cancel_all, cancel_and_wait
from tests.support import wait_for


async def test_a_task_that_loses_a_cancellation_is_cancelled_again(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """As a library call that swallows ``CancelledError`` would: the loop goes on after the
    first cancel; a plain ``cancel(); await task`` would wait forever here."""
    swallowed = 0

    async def loop() -> None:
        nonlocal swallowed
        while True:
            try:
                await asyncio.sleep(0.01)
            except asyncio.CancelledError:
                if swallowed:
                    raise
                swallowed += 1
                asyncio.current_task().uncancel()  # type: ignore[union-attr]

    task = asyncio.create_task(loop(), name="lossy")
    await asyncio.sleep(0)
    async with asyncio.timeout(5):
        await cancel_and_wait(task, retry_every=0.05)
    assert task.cancelled()
    assert swallowed == 1
    assert "task lossy ignored 1 cancellation(s)" in caplog.text


async def test_cancel_all_stops_every_task_and_keeps_their_errors_to_themselves() -> None:
    async def forever() -> None:
        await asyncio.Event().wait()

    async def fails() -> None:
        raise RuntimeError("boom")

    tasks = [asyncio.create_task(forever()), asyncio.create_task(fails())]
    await asyncio.sleep(0)
    await cancel_all(tasks)
    assert tasks[0].cancelled()
    assert isinstance(tasks[1].exception(), RuntimeError)


async def test_the_caller_can_still_be_cancelled_while_it_waits() -> None:
    give_up = False
    ignored = 0

    async def stubborn() -> None:  # ignores cancellation until told otherwise
        nonlocal ignored
        while True:
            try:
                await asyncio.sleep(0.01)
            except asyncio.CancelledError:
                if give_up:
                    raise
                ignored += 1
                asyncio.current_task().uncancel()  # type: ignore[union-attr]

    task = asyncio.create_task(stubborn())
    stopper = asyncio.create_task(cancel_and_wait(task, retry_every=0.05))
    await wait_for(lambda: ignored >= 2, timeout=5, message="two cancellations ignored")
    stopper.cancel()
    with pytest.raises(asyncio.CancelledError):
        await stopper
    assert not task.done()
    give_up = True
    async with asyncio.timeout(5):
        await cancel_and_wait(task, retry_every=0.05)
    assert task.cancelled()

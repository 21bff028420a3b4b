"""Stopping background tasks for sure: cancel, wait, and cancel again if the cancel was lost.

A cancellation can be lost inside a library call. The case found here: a redis-py client with a
``socket_timeout`` (redis-py 8 defaults it to 5 s) writes each command inside ``asyncio.wait_for``,
and on Python 3.11 ``wait_for`` drops a cancellation that arrives as its inner write completes:
the task goes on as if never cancelled (in 128 of 1,000 random cancellations of a task running
one ``XADD`` with such a client; 0 of 1,000 with agentbus's own clients, which set no socket
timeout). A plain ``task.cancel(); await task`` then waits forever: an agent or a coordinator
that never finishes stopping. ``cancel_and_wait`` cancels again every ``retry_every`` seconds
until the task has ended, and logs when it had to.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from typing import Any

__all__ = ["cancel_all", "cancel_and_wait"]

log = logging.getLogger("agentbus")

RETRY_EVERY = 1.0  # a task still cleaning up after this long is cancelled again


async def cancel_and_wait(task: asyncio.Task[Any], *, retry_every: float = RETRY_EVERY) -> None:
    """Cancel ``task`` and return once it has ended (its outcome is not raised).

    The caller being cancelled while it waits ends the wait (the task keeps its cancellation).
    """
    attempts = 0
    while not task.done():
        task.cancel()
        attempts += 1
        await asyncio.wait({task}, timeout=retry_every)
    if attempts > 1:
        log.warning("task %s ignored %d cancellation(s) before it ended", task.get_name(),
                    attempts - 1)  # fmt: skip
    if not task.cancelled():
        task.exception()  # retrieved: an error at shutdown is the task's own to log


async def cancel_all(tasks: Iterable[asyncio.Task[Any]]) -> None:
    """``cancel_and_wait`` every task, all at once."""
    await asyncio.gather(*(cancel_and_wait(t) for t in tasks))

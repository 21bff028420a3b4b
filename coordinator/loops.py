"""Background loop helpers of the coordinator: periodic work that survives Redis errors.

A coordinator loop never dies of a Redis error: it logs with context, waits (exponential back-off
with jitter, capped: ``agent_sdk.retry``) and tries again, until it is told to stop.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from redis.exceptions import RedisError

from agent_sdk.connection import CONNECTION_ERRORS
from agent_sdk.retry import keep_running, wait_or_stop

__all__ = ["RETRYABLE", "periodic", "wait_or_stop"]

#: Errors a background loop survives (logged, backed off, retried).
RETRYABLE: tuple[type[BaseException], ...] = (*CONNECTION_ERRORS, RedisError)


async def periodic(
    what: str,
    interval: float,
    step: Callable[[], Awaitable[object]],
    stopping: asyncio.Event,
    log: logging.Logger,
    *,
    cap: float = 2.0,
) -> None:
    """Run ``step`` every ``interval`` seconds until ``stopping``; survive Redis errors (the
    first wait after a failure is about ``interval``)."""

    async def tick() -> None:
        await step()
        await wait_or_stop(stopping, interval)

    await keep_running(
        what,
        tick,
        log=log,
        first=max(interval, 0.05),
        cap=max(cap, interval),
        stopping=stopping,
        expected=RETRYABLE,
    )

"""Background loop helpers: waits that end early on stop, and back-off after failures.

A coordinator loop never dies of a Redis error: it logs with context, waits (exponential back-off
with jitter, capped) and tries again, until it is told to stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Awaitable, Callable

from redis.exceptions import RedisError

from agent_sdk.connection import CONNECTION_ERRORS

__all__ = ["RETRYABLE", "Backoff", "periodic", "wait_or_stop"]

#: Errors a background loop survives (logged, backed off, retried).
RETRYABLE: tuple[type[BaseException], ...] = (*CONNECTION_ERRORS, RedisError)


class Backoff:
    """Exponential back-off with full jitter: base, 2 x base, ... up to ``cap`` seconds."""

    def __init__(self, base: float = 0.05, cap: float = 2.0) -> None:
        self.base = base
        self.cap = cap
        self.failures = 0

    def next(self) -> float:
        self.failures += 1
        ceiling = min(self.cap, self.base * 2 ** min(self.failures, 16))
        return random.uniform(ceiling / 2, ceiling)

    def reset(self) -> None:
        self.failures = 0


async def wait_or_stop(stopping: asyncio.Event, seconds: float) -> bool:
    """Wait ``seconds`` or until ``stopping`` is set; return whether it is set."""
    if stopping.is_set():
        return True
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stopping.wait(), seconds)
    return stopping.is_set()


async def periodic(
    what: str,
    interval: float,
    step: Callable[[], Awaitable[object]],
    stopping: asyncio.Event,
    log: logging.Logger,
    *,
    cap: float = 2.0,
) -> None:
    """Run ``step`` every ``interval`` seconds until ``stopping``; survive Redis errors."""
    backoff = Backoff(base=max(interval, 0.05), cap=max(cap, interval))
    while not stopping.is_set():
        try:
            await step()
        except RETRYABLE as e:
            delay = backoff.next()
            log.warning("%s failed (%s: %s); retrying in %.2fs", what, type(e).__name__, e, delay)
            if await wait_or_stop(stopping, delay):
                return
            continue
        except Exception:  # a bug: log it whole, and keep the loop alive
            delay = backoff.next()
            log.exception("%s failed unexpectedly; retrying in %.2fs", what, delay)
            if await wait_or_stop(stopping, delay):
                return
            continue
        backoff.reset()
        if await wait_or_stop(stopping, interval):
            return

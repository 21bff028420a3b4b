"""Background loops that survive: log, back off, try again (tenacity underneath).

Every loop that must outlive a Redis restart (the reply list reader, the heartbeats, the change
feed reader, the coordinator's loops) goes through here instead of a hand-written sleep::

    await keep_running("reading the reply list", self._pop_one, cap=s.retry_max_backoff, log=log)

``keep_running`` calls ``step()`` again and again until ``stopping`` is set (forever without
one: cancel the task to end it). ``retrying`` retries one operation until it succeeds. After a
failure both log one line (a traceback only for an error that is not ``EXPECTED``: a bug), then
wait: the n-th failure in a row waits a random time between half and all of
``min(cap, first * 2 ** (n - 1))`` (exponential back-off with jitter, so that many processes
cut off together do not come back in step). A success resets it: the next failure waits
``first`` again. ``stopping`` cuts a wait short.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Awaitable, Callable

from redis.exceptions import RedisError
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type
from tenacity.wait import wait_base

from agent_sdk.connection import CONNECTION_ERRORS
from schemas.errors import AgentbusError

__all__ = ["EXPECTED", "Backoff", "keep_running", "retrying", "wait_or_stop"]

#: Errors a loop expects now and then (Redis restarted, a connection cut): logged in one line.
#: Any other exception is logged with its traceback, and retried all the same.
EXPECTED: tuple[type[BaseException], ...] = (AgentbusError, *CONNECTION_ERRORS, RedisError)

#: The first wait after a failure (seconds), unless the loop says otherwise.
FIRST_WAIT = 0.05


class Backoff(wait_base):
    """A tenacity wait: exponential with equal jitter, counted from the last ``reset()``."""

    def __init__(self, first: float = FIRST_WAIT, cap: float = 2.0) -> None:
        self.first = first
        self.cap = max(cap, first)
        #: Failures in a row since the last success.
        self.failures = 0

    def __call__(self, retry_state: RetryCallState) -> float:
        return self.next()

    def next(self) -> float:
        self.failures += 1
        ceiling = min(self.cap, self.first * 2 ** min(self.failures - 1, 30))
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


def retrying(
    what: str,
    *,
    log: logging.Logger,
    cap: float,
    first: float = FIRST_WAIT,
    retry_on: tuple[type[BaseException], ...] = (Exception,),
    expected: tuple[type[BaseException], ...] = EXPECTED,
    on_error: Callable[[BaseException], object] | None = None,
    stopping: asyncio.Event | None = None,
    backoff: Backoff | None = None,
) -> AsyncRetrying:
    """Retry an operation until it succeeds::

        async for attempt in retrying("reading the feed", log=log, cap=2.0):
            with attempt:
                reply = await client.xread(...)

    Errors outside ``retry_on`` (and cancellation) are raised at once. ``on_error`` sees each
    error that will be retried, before the wait. The same ``backoff`` may be shared by several
    uses (a loop resets it after each success)."""
    wait = backoff if backoff is not None else Backoff(first, cap)

    def before_sleep(state: RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome is not None else None
        delay = state.next_action.sleep if state.next_action is not None else 0.0
        if error is None:
            return
        if on_error is not None:
            on_error(error)
        if isinstance(error, expected):
            name = type(error).__name__
            log.warning("%s failed (%s: %s); retrying in %.2fs", what, name, error, delay)
        else:
            log.error("%s failed unexpectedly; retrying in %.2fs", what, delay, exc_info=error)

    async def sleep(seconds: float) -> None:
        if stopping is None:
            await asyncio.sleep(seconds)
        else:
            await wait_or_stop(stopping, seconds)

    return AsyncRetrying(
        retry=retry_if_exception_type(retry_on),
        wait=wait,
        before_sleep=before_sleep,
        sleep=sleep,
        reraise=True,
    )


async def keep_running(
    what: str,
    step: Callable[[], Awaitable[object]],
    *,
    log: logging.Logger,
    cap: float,
    first: float = FIRST_WAIT,
    stopping: asyncio.Event | None = None,
    expected: tuple[type[BaseException], ...] = EXPECTED,
    on_error: Callable[[BaseException], object] | None = None,
) -> None:
    """Call ``step()`` over and over until ``stopping`` is set (forever without it); survive
    every ``Exception`` it raises (module docstring). Cancellation ends it."""
    backoff = Backoff(first, cap)
    stopped = stopping.is_set if stopping is not None else _never
    async for attempt in retrying(
        what, log=log, cap=cap, expected=expected, on_error=on_error, stopping=stopping,
        backoff=backoff,
    ):  # fmt: skip
        with attempt:
            while not stopped():  # while steps succeed: no bookkeeping but the reset
                await step()
                backoff.failures = 0


def _never() -> bool:
    return False

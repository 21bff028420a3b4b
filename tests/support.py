"""Helpers for tests: waiting on conditions with a deadline (never a bare sleep)."""

from __future__ import annotations

import asyncio
import inspect
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, overload

from agent_sdk.settings import Settings
from coordinator import CoordinatorSettings
from schemas.keys import KeySpace

T = TypeVar("T")


@overload
async def wait_for(
    condition: Callable[[], Awaitable[T]],
    *,
    timeout: float = 10.0,
    interval: float = 0.01,
    message: str = "condition",
) -> T: ...


@overload
async def wait_for(
    condition: Callable[[], T],
    *,
    timeout: float = 10.0,
    interval: float = 0.01,
    message: str = "condition",
) -> T: ...


async def wait_for(
    condition: Callable[[], Awaitable[T] | T],
    *,
    timeout: float = 10.0,
    interval: float = 0.01,
    message: str = "condition",
) -> T:
    """Poll ``condition`` until it returns a truthy value; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while True:
        result = condition()
        last = await result if inspect.isawaitable(result) else result
        if last:
            return last
        if time.monotonic() > deadline:
            raise AssertionError(
                f"timed out after {timeout}s waiting for {message} (last={last!r})"
            )
        await asyncio.sleep(interval)


def wait_for_sync(
    condition: Callable[[], T],
    *,
    timeout: float = 10.0,
    interval: float = 0.01,
    message: str = "condition",
) -> T:
    deadline = time.monotonic() + timeout
    while True:
        last = condition()
        if last:
            return last
        if time.monotonic() > deadline:
            raise AssertionError(
                f"timed out after {timeout}s waiting for {message} (last={last!r})"
            )
        time.sleep(interval)


def fast_coordinator_settings(settings: Settings) -> CoordinatorSettings:
    """``settings`` plus fast coordinator loops (sweep every 20 ms, claim after 0.5 s): what
    the tests' coordinators run with, on one server or a cluster."""
    return CoordinatorSettings(
        **settings.model_dump(),
        coordinator_id=f"test-{uuid.uuid4().hex[:8]}",
        sweep_interval=0.02,
        stall_threshold=0.3,
        claim_idle=0.5,
        health_interval=0.2,
        read_block=0.5,
        drain_timeout=5.0,
    )


async def deadline_of(r: Any, keys: KeySpace, name: str) -> float | None:
    """A registered name's deadline (ms): its own, or its host's lease's (protocol 2.2)."""
    own = await r.zscore(keys.deadlines(), name)
    if own is not None:
        return float(own)
    lease = await r.hget(keys.record(name), "lease")
    found = None if lease is None else await r.zscore(keys.leases(), lease)
    return None if found is None else float(found)


def deadline_of_sync(r: Any, keys: KeySpace, name: str) -> float | None:
    """``deadline_of`` with a synchronous client."""
    own = r.zscore(keys.deadlines(), name)
    if own is not None:
        return float(own)
    lease = r.hget(keys.record(name), "lease")
    found = None if lease is None else r.zscore(keys.leases(), lease)
    return None if found is None else float(found)

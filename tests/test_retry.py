"""``agent_sdk.retry``: the one back-off-and-retry helper of every background loop."""

from __future__ import annotations

import asyncio
import logging

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from agent_sdk.retry import Backoff, keep_running, retrying
from tests.support import wait_for

log = logging.getLogger("test.retry")


def test_backoff_grows_with_jitter_up_to_the_cap_and_resets() -> None:
    backoff = Backoff(first=0.1, cap=0.5)
    ceilings = [0.1, 0.2, 0.4, 0.5, 0.5]
    for ceiling in ceilings:
        delay = backoff.next()
        assert ceiling / 2 <= delay <= ceiling
    assert backoff.failures == len(ceilings)
    backoff.reset()
    assert 0.05 <= backoff.next() <= 0.1
    # jitter: many processes cut off together do not come back in step
    assert len({Backoff(first=1.0, cap=8.0).next() for _ in range(20)}) > 1


async def test_keep_running_survives_errors_and_logs_them(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Every failure is seen by ``on_error`` and logged; an unexpected error (a bug) with its
    traceback, an expected one in one line. The loop goes on until ``stopping``."""
    outcomes: list[BaseException | None] = [
        RedisConnectionError("cut"), ValueError("bug"), None, RedisConnectionError("cut again"),
    ]  # fmt: skip
    seen: list[BaseException] = []
    stopping = asyncio.Event()
    calls = 0

    async def step() -> None:
        nonlocal calls
        calls += 1
        if not outcomes:
            stopping.set()
            return
        outcome = outcomes.pop(0)
        if outcome is not None:
            raise outcome

    with caplog.at_level(logging.WARNING, logger="test.retry"):
        await asyncio.wait_for(
            keep_running(
                "stepping",
                step,
                log=log,
                cap=0.01,
                first=0.001,
                stopping=stopping,
                on_error=seen.append,
            ),
            10,
        )
    assert calls == 5
    assert [str(e) for e in seen] == ["cut", "bug", "cut again"]
    records = [r for r in caplog.records if r.name == "test.retry"]
    assert [r.levelno for r in records] == [logging.WARNING, logging.ERROR, logging.WARNING]
    assert "stepping failed (ConnectionError: cut); retrying in" in records[0].getMessage()
    assert records[1].exc_info is not None  # the bug's traceback
    assert records[2].exc_info is None


async def test_keep_running_resets_the_backoff_after_a_success() -> None:
    """The wait after each failure, as chosen: it grows while failures follow one another and
    starts over after a success."""
    plan = [True, True, True, False, True]  # True: fail
    waits: list[float] = []
    stopping = asyncio.Event()

    async def step() -> None:
        if not plan:
            stopping.set()
            return
        if plan.pop(0):
            raise RedisConnectionError("cut")

    class Recording(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            assert isinstance(record.args, tuple)
            waits.append(float(record.args[-1]))  # type: ignore[arg-type]

    handler = Recording()
    log.addHandler(handler)
    try:
        await keep_running("x", step, log=log, cap=1.0, first=0.001, stopping=stopping)
    finally:
        log.removeHandler(handler)
    assert len(waits) == 4
    # 0.001, 0.002, 0.004 (each between half and all of it), then 0.001 again after the success
    assert waits[3] <= 0.001 < waits[2]


async def test_keep_running_ends_when_stopping_is_set_during_a_wait() -> None:
    stopping = asyncio.Event()
    failures = 0

    async def step() -> None:
        nonlocal failures
        failures += 1
        raise RedisConnectionError("down")

    task = asyncio.create_task(
        keep_running("down", step, log=log, cap=60.0, first=60.0, stopping=stopping)
    )
    await wait_for(lambda: failures == 1, message="the first failure")
    stopping.set()  # the 60 s wait is cut short, and the step does not run again
    await asyncio.wait_for(task, 5)
    assert failures == 1


async def test_keep_running_is_cancelled_like_any_task() -> None:
    started = asyncio.Event()

    async def step() -> None:
        started.set()
        await asyncio.Event().wait()  # forever

    task = asyncio.create_task(keep_running("blocked", step, log=log, cap=1.0))
    await asyncio.wait_for(started.wait(), 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_retrying_retries_only_what_it_is_told_to() -> None:
    attempts = 0

    async def flaky() -> str:
        nonlocal attempts
        attempts += 1
        if attempts < 3:
            raise RedisConnectionError("blip")
        return "ok"

    result = None
    async for attempt in retrying(
        "flaky", log=log, cap=0.01, first=0.001, retry_on=(RedisConnectionError,)
    ):
        with attempt:
            result = await flaky()
    assert (result, attempts) == ("ok", 3)

    async def broken() -> None:
        raise KeyError("not retried")

    async def retried() -> None:
        async for attempt in retrying("broken", log=log, cap=0.01, retry_on=(OSError,)):
            with attempt:
                await broken()

    with pytest.raises(KeyError):
        await retried()

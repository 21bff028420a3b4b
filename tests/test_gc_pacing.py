"""Garbage collection paced into the idle moments of the event loop (``agent_sdk._gcpace``),
run by the executable edge whenever ``tune_gc`` set the collector."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Iterator

import pytest

from agent_sdk import _gcpace
from agent_sdk._gcpace import due, next_look, pace
from agent_sdk.runner import GC_THRESHOLDS, run_coroutine
from tests.support import wait_for

TUNED = GC_THRESHOLDS


@pytest.mark.parametrize(
    ("count", "late", "expected"),
    [
        ((0, 0, 0), 0.0, None),  # nothing young
        ((12_499, 0, 0), 0.0, None),  # under a quarter of the threshold
        ((12_500, 0, 0), 0.0, 0),  # a quarter: the young generation, in the quiet
        # an older generation: once its count passed its threshold / the share (20 / 0.25):
        # a paced young collection covers a quarter of the objects one of Python's covers
        ((12_500, 21, 0), 0.0, 0),
        ((12_500, 81, 0), 0.0, 1),
        ((12_500, 81, 81), 0.0, 2),  # the whole heap
        ((100, 81, 0), 0.0, 1),  # an older generation is due whatever the young count
        ((49_000, 81, 81), 0.002, None),  # woken late: the loop is busy, Python's own trigger
    ],
)
def test_the_generation_due(count: tuple[int, int, int], late: float, expected: int | None) -> None:
    assert due(count, TUNED, late) == expected


def test_a_quiet_process_looks_rarely_and_a_busy_one_often() -> None:
    assert next_look((100, 0, 0), TUNED) == _gcpace._QUIET_INTERVAL
    assert next_look((6_250, 0, 0), TUNED) == _gcpace._INTERVAL  # half way to a quarter
    assert _gcpace._QUIET_INTERVAL > _gcpace._INTERVAL


def test_nothing_is_due_when_collection_is_off() -> None:
    assert due((10**6, 100, 100), (0, 10, 10), 0.0) is None


@pytest.fixture
def tuned_collector() -> Iterator[None]:
    before = gc.get_threshold()
    gc.set_threshold(*TUNED)
    gc.collect()
    try:
        yield
    finally:
        gc.set_threshold(*before)


async def test_an_idle_loop_collects_the_young_before_python_would(
    tuned_collector: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_gcpace, "_INTERVAL", 0.01)
    monkeypatch.setattr(_gcpace, "_QUIET_INTERVAL", 0.01)
    collections = gc.get_stats()[0]["collections"]
    # long-lived objects, as a host's new agents: 20,000 of 50,000, so Python's own trigger
    # does not fire; the pacer collects once they pass a quarter of it
    kept = [[] for _ in range(20_000)]
    assert gc.get_count()[0] >= 20_000
    pacer = asyncio.create_task(pace())
    try:
        await wait_for(
            lambda: gc.get_stats()[0]["collections"] > collections,
            message="a young collection in the idle loop",
        )
        assert gc.get_count()[0] < 12_500
    finally:
        pacer.cancel()
        await asyncio.gather(pacer, return_exceptions=True)
    assert len(kept) == 20_000


def _pacer_running() -> bool:
    seen: list[bool] = []

    async def main() -> int:
        seen.append(any(t.get_name() == "agentbus-gc-pacer" for t in asyncio.all_tasks()))
        return 0

    assert run_coroutine(main()) == 0
    return seen[0]


def test_the_executable_edge_paces_the_collector_it_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AGENTBUS_GC_THRESHOLD", raising=False)
    before = gc.get_threshold()
    gc.set_threshold(700, 10, 10)
    try:
        assert _pacer_running()
        # Python's own collector (AGENTBUS_GC_THRESHOLD=0) or a program's: not paced
        gc.set_threshold(700, 10, 10)
        monkeypatch.setenv("AGENTBUS_GC_THRESHOLD", "0")
        assert not _pacer_running()
        monkeypatch.delenv("AGENTBUS_GC_THRESHOLD")
        gc.set_threshold(1234, 5, 6)
        assert not _pacer_running()
    finally:
        gc.set_threshold(*before)

"""Garbage collection while the event loop is idle (pacing), for processes whose collector
``agent_sdk.runner.tune_gc`` set.

With the youngest generation's threshold at 50,000 objects, a collection walks up to 50,000
young objects: 2.5-5 ms on the 2-core machines of docs/BENCHMARKS.md, and Python starts it
on whichever allocation crosses the threshold, most often in the middle of a burst (100 agents
added at once allocate some 16,000 objects that live on). A host's agents rarely form garbage
cycles: those collections find nothing, they only move the young agents to the next generation.

``pace`` looks at the collector's counts every ``_INTERVAL`` seconds while young objects pile
up, every ``_QUIET_INTERVAL`` seconds otherwise (an idle process wakes rarely). If it woke on
time (the loop had nothing else to run) and the youngest generation is ``_SHARE`` of the way to
its threshold, it collects now, in the quiet, what Python would collect later in the middle of
work, in smaller pieces. A loop that is busy is left alone: then Python's own trigger still
applies, as without pacing.

An older generation's count is the number of collections of the one below since its own last
collection, and a paced collection covers ``_SHARE`` of the objects one of Python's covers: so
an older generation is collected once its count passes its threshold divided by ``_SHARE``
(the whole heap no more often than Python would walk it).
"""

from __future__ import annotations

import asyncio
import gc

__all__ = ["due", "next_look", "pace"]

#: Seconds between two looks at the collector's counts: while objects pile up, and while few
#: have (below half of ``_SHARE``).
_INTERVAL = 0.05
_QUIET_INTERVAL = 0.25
#: The share of the youngest generation's threshold from which an idle loop collects.
_SHARE = 0.25
#: Woken later than this (seconds): the loop was busy, nothing is collected this time.
_BUSY = 0.001


def due(count: tuple[int, int, int], threshold: tuple[int, ...], late: float) -> int | None:
    """The generation to collect now, or ``None``: the oldest whose count passed its threshold
    divided by ``_SHARE`` (module docstring), or the youngest once it holds ``_SHARE`` of its
    threshold; nothing if the loop woke ``late`` (busy) or collection is off (threshold 0)."""
    if late > _BUSY or not threshold or threshold[0] <= 0:
        return None
    for generation in (2, 1):
        if generation < len(threshold) and count[generation] > threshold[generation] / _SHARE:
            return generation
    if count[0] >= threshold[0] * _SHARE:
        return 0
    return None


def next_look(count: tuple[int, int, int], threshold: tuple[int, ...]) -> float:
    """Seconds until the next look: soon while young objects pile up, later while few have."""
    piling = bool(threshold) and count[0] >= threshold[0] * _SHARE / 2
    return _INTERVAL if piling else _QUIET_INTERVAL


async def pace() -> None:
    """Collect in the idle moments of this event loop (module docstring), until cancelled."""
    loop = asyncio.get_running_loop()
    interval = _QUIET_INTERVAL
    while True:
        before = loop.time()
        await asyncio.sleep(interval)
        late = loop.time() - before - interval
        threshold = gc.get_threshold()
        if gc.isenabled():
            generation = due(gc.get_count(), threshold, late)
            if generation is not None:
                gc.collect(generation)
        interval = next_look(gc.get_count(), threshold)

"""Where the garbage collector runs during bursts of agents added at once, paced or not.

``python -m bench.gc_pacing [--rounds R]``: one ``redis-server`` and one coordinator (child
processes, the coordinator paced as ``agentbus run`` paces it), then in this process, with the
collector set as ``agentbus run`` sets it (``tune_gc``), four phases in turn: unpaced, paced,
unpaced, paced. Each phase is a fresh ``Host`` of 1,000 agents to which 100 agents are added at
once, ``R`` times (default 30), 0.3 s apart, as the ``host`` group's "added at once" does.

Per kind (both phases of it together): the p50 and p99 over every start, the median and the
largest of the bursts' p50s, and the collections of this process: how many started inside a
burst and the time they took there, how many in the pauses between bursts.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import statistics
import time
from typing import Any

import orjson

from agent_sdk.embedded import RedisServer
from agent_sdk.runner import paced, tune_gc
from agent_sdk.settings import Settings
from bench.coord import CoordinatorProcess
from bench.protocol import card_for, echo_agent

__all__ = ["main"]

#: A quiet gap between bursts (a pause, not a wait for anything: the bursts are independent).
_GAP = 0.3
_BURST = 100
_BASE = 1000


class _Collections:
    """The collections of this process, each marked as started inside a burst or not."""

    def __init__(self) -> None:
        self.in_burst = False
        self.seen: list[tuple[bool, int, float]] = []  # (in a burst, generation, seconds)
        self._start: tuple[bool, float] | None = None

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._start = (self.in_burst, time.perf_counter())
        elif self._start is not None:
            inside, t = self._start
            self.seen.append((inside, int(info["generation"]), time.perf_counter() - t))
            self._start = None


async def _phase(url: str, ns: str, rounds: int, marks: _Collections) -> list[Any]:
    from agent_sdk import Host

    host = Host(Settings(redis_url=url, namespace=ns), name=f"gc-{ns}")
    for i in range(_BASE):
        echo_agent(host, i, "base")
    bursts: list[list[float]] = []
    async with host:
        for r in range(rounds):
            await asyncio.sleep(_GAP)
            cards = {i: card_for(i, "u") for i in range(r * _BURST, (r + 1) * _BURST)}

            async def timed(i: int, card: Any) -> float:
                t = time.perf_counter()
                await echo_agent(host, i, "u", card).start()
                return time.perf_counter() - t

            marks.in_burst = True
            try:
                took = await asyncio.gather(
                    *(asyncio.create_task(timed(i, c)) for i, c in cards.items())
                )
            finally:
                marks.in_burst = False
            bursts.append(took)
    return bursts


def _summary(bursts: list[list[float]], seen: list[tuple[bool, int, float]]) -> dict[str, Any]:
    starts = sorted(t * 1000 for b in bursts for t in b)
    p50s = [statistics.median(b) * 1000 for b in bursts]
    inside = [s for flag, _, s in seen if flag]
    return {
        "starts": len(starts),
        "p50_ms": statistics.median(starts),
        "p99_ms": starts[min(len(starts) - 1, int(len(starts) * 0.99))],
        "burst_p50_median_ms": statistics.median(p50s),
        "burst_p50_max_ms": max(p50s),
        "collections_in_bursts": len(inside),
        "collections_in_bursts_ms": sum(inside) * 1000,
        "collections_between": len(seen) - len(inside),
        "collections_between_ms": sum(s for flag, _, s in seen if not flag) * 1000,
    }


async def _run(url: str, rounds: int) -> dict[str, Any]:
    kinds: dict[str, tuple[list[list[float]], list[tuple[bool, int, float]]]] = {
        "unpaced": ([], []),
        "paced": ([], []),
    }
    for n, kind in enumerate(("unpaced", "paced", "unpaced", "paced")):
        gc.collect()
        marks = _Collections()
        gc.callbacks.append(marks)
        try:
            phase = _phase(url, f"gcpace{n}", rounds, marks)
            bursts = await (paced(phase) if kind == "paced" else phase)
        finally:
            gc.callbacks.remove(marks)
        kinds[kind][0].extend(bursts)
        kinds[kind][1].extend(marks.seen)
    return {kind: _summary(*data) for kind, data in kinds.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=30, help="bursts per phase (4 phases)")
    args = p.parse_args()
    if not tune_gc():
        raise SystemExit("the collector is not agentbus's (AGENTBUS_GC_THRESHOLD or the program)")
    with RedisServer() as server:
        coordinators = [CoordinatorProcess(server.url, f"gcpace{n}").start() for n in range(4)]
        try:
            out = asyncio.run(_run(server.url, args.rounds))
        finally:
            for c in coordinators:
                c.stop()
    for kind, s in out.items():
        print(f"{kind:8s} {s['starts']} starts: p50 {s['p50_ms']:.2f} ms, p99 {s['p99_ms']:.2f} ms;"
              f" bursts' p50 median {s['burst_p50_median_ms']:.2f}, largest "
              f"{s['burst_p50_max_ms']:.2f} ms; collections in bursts "
              f"{s['collections_in_bursts']} ({s['collections_in_bursts_ms']:.1f} ms), between "
              f"{s['collections_between']} ({s['collections_between_ms']:.1f} ms)")  # fmt: skip
    print(orjson.dumps(out).decode())


if __name__ == "__main__":
    main()

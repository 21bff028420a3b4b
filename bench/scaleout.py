"""Scale-out bench: one server beside a local Redis Cluster (3 masters + 3 replicas), same run.

``python -m bench.scaleout [--agents N] [--requests N]`` starts both topologies on free ports
(``tests/topologies.py``), runs one coordinator per topology in this process, and measures on
each: registering N SDK agents at once, heartbeats applied per second by the coordinator,
discovery latency among them, request-reply latency (sequential) and throughput (64 in
flight). Prints one Markdown table (docs/SCALING.md keeps the figures).
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid
from typing import Any

from agent_sdk import Agent, Bus, Settings
from agent_sdk.embedded import RedisServer
from agent_sdk.messaging import Message
from bench.stats import percentile
from coordinator import Coordinator, CoordinatorSettings
from tests.topologies import LocalCluster

__all__ = ["main"]


def _settings(url: str) -> Settings:
    return Settings(
        redis_url=url,
        namespace=f"b{uuid.uuid4().hex[:8]}",
        heartbeat_interval=0.5,
        ttl=3.0,
        announce_timeout=30,
        request_timeout=10,
    )


async def _measure(url: str, agents: int, requests: int) -> dict[str, float]:
    s = _settings(url)
    cs = CoordinatorSettings(**s.model_dump(), coordinator_id=f"bench-{uuid.uuid4().hex[:6]}")
    out: dict[str, float] = {}
    fleet = [Agent(f"w-{i}", f"role-{i % 10}", settings=s) for i in range(agents)]
    for a in fleet:

        @a.on("echo")
        async def echo(payload: Any, msg: Message) -> Any:
            return payload

    async with Coordinator(cs) as coord, Bus(s) as bus:
        t0 = time.perf_counter()
        await asyncio.gather(*(a.start() for a in fleet))
        out["registration agents/s"] = agents / (time.perf_counter() - t0)
        hb0, t0 = coord.stats.heartbeats, time.perf_counter()
        await asyncio.sleep(3.0)  # a measuring window, not a synchronisation
        out["heartbeats applied/s"] = (coord.stats.heartbeats - hb0) / (time.perf_counter() - t0)
        lat = []
        for i in range(200):
            t = time.perf_counter()
            found = await bus.discover(role=f"role-{i % 10}")
            lat.append((time.perf_counter() - t) * 1000)
            assert len(found) == agents // 10
        lat.sort()
        out["discovery p50 ms"] = percentile(lat, 50)
        lat = []
        for i in range(requests):
            t = time.perf_counter()
            await bus.request(f"w-{i % agents}", "echo", i)
            lat.append((time.perf_counter() - t) * 1000)
        lat.sort()
        out["request-reply p50 ms"] = percentile(lat, 50)
        out["request-reply p99 ms"] = percentile(lat, 99)
        sem = asyncio.Semaphore(64)

        async def one(i: int) -> None:
            async with sem:
                await bus.request(f"w-{i % agents}", "echo", i)

        t0 = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(requests * 4)))
        out["request-reply /s (64 in flight)"] = requests * 4 / (time.perf_counter() - t0)
        events: Any = await bus.client.xrange(s.keys.events())
        out["false expiries"] = sum(1 for _, f in events if f.get(b"type") == b"agent_expired")
        await asyncio.gather(*(a.stop() for a in fleet))
    return out


async def _run(agents: int, requests: int) -> None:
    single = RedisServer().start()
    cluster = LocalCluster().start()
    try:
        rows = {
            "one server": await _measure(single.url, agents, requests),
            "cluster 3+3": await _measure(cluster.url, agents, requests),
        }
    finally:
        cluster.stop()
        single.cleanup()
    names = list(next(iter(rows.values())))
    print("| measure | " + " | ".join(rows) + " |")
    print("|---|" + "---|" * len(rows))
    for n in names:
        print(f"| {n} | " + " | ".join(f"{r[n]:,.2f}" for r in rows.values()) + " |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--agents", type=int, default=200)
    p.add_argument("--requests", type=int, default=500)
    args = p.parse_args()
    asyncio.run(_run(args.agents, args.requests))


if __name__ == "__main__":
    main()

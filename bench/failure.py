"""Failure detection: SIGKILL an agent process → ``agent_expired`` on the change feed.

Agents are real ``Agent``s (default settings unless told otherwise), one per spawned process.
Kills are spread over a heartbeat interval so the kill lands at every phase of the heartbeat
cycle; the time is taken from ``os.kill`` to the moment a watcher reads the event.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
from typing import Any

from bench.common import client, now_ns
from bench.procs import Worker, WorkerContext, spawn
from bench.stats import Latency
from schemas.keys import KeySpace

__all__ = ["failure_detection", "wait_expired"]

_BATCH = 5  # agent processes alive at once (2 cores)


async def victim_worker(
    ctx: WorkerContext, url: str, ns: str, name: str, heartbeat: float, ttl: float
) -> None:
    from agent_sdk.agent import Agent
    from agent_sdk.settings import Settings

    settings = Settings(redis_url=url, namespace=ns, heartbeat_interval=heartbeat, ttl=ttl)
    async with Agent(name, "victim", settings=settings):
        ctx.ready()
        await asyncio.Event().wait()


async def wait_expired(
    r: Any, keys: KeySpace, since: str, names: set[str], timeout: float
) -> dict[str, int]:
    """Read the change feed from ``since`` until every name in ``names`` expired."""
    seen: dict[str, int] = {}
    last = since
    deadline = now_ns() + int(timeout * 1e9)
    while names - seen.keys() and now_ns() < deadline:
        resp = await r.xread({keys.events(): last}, block=200, count=100)
        t = now_ns()
        for _, entries in resp or []:
            for eid, fields in entries:
                last = eid.decode()
                name = fields.get(b"name", b"").decode()
                if fields.get(b"type") == b"agent_expired" and name in names:
                    seen.setdefault(name, t)
    return seen


async def failure_detection(
    url: str, ns: str, kills: int, loop: str, heartbeat: float = 1.0, ttl: float = 3.0
) -> tuple[Latency, dict[str, Any]]:
    keys = KeySpace(ns)
    r = client(url)
    rng = random.Random(6)
    samples: list[float] = []
    missed = 0
    try:
        done = 0
        while done < kills:
            batch = min(_BATCH, kills - done)
            names = [f"victim-{done + k:03d}" for k in range(batch)]
            workers: list[Worker] = [
                spawn(victim_worker, url, ns, n, heartbeat, ttl, loop=loop, wait=False)
                for n in names
            ]
            try:
                for w in workers:
                    w.wait_ready()
                last: Any = await r.xrevrange(keys.events(), count=1)
                since = last[0][0].decode() if last else "0-0"
                killed: dict[str, int] = {}
                for name, w in zip(names, workers, strict=True):
                    await asyncio.sleep(rng.uniform(0, heartbeat))  # random heartbeat phase
                    os.kill(w.pid, signal.SIGKILL)
                    killed[name] = now_ns()
                seen = await wait_expired(r, keys, since, set(names), timeout=ttl * 3 + 5)
                for name, t_kill in killed.items():
                    if name in seen:
                        samples.append((seen[name] - t_kill) / 1000)  # µs
                    else:
                        missed += 1
            finally:
                for w in workers:
                    w.stop()
            done += batch
    finally:
        await r.aclose()
    return Latency.from_us(samples), {"kills": kills, "missed": missed, "ttl_s": ttl,
                                      "heartbeat_s": heartbeat}  # fmt: skip

"""Fleets of simulated agents against the real coordinator (a child process).

* ``register_latency``: one agent at a time, announce → ``announce_result`` (protocol level);
* ``bulk_register``: N long-TTL agents announced in pipelined batches (for discovery);
* ``fleet_run``: N agents spread over worker processes announce, then heartbeat at the default
  rate for a window while the coordinator's CPU, RSS, false expiries and Redis memory are taken.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson
import psutil

from bench.common import Sizes, client, command_calls, now_ns, per_op
from bench.coord import CoordinatorProcess
from bench.procs import WorkerContext, context, spawn
from bench.protocol import (
    CONTROL_MAXLEN,
    announce_all,
    announce_fields,
    collect_results,
    heartbeat_until,
    sim_agents,
)
from bench.stats import Latency
from schemas.keys import KeySpace

__all__ = ["bulk_register", "fleet_run", "register_latency", "sdk_start_latency"]

LONG_TTL_MS = 3_600_000  # agents that must stay registered without heartbeats
LONG_HB_MS = 1_200_000


async def register_latency(url: str, keys: KeySpace, sizes: Sizes) -> Latency:
    """Announce → accepted, sequentially, each time a new agent (coordinator must run)."""
    r = client(url)
    agents = sim_agents(keys, 0, sizes.warmup + sizes.samples, prefix="reg")
    control = keys.control()
    samples = []
    try:
        for i, agent in enumerate(agents):
            fields = announce_fields(agent, LONG_HB_MS, LONG_TTL_MS)
            t0 = now_ns()
            await r.xadd(control, fields, maxlen=CONTROL_MAXLEN, approximate=True)
            got = await r.brpop([agent.reply_to], timeout=5)
            t1 = now_ns()
            if got is None:
                raise RuntimeError("register: no announce_result in 5 s")
            reply = orjson.loads(got[1])
            if reply.get("error"):
                raise RuntimeError(f"register: refused: {reply['error']}")
            if i >= sizes.warmup:
                samples.append(t1 - t0)
        return Latency.from_ns(samples)
    finally:
        await r.aclose()


async def sdk_start_latency(url: str, ns: str, n: int) -> tuple[Latency, dict[str, float]]:
    """``Agent.start()`` (connect, reply router, announce → accepted, messaging) for new agents;
    also the Redis commands per start + stop cycle."""
    from agent_sdk.agent import Agent
    from agent_sdk.settings import Settings

    settings = Settings(redis_url=url, namespace=ns)
    samples = []
    before = await command_calls(url)
    for i in range(n + 3):
        agent = Agent(f"sdk-{i:04d}", "bench", settings=settings)
        t0 = now_ns()
        await agent.start()
        t1 = now_ns()
        await agent.stop()
        if i >= 3:
            samples.append(t1 - t0)
    return Latency.from_ns(samples), per_op(before, await command_calls(url), n + 3)


async def bulk_register(url: str, keys: KeySpace, n: int) -> dict[str, Any]:
    """Register ``n`` long-TTL agents through pipelined announces; registration throughput."""
    r = client(url)
    agents = sim_agents(keys, 0, n)
    try:
        t0 = time.perf_counter()
        await announce_all(r, keys, agents, heartbeat_ms=LONG_HB_MS, ttl_ms=LONG_TTL_MS)
        accepted, refused = await collect_results(r, agents, timeout=max(30.0, n / 200))
        seconds = time.perf_counter() - t0
        registered = int(await r.scard(keys.agents()))
    finally:
        await r.aclose()
    return {
        "agents": n,
        "accepted": accepted,
        "refused": len(refused),
        "registered": registered,
        "seconds": seconds,
        "per_second": accepted / seconds if seconds else 0.0,
    }


# -- heartbeating fleet --------------------------------------------------------------------------
async def fleet_worker(
    ctx: WorkerContext,
    url: str,
    ns: str,
    start: int,
    count: int,
    go: Any,
    stop: Any,
    heartbeat_ms: int,
    ttl_ms: int,
    ramp: int,
) -> None:
    """``count`` simulated agents: announce on ``go`` (all at once, or ``ramp`` at a time),
    heartbeat until ``stop``."""
    keys = KeySpace(ns)
    r = client(url)
    hb = client(url)
    agents = sim_agents(keys, start, count)
    await r.ping()
    await hb.ping()
    ctx.ready()
    await asyncio.to_thread(go.wait)
    if not ramp:
        await announce_all(r, keys, agents, heartbeat_ms=heartbeat_ms, ttl_ms=ttl_ms)
    stopping = asyncio.Event()
    beats = asyncio.create_task(
        heartbeat_until(
            hb, keys, agents, interval=heartbeat_ms / 1000, stop=stopping,
            heartbeat_ms=heartbeat_ms, ttl_ms=ttl_ms, ramp=ramp,
        )
    )  # fmt: skip
    await asyncio.to_thread(stop.wait)
    stopping.set()
    ctx.put(await beats)


async def _info_memory(r: Any) -> int:
    info = await r.info("memory")
    return int(info["used_memory"])


async def _count_events(r: Any, keys: KeySpace, since: str, kind: str) -> int:
    count = 0
    start = since
    while True:
        entries = await r.xrange(keys.events(), min=f"({start}", max="+", count=1000)
        if not entries:
            return count
        for eid, fields in entries:
            if fields.get(b"type") == kind.encode():
                count += 1
            start = eid.decode()


async def fleet_run(
    url: str,
    ns: str,
    n: int,
    window: float,
    procs: int,
    loop: str,
    *,
    heartbeat_ms: int = 1000,
    ttl_ms: int = 3000,
    settle: float = 2.0,
    ramp: int = 500,
) -> dict[str, Any]:
    """N agents over ``procs`` processes against one coordinator process; measures the window."""
    keys = KeySpace(ns)
    r = client(url)
    ctx = context()
    go, stop = ctx.Event(), ctx.Event()
    workers = []
    out: dict[str, Any] = {"agents": n, "window_s": window, "processes": procs, "ramp": ramp}
    try:
        mem0 = await _info_memory(r)
        with CoordinatorProcess(url, ns) as coordinator:
            out["rss_idle_mb"] = coordinator.rss_mb()
            share = [n // procs + (1 if k < n % procs else 0) for k in range(procs)]
            first = 0
            for count in share:
                args = (url, ns, first, count, go, stop, heartbeat_ms, ttl_ms, ramp)
                workers.append(spawn(fleet_worker, *args, loop=loop))
                first += count
            cpu_a = coordinator.cpu_seconds()
            t0 = time.perf_counter()
            go.set()
            registered = 0
            give_up = t0 + max(60.0, n / 100)
            while registered < n and time.perf_counter() < give_up:
                await asyncio.sleep(0.05)  # polling the registry size while agents announce
                registered = int(await r.scard(keys.agents()))
            out["registered"] = registered
            out["register_seconds"] = time.perf_counter() - t0
            out["register_per_second"] = registered / out["register_seconds"]
            out["register_cpu_s"] = coordinator.cpu_seconds() - cpu_a
            await asyncio.sleep(settle)  # let the registration burst drain
            last: Any = await r.xrevrange(keys.events(), count=1)
            since = last[0][0].decode() if last else "0-0"
            peak_rss = coordinator.rss_mb()
            lag_max = pending_max = 0
            redis_ps = psutil.Process(int((await r.info("server"))["process_id"]))
            redis0 = sum(redis_ps.cpu_times()[:2])
            cpu0, w0 = coordinator.cpu_seconds(), time.perf_counter()
            end = w0 + window
            while (now := time.perf_counter()) < end:
                await asyncio.sleep(min(1.0, end - now))
                peak_rss = max(peak_rss, coordinator.rss_mb())
                for group in await r.xinfo_groups(keys.control()):
                    pending_max = max(pending_max, int(group.get("pending") or 0))
                    lag_max = max(lag_max, int(group.get("lag") or 0))
            cpu1, w1 = coordinator.cpu_seconds(), time.perf_counter()
            out["cpu_percent"] = (cpu1 - cpu0) / (w1 - w0) * 100
            out["redis_cpu_percent"] = (sum(redis_ps.cpu_times()[:2]) - redis0) / (w1 - w0) * 100
            out["rss_mb"] = coordinator.rss_mb()
            out["rss_peak_mb"] = peak_rss
            out["control_pending_max"] = pending_max
            out["control_lag_max"] = lag_max
            out["expired_in_window"] = await _count_events(r, keys, since, "agent_expired")
            out["expired_total"] = await _count_events(r, keys, "0-0", "agent_expired")
            out["registered_at_end"] = int(await r.scard(keys.agents()))
            mem1 = await _info_memory(r)
            control_mem = int(await r.memory_usage(keys.control(), samples=0) or 0)
            events_mem = int(await r.memory_usage(keys.events(), samples=0) or 0)
            out["redis_used_memory_delta"] = mem1 - mem0
            out["redis_control_stream_bytes"] = control_mem
            out["redis_events_stream_bytes"] = events_mem
            out["redis_bytes_per_agent"] = (mem1 - mem0) / n
            out["redis_registry_bytes_per_agent"] = (mem1 - mem0 - control_mem - events_mem) / n
            stop.set()
            beats = [w.result(timeout=30) for w in workers]
            out["heartbeats_sent"] = sum(b["heartbeats"] for b in beats)
            out["simulator_reannounces"] = sum(b["reannounces"] for b in beats)
            out["simulator_refused"] = sum(b["refused"] for b in beats)
            out["simulator_unregistered_at_stop"] = sum(b["unregistered_at_stop"] for b in beats)
            out["simulator_never_started"] = sum(b["never_started"] for b in beats)
            joins = Latency.from_us([t * 1e6 for b in beats for t in b["join_times"]])
            out["join_p50_s"] = joins.p50 / 1e6
            out["join_max_s"] = joins.max / 1e6
            out["joins_over_5s"] = sum(1 for b in beats for t in b["join_times"] if t > 5.0)
            out["simulator_max_late_ms"] = max(b["max_late_ms"] for b in beats)
            out["coordinator"] = coordinator.module
        out["coordinator_stats"] = coordinator.final_stats()
    finally:
        stop.set()
        for w in workers:
            w.stop()
        await r.aclose()
    return out

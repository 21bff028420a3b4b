"""The ``host`` group: N agents carried by one ``Host`` process, against a real coordinator.

For each size the host runs in a worker process (so its CPU, memory and connections are its
own): ``async with host`` registers all N at once (timed), the host idles for the window with
heartbeat 1 s / TTL 3 s (host and coordinator CPU, false expiries), then 100 more agents are
started at once on the running host (each ``start()`` timed: the per-user agent case), then the
host stops (every agent leaves). The same run measures one lone ``Agent.start()`` as the
baseline for the per-agent figures.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

import psutil

from bench.cli import Context
from bench.common import client
from bench.coord import CoordinatorProcess
from bench.procs import WorkerContext, context, spawn
from bench.stats import Latency, Row, Scalar
from schemas.keys import KeySpace

__all__ = ["host_group"]

_ADDED = 100  # agents added at once to a running host


def _settings(url: str, ns: str) -> Any:
    from agent_sdk.settings import Settings

    return Settings(redis_url=url, namespace=ns, heartbeat_interval=1.0, ttl=3.0)


async def host_worker(
    ctx: WorkerContext, url: str, ns: str, n: int, go: Any, idle_done: Any
) -> None:
    """A host of ``n`` agents: registers them on ``go``, idles, adds ``_ADDED``, stops."""
    from agent_sdk import Host

    host = Host(_settings(url, ns), name="bench-host")
    for i in range(n):
        host.agent(f"h-{i}", "hosted", capabilities=["bench"])
    ctx.ready()
    await asyncio.to_thread(go.wait)
    t0 = time.perf_counter()
    await host.start()
    ctx.put({"register_s": time.perf_counter() - t0})
    await asyncio.to_thread(idle_done.wait)  # the parent measures the idle window
    added = [host.agent(f"u-{i}", "per-user") for i in range(_ADDED)]

    async def timed(agent: Any) -> float:
        t = time.perf_counter()
        await agent.start()
        return time.perf_counter() - t

    ctx.put({"added_s": list(await asyncio.gather(*(timed(a) for a in added)))})
    await host.stop()
    ctx.put({"stopped": True})


async def _lone_start(url: str, ns: str, samples: int) -> Latency:
    """``Agent.start()`` of a lone agent, one after another: the per-agent baseline."""
    from agent_sdk import Agent

    times = []
    for i in range(samples):
        agent = Agent(f"lone-{i}", "lone", settings=_settings(url, ns))
        t = time.perf_counter()
        await agent.start()
        times.append(time.perf_counter() - t)
        await agent.stop()
    return Latency.from_us([t * 1e6 for t in times])


def _connections(pid: int, port: int) -> int:
    proc = psutil.Process(pid)
    return sum(1 for c in proc.net_connections("tcp") if c.raddr and c.raddr.port == port)


async def _run_size(ctx: Context, n: int, window: float) -> dict[str, Any]:
    ns = f"host{n}"
    keys = KeySpace(ns)
    port = int(ctx.url.rsplit(":", 1)[1].split("/", 1)[0])
    r = client(ctx.url)
    mp = context()
    go, idle_done = mp.Event(), mp.Event()
    out: dict[str, Any] = {"agents": n, "window_s": window}
    try:
        with CoordinatorProcess(ctx.url, ns) as coordinator:
            worker = spawn(host_worker, ctx.url, ns, n, go, idle_done, loop=ctx.loop)
            try:
                go.set()
                out.update(worker.result(timeout=max(120.0, n / 50)))
                out["registered"] = int(await r.scard(keys.agents()))
                await asyncio.sleep(2.0)  # let the start settle before the idle window
                ps = psutil.Process(worker.pid)
                since: Any = await r.xrevrange(keys.events(), count=1)
                since_id = since[0][0].decode() if since else "0-0"
                host_cpu0, coord_cpu0 = sum(ps.cpu_times()[:2]), coordinator.cpu_seconds()
                t0 = time.perf_counter()
                await asyncio.sleep(window)  # the idle window under test
                elapsed = time.perf_counter() - t0
                out["host_cpu_pct"] = 100 * (sum(ps.cpu_times()[:2]) - host_cpu0) / elapsed
                out["coordinator_cpu_pct"] = (
                    100 * (coordinator.cpu_seconds() - coord_cpu0) / elapsed
                )
                out["host_rss_mb"] = ps.memory_info().rss / 2**20
                out["host_connections"] = _connections(worker.pid, port)
                rows: Any = await r.xrange(keys.events(), min=f"({since_id}", max="+")
                out["expired_in_window"] = sum(
                    1 for _, f in rows if f.get(b"type") == b"agent_expired"
                )
                idle_done.set()
                added = worker.result(timeout=120)["added_s"]
                out["added"] = Latency.from_us([t * 1e6 for t in added])
                worker.result(timeout=120)
            finally:
                worker.stop()
    finally:
        await r.flushdb()
        await r.aclose()
    return out


async def host_group(ctx: Context) -> None:
    """Hosts of 100 and 1,000 agents (``BENCH_HOST_SIZES=100,1000``; ``--quick``: 20), and the
    lone agent beside them."""
    env = os.environ.get("BENCH_HOST_SIZES", "")
    sizes = [int(x) for x in env.split(",") if x] or list(ctx.sizes.hosts)
    window = min(ctx.sizes.duration, 20.0)
    with CoordinatorProcess(ctx.url, "hostlone"):
        lone = await _lone_start(ctx.url, "hostlone", min(30, ctx.sizes.samples))
    ctx.details["host_lone_start"] = lone.as_dict()
    for n in sizes:
        res = await _run_size(ctx, n, window)
        added: Latency = res.pop("added")
        ctx.details[f"host_{n}"] = {**res, "added": added.as_dict()}
        ctx.add(
            Row(
                key=f"host.{n}.register",
                title=f"host of {n} agents: all registered after `async with host`",
                value=Scalar(res["register_s"], "s", "{:.2f}"),
                note=f"{res['registered']} registered; idle (heartbeat 1 s, TTL 3 s, "
                f"{window:g} s): host {res['host_cpu_pct']:.1f} % of a core, coordinator "
                f"{res['coordinator_cpu_pct']:.1f} %, host RSS {res['host_rss_mb']:.0f} MB, "
                f"{res['host_connections']} connections, {res['expired_in_window']} expired",
            )
        )
        ctx.add(
            Row(
                key=f"host.{n}.add100",
                title=f"{_ADDED} agents added at once to a running host of {n}: start() p50 / p99",
                value=added,
                baseline_name="a lone Agent.start(), one at a time",
                baseline=lone,
                target="p50 ≤ 10 ms, p99 ≤ 25 ms",
                met=added.p50 <= 10_000 and added.p99 <= 25_000,
            )
        )

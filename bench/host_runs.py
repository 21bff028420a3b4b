"""The runs of the ``host`` group, each against a real coordinator (figures as plain dicts).

* ``size_run``: a host of N agents in a worker process: ``async with host`` (all registered,
  timed); an idle window (host and coordinator CPU, host RSS, connections held, false
  expiries); request-reply to one of its agents beside a lone agent, raw redis-py and NATS,
  asked by one client process in alternating blocks while the host runs (``bench.rr_paired``);
  ``added`` agents started at once on it, ``host_bursts`` times (a pause between bursts).
* ``kill_run``: a host whose agents hold role-queue items is SIGKILLed: when each of its agents
  is reported expired, when each item is redelivered to the surviving host.
* ``spread_run``: agents over 3 hosts plus single-agent processes: discovery among them.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import statistics
import time
from typing import Any

import psutil

from bench import discovery
from bench.common import Sizes, client, now_ns
from bench.coord import CoordinatorProcess
from bench.failure import wait_expired
from bench.host_workers import HostSpec, host_worker, lone_agent_worker, settings
from bench.procs import Worker, context, spawn
from bench.rr_paired import rr_paired
from bench.stats import Latency
from schemas.keys import KeySpace

__all__ = ["HostDriver", "kill_run", "size_run", "spread_run"]


#: Agents a spread host starts at a time: ~1,500 at once on each of 3 hosts at the same time
#: exceed the 5 s announce timeout on 2 cores (the 10,000-agent run shows why).
_SPREAD_WAVE = 500
#: A quiet gap between two bursts of agents added at once (a pause, not a wait for anything:
#: the bursts are independent).
_BURST_GAP = 0.3


class HostDriver:
    """A host worker and its command queue; ``items`` collects the ``work`` items it reports."""

    def __init__(self, url: str, ns: str, spec: HostSpec, loop: str) -> None:
        self.spec = spec
        self.commands = context().Queue()
        self.worker: Worker = spawn(host_worker, url, ns, spec, self.commands, loop=loop)
        self.items: list[dict[str, Any]] = []

    @property
    def pid(self) -> int:
        return self.worker.pid

    def _next(self, timeout: float) -> dict[str, Any]:
        value: dict[str, Any] = self.worker.result(timeout=timeout)
        if "item" in value:
            self.items.append(value)
        return value

    async def call(self, cmd: tuple[Any, ...], answer: str, timeout: float) -> dict[str, Any]:
        """Send ``cmd``; its answer (the first result holding ``answer``)."""
        self.commands.put(cmd)
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            value = await asyncio.to_thread(self._next, max(left, 0.1))
            if answer in value:
                return value

    async def wait_items(self, count: int, timeout: float) -> None:
        """Until ``count`` distinct items were reported (or ``timeout``)."""
        deadline = time.monotonic() + timeout
        while len({i["item"] for i in self.items}) < count and time.monotonic() < deadline:
            try:
                await asyncio.to_thread(self._next, max(0.1, min(1.0, deadline - time.monotonic())))
            except RuntimeError as e:
                if "no result" not in str(e):
                    raise

    def stop(self) -> None:
        self.worker.stop()


async def _last_event(r: Any, keys: KeySpace) -> str:
    last: Any = await r.xrevrange(keys.events(), count=1)
    return str(last[0][0].decode()) if last else "0-0"


async def _count_expired(r: Any, keys: KeySpace, since: str, prefix: str) -> int:
    """``agent_expired`` events since ``since`` of agents named ``<prefix>-...`` (the host's;
    not the lone baseline agents the bench terminates)."""
    count, start = 0, since
    mine = f"{prefix}-".encode()
    while True:
        entries: Any = await r.xrange(keys.events(), min=f"({start}", max="+", count=1000)
        if not entries:
            return count
        for eid, fields in entries:
            expired = fields.get(b"type") == b"agent_expired"
            count += expired and fields.get(b"name", b"").startswith(mine)
            start = eid.decode()


async def _connections(r: Any, pid: int, port: int) -> tuple[int, int]:
    """Connections of process ``pid`` to Redis: seen by the OS (psutil) and by Redis (the
    ``CLIENT LIST`` entries whose address is one of the process's sockets)."""
    conns = [
        c for c in psutil.Process(pid).net_connections("tcp") if c.raddr and c.raddr.port == port
    ]
    mine = {f"{c.laddr.ip}:{c.laddr.port}" for c in conns}
    clients: Any = await r.client_list()
    return len(conns), sum(1 for c in clients if c.get("addr") in mine)


def _port(url: str) -> int:
    return int(url.rsplit(":", 1)[1].split("/", 1)[0])


async def size_run(
    url: str, n: int, sizes: Sizes, loop: str, nats_url: str | None, window: float, wave: int = 0
) -> dict[str, Any]:
    """A host of ``n`` agents (module docstring); ``window`` seconds idle. ``wave``: its agents
    started that many at a time (``HostSpec.wave``). If the host cannot start, the result says
    why (``register_error``) and holds nothing else."""
    ns = f"host{n}" + (f"w{wave}" if wave else "")
    keys = KeySpace(ns)
    heartbeat, ttl = sizes.host_ttl
    r = client(url)
    out: dict[str, Any] = {"agents": n, "window_s": window, "heartbeat_s": heartbeat, "ttl_s": ttl}
    env = {"heartbeat_interval": str(heartbeat), "ttl": str(ttl)}
    try:
        with CoordinatorProcess(url, ns, **env) as coordinator:
            spec = HostSpec(f"bench-host-{n}", "h", n, heartbeat=heartbeat, ttl=ttl, wave=wave)
            host = HostDriver(url, ns, spec, loop)
            try:
                since = await _last_event(r, keys)
                t0 = time.perf_counter()
                try:
                    res = await host.call(("start",), "register_s", timeout=max(120.0, n / 20))
                except RuntimeError as e:
                    out["register_error"] = str(e).removeprefix("worker host_worker failed: ")
                    out["register_fail_s"] = time.perf_counter() - t0
                    out["registered"] = int(await r.scard(keys.agents()))
                    return out
                out["wave"] = wave
                out["register_s"] = res["register_s"]
                out["registered"] = int(await r.scard(keys.agents()))
                await asyncio.sleep(sizes.settle)  # the start settles before the idle window
                ps = psutil.Process(host.pid)
                window_since = await _last_event(r, keys)
                host_cpu0, coord_cpu0 = sum(ps.cpu_times()[:2]), coordinator.cpu_seconds()
                t0 = time.perf_counter()
                await asyncio.sleep(window)  # the idle window under test
                elapsed = time.perf_counter() - t0
                out["host_cpu_pct"] = 100 * (sum(ps.cpu_times()[:2]) - host_cpu0) / elapsed
                out["coordinator_cpu_pct"] = (
                    100 * (coordinator.cpu_seconds() - coord_cpu0) / elapsed
                )
                out["coordinator_rss_mb"] = coordinator.rss_mb()
                out["host_rss_mb"] = ps.memory_info().rss / 2**20
                out["host_connections"], out["redis_clients"] = await _connections(
                    r, host.pid, _port(url)
                )
                out["expired_in_window"] = await _count_expired(r, keys, window_since, "h")
                out["rr"] = await rr_paired(
                    url, ns, f"h-{n // 2}", sizes, loop, nats_url, host_pid=host.pid
                )
                out.update(await _bursts(host, sizes))
                out["expired_total"] = await _count_expired(r, keys, since, "h")
                out["registered_end"] = int(await r.scard(keys.agents()))
                res = await host.call(("stop",), "stopped_s", timeout=120)
                out["stop_s"] = res["stopped_s"]
            finally:
                host.stop()
    finally:
        await r.flushdb()
        await r.aclose()
    return out


async def _bursts(host: HostDriver, sizes: Sizes) -> dict[str, Any]:
    """``sizes.host_bursts`` times ``sizes.host_added`` agents added at once to the running
    host, a pause between two: every start's latency, and the p50 and host CPU of each burst."""
    starts: list[float] = []
    phases: list[dict[str, float]] = []
    burst_p50s: list[float] = []
    burst_cpus: list[float] = []
    burst_walls: list[float] = []
    lag_max = blocked = cpu = 0.0
    for b in range(sizes.host_bursts):
        if b:
            await asyncio.sleep(_BURST_GAP)
        res = await host.call(("add", sizes.host_added), "added_s", timeout=120)
        starts += res["added_s"]
        phases += res["phases"]
        burst_p50s.append(statistics.median(res["added_s"]))
        lag_max = max(lag_max, res["loop_lag_max_s"])
        blocked += res["loop_blocked_s"]
        cpu += res["cpu_s"]
        burst_cpus.append(res["cpu_s"] / sizes.host_added)
        burst_walls.append(res["wall_s"])
    return {
        "added": Latency.from_us([t * 1e6 for t in starts]),
        "added_phases": phases,
        "added_s_list": starts,
        "added_burst_p50s_s": burst_p50s,
        "added_burst_cpu_s": burst_cpus,
        #: each burst from its first start to its last: its host CPU, plus the time the host
        #: waited for answers or for a core
        "added_burst_wall_s": burst_walls,
        "loop_lag_max_s": lag_max,
        "loop_blocked_s": blocked,
        "add_cpu_s": cpu,
    }


async def kill_run(url: str, sizes: Sizes, loop: str) -> dict[str, Any]:
    """A host of ``sizes.host_kill`` agents holding role-queue items, SIGKILLed."""
    from agent_sdk.bus import Bus

    ns = "hostkill"
    keys = KeySpace(ns)
    heartbeat, ttl = sizes.host_ttl
    victims = sizes.host_kill
    items = min(100, victims)
    survivors = 10
    r = client(url)
    env = {"heartbeat_interval": str(heartbeat), "ttl": str(ttl)}
    out: dict[str, Any] = {
        "agents": victims,
        "items": items,
        "ttl_s": ttl,
        "heartbeat_s": heartbeat,
    }
    try:
        with CoordinatorProcess(url, ns, **env):
            spec = HostSpec("victim-host", "v", victims, role="rq", hold=True,
                            heartbeat=heartbeat, ttl=ttl)  # fmt: skip
            victim = HostDriver(url, ns, spec, loop)
            survivor: HostDriver | None = None
            try:
                await victim.call(("start",), "register_s", timeout=max(120.0, victims / 20))
                async with Bus(settings(url, ns, heartbeat, ttl)) as bus:
                    for i in range(items):
                        await bus.send(role="rq", type="work", payload={"i": i})
                await victim.wait_items(items, timeout=30)
                out["held_by_victim"] = len({i["item"] for i in victim.items})
                spec = HostSpec("survivor-host", "s", survivors, role="rq",
                                max_concurrency=items // survivors + 1, heartbeat=heartbeat,
                                ttl=ttl)  # fmt: skip
                survivor = HostDriver(url, ns, spec, loop)
                await survivor.call(("start",), "register_s", timeout=60)
                since = await _last_event(r, keys)
                await asyncio.sleep(random.uniform(0, heartbeat))  # a random heartbeat phase
                t_kill = now_ns()
                os.kill(victim.pid, signal.SIGKILL)
                names = {f"v-{i}" for i in range(victims)}
                seen = await wait_expired(r, keys, since, names, timeout=ttl * 3 + 10)
                expiry = [(t - t_kill) / 1000 for t in seen.values()]
                out["expired"] = len(seen)
                out["expiry"] = Latency.from_us(expiry)
                await survivor.wait_items(items, timeout=ttl * 3 + 10)
                first: dict[int, int] = {}
                for item in survivor.items:
                    first.setdefault(item["item"], item["t"])
                out["redelivered"] = len(first)
                out["redelivery"] = Latency.from_us([(t - t_kill) / 1000 for t in first.values()])
                out["lost"] = items - len(first)
                out["survivor_registered"] = int(await r.scard(keys.agents()))
                await survivor.call(("stop",), "stopped_s", timeout=60)
            finally:
                victim.stop()
                if survivor is not None:
                    survivor.stop()
    finally:
        await r.flushdb()
        await r.aclose()
    return out


async def spread_run(url: str, sizes: Sizes, loop: str) -> dict[str, Any]:
    """``sizes.host_spread`` = (hosted, solos): ``hosted`` agents over 3 hosts and ``solos``
    single-agent processes (cards of ``bench.protocol.card_for``); discovery among them."""
    ns = "hostspread"
    keys = KeySpace(ns)
    heartbeat, ttl = sizes.host_ttl
    hosted, solos = sizes.host_spread
    r = client(url)
    env = {"heartbeat_interval": str(heartbeat), "ttl": str(ttl)}
    out: dict[str, Any] = {"hosted": hosted, "solos": solos}
    hosts: list[HostDriver] = []
    lone: list[Worker] = []
    try:
        with CoordinatorProcess(url, ns, **env):
            share, first = -(-hosted // 3), 0
            for k in range(3):
                count = min(share, hosted - first)
                spec = HostSpec(f"spread-host-{k}", "d", count, first=first,
                                heartbeat=heartbeat, ttl=ttl, wave=_SPREAD_WAVE)  # fmt: skip
                hosts.append(HostDriver(url, ns, spec, loop))
                first += count
            starts = [
                h.call(("start",), "register_s", timeout=max(120.0, hosted / 20)) for h in hosts
            ]
            t0 = time.perf_counter()
            await asyncio.gather(*starts)
            out["hosts_register_s"] = time.perf_counter() - t0
            t0 = time.perf_counter()
            for k in range(solos):
                lone.append(spawn(lone_agent_worker, url, ns, hosted + k, heartbeat, ttl,
                                  loop=loop, wait=False))  # fmt: skip
            for w in lone:
                await asyncio.to_thread(w.wait_ready, 120.0)
            out["solos_start_s"] = time.perf_counter() - t0
            out["registered"] = int(await r.scard(keys.agents()))
            side = await discovery.discover_side_by_side(url, ns, sizes)
            out["discover"], out["matches"] = side["agentbus"]
            out["raw"], out["raw_matches"] = side["raw"]
            out["raw_json"], _ = side["raw_json"]
            out["registered_end"] = int(await r.scard(keys.agents()))
    finally:
        for w in lone:
            w.stop()
        for h in hosts:
            h.stop()
        await r.flushdb()
        await r.aclose()
    return out

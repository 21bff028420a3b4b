"""A fleet of simulated hosts heartbeating through leases, on one topology (figures as a dict).

``fleet_run`` runs ``agents`` agents over ``hosts`` simulated hosts (``bench.lease_hosts``,
spread over ``procs`` worker processes) against ``coordinators`` real coordinator processes:

* registration: every agent announced (at most ``ramp`` in flight per host), timed until the
  registry holds them all, or ``register_timeout`` passed (the window then starts anyway: a
  fleet still registering is measured as it is, with how many had registered);
* after ``settle`` seconds, a quiet window of ``quiet`` seconds: CPU of every ``redis-server``
  while only the fleet's leases run (what heartbeating costs);
* then a window of ``window`` seconds: CPU of every ``redis-server``
  (psutil on its pid, user + system) and of the coordinators, the control stream's lag, the
  hosts' lateness, and ``Bus.discover`` sampled all along (a role + 2 capabilities query that
  matches 1 % of the fleet, and one with a third capability matching 0.1 %);
* false expiries: ``agent_expired`` events in the window and from the start of the run;
* then discovery again with the coordinators stopped (no control scripts or sweeps in Redis's
  single thread): what a query costs among the same records, without waiting behind them.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import Sequence
from typing import Any

import psutil

from agent_sdk.heartbeats import LEASE_MAX_BEATS
from bench.coord import CoordinatorProcess
from bench.lease_hosts import LeaseHostSpec, lease_hosts_worker, query_100k
from bench.procs import Worker, context, spawn
from bench.stats import percentile
from schemas.keys import KeySpace

__all__ = ["Node", "fleet_run"]

#: (label, pid) of a redis-server process to watch
Node = tuple[str, int]


def _cpu(pid: int) -> float:
    t = psutil.Process(pid).cpu_times()
    return float(t.user + t.system)


def _host_specs(agents: int, hosts: int) -> list[LeaseHostSpec]:
    share = [agents // hosts + (1 if k < agents % hosts else 0) for k in range(hosts)]
    specs, first = [], 0
    for k, count in enumerate(share):
        specs.append(LeaseHostSpec(f"sim-host-{k:02d}", first, count))
        first += count
    return specs


async def _count_events(bus: Any, keys: KeySpace, since: str, kind: bytes) -> int:
    count, start = 0, since
    while True:
        entries: Any = await bus.client.xrange(keys.events(), min=f"({start}", max="+", count=5000)
        if not entries:
            return count
        for eid, fields in entries:
            count += fields.get(b"type") == kind
            start = eid.decode() if isinstance(eid, bytes) else str(eid)


async def _last_event(bus: Any, keys: KeySpace) -> str:
    last: Any = await bus.client.xrevrange(keys.events(), count=1)
    if not last:
        return "0-0"
    eid = last[0][0]
    return eid.decode() if isinstance(eid, bytes) else str(eid)


async def _control_lag(bus: Any, keys: KeySpace) -> tuple[int, int]:
    groups: Any = await bus.client.xinfo_groups(keys.control())
    lag = max((int(g.get("lag") or 0) for g in groups), default=0)
    pending = max((int(g.get("pending") or 0) for g in groups), default=0)
    return lag, pending


async def _control_counts(bus: Any, keys: KeySpace) -> tuple[int, int]:
    """Entries ever added to the control stream, and read by the coordinators' group."""
    info: Any = await bus.client.xinfo_stream(keys.control())
    groups: Any = await bus.client.xinfo_groups(keys.control())
    read = max((int(g.get("entries-read") or 0) for g in groups), default=0)
    return int(info.get("entries-added") or 0), read


async def fleet_run(
    url: str,
    nodes: Sequence[Node],
    *,
    agents: int,
    hosts: int,
    procs: int,
    coordinators: int,
    window: float,
    settle: float = 5.0,
    heartbeat: float = 1.0,
    ttl: float = 3.0,
    ramp: int = 1000,
    max_beats: int = LEASE_MAX_BEATS,
    register_timeout: float = 60.0,
    loop: str = "asyncio",
    renew: bool = True,
    quiet: float = 30.0,
) -> dict[str, Any]:
    """The fleet described in the module docstring; ``nodes``: the redis-servers to watch."""
    from agent_sdk import Bus, Settings

    ns = f"f{uuid.uuid4().hex[:8]}"
    keys = KeySpace(ns)
    settings = Settings(redis_url=url, namespace=ns, heartbeat_interval=heartbeat, ttl=ttl,
                        request_timeout=30)  # fmt: skip
    env = {"heartbeat_interval": str(heartbeat), "ttl": str(ttl)}
    out: dict[str, Any] = {
        "agents": agents, "hosts": hosts, "processes": procs, "coordinators": coordinators,
        "window_s": window, "heartbeat_s": heartbeat, "ttl_s": ttl, "lease_max_beats": max_beats,
        "lease_renew": renew,
    }  # fmt: skip
    ctx = context()
    go, stop = ctx.Event(), ctx.Event()
    specs = _host_specs(agents, hosts)
    workers: list[Worker] = []
    coords = [
        CoordinatorProcess(url, ns, coordinator_id=f"bench-{ns}-{k}", **env)
        for k in range(coordinators)
    ]
    try:
        for c in coords:
            c.start()
        async with Bus(settings) as bus:
            for k in range(procs):
                mine = specs[k::procs]
                if mine:
                    args = (url, ns, mine, go, stop, heartbeat, ttl, ramp, max_beats, renew)
                    workers.append(spawn(lease_hosts_worker, *args, loop=loop))
            coord_cpu0 = sum(c.cpu_seconds() for c in coords)
            t0 = time.perf_counter()
            go.set()
            registered = 0
            give_up = t0 + register_timeout  # then measured as far as it got
            while registered < agents and time.perf_counter() < give_up:
                await asyncio.sleep(0.25)  # polling the registry's size while agents announce
                registered = int(await bus.client.scard(keys.agents()))
            out["registered"] = registered
            out["register_s"] = time.perf_counter() - t0
            out["register_coordinator_cpu_s"] = sum(c.cpu_seconds() for c in coords) - coord_cpu0
            await asyncio.sleep(settle)  # the registration burst drains before the window
            # the heartbeats' own cost: a quiet window first, with no discovery
            q_cpu0 = {label: _cpu(pid) for label, pid in nodes}
            q_added0, q_read0 = await _control_counts(bus, keys)
            q0 = time.perf_counter()
            await asyncio.sleep(quiet)  # nothing but the fleet's leases meanwhile: measured
            q_elapsed = time.perf_counter() - q0
            q_added1, q_read1 = await _control_counts(bus, keys)
            out["quiet_s"] = q_elapsed
            out["quiet_node_cpu_pct"] = {
                label: 100 * (_cpu(pid) - q_cpu0[label]) / q_elapsed for label, pid in nodes
            }
            out["quiet_control_entries_read_per_s"] = (q_read1 - q_read0) / q_elapsed
            out["quiet_control_entries_added_per_s"] = (q_added1 - q_added0) / q_elapsed
            since = await _last_event(bus, keys)
            cpu0 = {label: _cpu(pid) for label, pid in nodes}
            ccpu0 = [c.cpu_seconds() for c in coords]
            psutil.cpu_percent()  # the machine's busy share over the window, from here
            load0 = os.getloadavg()[0]
            lat: dict[str, list[float]] = {"1%": [], "0.1%": []}
            matches: dict[str, int] = {}
            lag_max = pending_max = 0
            added0, read0 = await _control_counts(bus, keys)
            w0 = time.perf_counter()
            end, j = w0 + window, 0
            next_lag = w0
            while time.perf_counter() < end:
                for label, zone in (("1%", False), ("0.1%", True)):
                    role, caps = query_100k(j, zone)
                    t = time.perf_counter()
                    found = await bus.discover(role=role, capabilities=caps)
                    lat[label].append((time.perf_counter() - t) * 1e3)
                    matches[label] = len(found)
                j += 1
                if time.perf_counter() >= next_lag:
                    lag, pending = await _control_lag(bus, keys)
                    lag_max, pending_max = max(lag_max, lag), max(pending_max, pending)
                    next_lag += 1.0
                await asyncio.sleep(0.05)  # discovery sampled ~10 times a second
            elapsed = time.perf_counter() - w0
            added1, read1 = await _control_counts(bus, keys)
            out["control_entries_added_per_s"] = (added1 - added0) / elapsed
            out["control_entries_read_per_s"] = (read1 - read0) / elapsed
            out["control_lag_end"] = added1 - read1
            out["machine_busy_pct"] = psutil.cpu_percent()
            out["load_avg_1m"] = [load0, os.getloadavg()[0]]
            out["node_cpu_pct"] = {
                label: 100 * (_cpu(pid) - cpu0[label]) / elapsed for label, pid in nodes
            }
            out["coordinator_cpu_pct"] = [
                100 * (c.cpu_seconds() - c0) / elapsed for c, c0 in zip(coords, ccpu0, strict=True)
            ]
            out["coordinator_rss_mb"] = [c.rss_mb() for c in coords]
            out["control_lag_max"], out["control_pending_max"] = lag_max, pending_max
            for label, values in lat.items():
                values.sort()
                out[f"discover_{label}"] = {
                    "matches": matches.get(label, 0), "samples": len(values),
                    "p50_ms": percentile(values, 50), "p99_ms": percentile(values, 99),
                    "max_ms": values[-1] if values else 0.0,
                }  # fmt: skip
            out["expired_in_window"] = await _count_events(bus, keys, since, b"agent_expired")
            out["expired_total"] = await _count_events(bus, keys, "0-0", b"agent_expired")
            out["registered_end"] = int(await bus.client.scard(keys.agents()))
            # discovery's own cost among the same records: the coordinators stopped (no
            # control scripts, no sweeps), the hosts still appending their leases
            for c in coords:
                c.stop()
            for label, zone in (("1%", False), ("0.1%", True)):
                idle = []
                for q in range(100):
                    role, caps = query_100k(q, zone)
                    t = time.perf_counter()
                    await bus.discover(role=role, capabilities=caps)
                    idle.append((time.perf_counter() - t) * 1e3)
                idle.sort()
                out[f"discover_{label}"]["idle_p50_ms"] = percentile(idle, 50)
                out[f"discover_{label}"]["idle_p99_ms"] = percentile(idle, 99)
            stop.set()
            per_host = [h for w in workers for h in w.result(timeout=60)]
            out["leases"] = sum(h["leases"] for h in per_host)
            out["reannounces"] = sum(h["reannounces"] for h in per_host)
            out["refused"] = sum(h["refused"] for h in per_host)
            joins = sorted(t for h in per_host for t in h["joins"])
            out["join_p50_s"] = percentile(joins, 50) if joins else 0.0
            out["join_max_s"] = joins[-1] if joins else 0.0
            out["host_late_max_s"] = max(h["late_max_s"] for h in per_host)
            out["lease_xadd_max_s"] = max(h["xadd_max_s"] for h in per_host)
    finally:
        stop.set()
        for w in workers:
            w.stop()
        for c in coords:
            c.stop()
    out["coordinator_stats"] = [c.final_stats() for c in coords]
    return out

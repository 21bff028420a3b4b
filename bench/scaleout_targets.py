"""Issue 16's targets, measured: ``python -m bench.scaleout_targets [--json PATH]``.

* ``fleet``: ``--agents`` (default 100,000) agents on ``--hosts`` simulated hosts speaking the
  host lease protocol (``bench.scaleout_fleet``), heartbeat 1 s / TTL 3 s, first on one
  ``redis-server`` with a full beat per agent per interval (protocol 1.1: the baseline), then
  with lease renewals (1.2, what the SDK sends) on one server and on a local 3-master +
  3-replica cluster, in the same run: false expiries over the ``--window``, CPU of every Redis
  node and of the coordinators, discovery latency among the fleet.
* ``failover``: ``--rate`` (default 1,000) requests/s held against a cluster and a Sentinel
  deployment while a master is SIGKILLed (``bench.scaleout_failover``): acknowledged vs
  received, time until service is back.

``--only fleet`` or ``--only failover`` runs one part. Every figure goes to the JSON file
(``bench/results/``) with the machine's load during the run; a Markdown summary is printed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import subprocess
import time
from pathlib import Path
from typing import Any

from agent_sdk.embedded import RedisServer
from agent_sdk.heartbeats import LEASE_MAX_BEATS
from bench.scaleout_failover import failover_run
from bench.scaleout_fleet import Node, fleet_run
from schemas.keys import KeySpace
from tests.topologies import LocalCluster, LocalSentinel

__all__ = ["main"]


def _pid(server: RedisServer) -> int:
    assert server.process is not None
    return server.process.pid


def _cluster_nodes(cluster: LocalCluster, registry_key: str) -> list[Node]:
    """Every node, labelled master/replica, the registry's master marked."""
    registry = cluster.master_of(registry_key).port
    masters = {s.port for s in cluster.masters()}
    out: list[Node] = []
    for s in cluster.servers:
        role = "master" if s.port in masters else "replica"
        mark = " (registry)" if s.port == registry else ""
        out.append((f"{role} :{s.port}{mark}", _pid(s)))
    return out


async def _fleet(args: argparse.Namespace) -> dict[str, Any]:
    common = {
        "agents": args.agents, "hosts": args.hosts, "procs": args.procs,
        "coordinators": args.coordinators, "window": args.window, "loop": args.loop,
        "max_beats": args.lease_beats, "register_timeout": args.register_timeout,
    }  # fmt: skip
    out: dict[str, Any] = {}
    for label, renew in (("single-beats", False), ("single", True)):
        if label not in args.topologies:
            continue
        single = RedisServer().start()
        try:
            node = [("server", _pid(single))]
            out[label] = await fleet_run(single.url, node, renew=renew, **common)
        finally:
            single.stop()
            single.cleanup()
        _print_fleet("one server" + ("" if renew else ", full beats (protocol 1.1)"), out[label])
    if "cluster" not in args.topologies:
        return out
    cluster = LocalCluster().start()
    try:
        nodes = _cluster_nodes(cluster, KeySpace("x").control())  # {registry}: any namespace
        out["cluster"] = await fleet_run(cluster.url, nodes, **common)
    finally:
        cluster.stop()
    _print_fleet("cluster 3+3", out["cluster"])
    return out


def _print_fleet(name: str, r: dict[str, Any]) -> None:
    print(f"\n## fleet on {name}: {r['registered']:,} of {r['agents']:,} registered in "
          f"{r['register_s']:.1f} s; window {r['window_s']:g} s")  # fmt: skip
    print(
        f"false expiries: {r['expired_in_window']} in the window, {r['expired_total']} in the "
        f"run; reannounces {r['reannounces']}; registered at the end {r['registered_end']:,}"
    )
    quiet = r["quiet_node_cpu_pct"]
    print(f"  heartbeats alone ({r['quiet_s']:.0f} s, no discovery): leases applied "
          f"{r['quiet_control_entries_read_per_s']:.0f}/s of "
          f"{r['quiet_control_entries_added_per_s']:.0f}/s added")  # fmt: skip
    for label, pct in r["node_cpu_pct"].items():
        print(f"  redis {label}: {quiet[label]:.1f} % of a core heartbeating alone, {pct:.1f} % "
              "with discovery sampled ~10 times a second")  # fmt: skip
    cc = ", ".join(f"{p:.1f} %" for p in r["coordinator_cpu_pct"])
    print(f"  coordinators: {cc}; control entries added {r['control_entries_added_per_s']:.0f}/s, "
          f"applied {r['control_entries_read_per_s']:.0f}/s (lease entries of "
          f"{r['lease_max_beats']} beats); lag at the end {r['control_lag_end']}")  # fmt: skip
    for label in ("1%", "0.1%"):
        d = r[f"discover_{label}"]
        print(f"  discover ({d['matches']} matches): p50 {d['p50_ms']:.2f} ms, p99 "
              f"{d['p99_ms']:.2f} ms over {d['samples']} queries; coordinators stopped: p50 "
              f"{d['idle_p50_ms']:.2f} ms, p99 {d['idle_p99_ms']:.2f} ms")  # fmt: skip
    print(f"  machine busy {r['machine_busy_pct']:.0f} %, load {r['load_avg_1m']}")


async def _failover(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for kind in ("cluster", "sentinel"):
        if kind not in args.topologies:
            continue
        topo = LocalCluster() if kind == "cluster" else LocalSentinel()
        topo.start()
        try:
            out[kind] = r = await failover_run(kind, topo, rate=args.rate, loop=args.loop)
        finally:
            topo.stop()
        print(f"\n## failover on {kind} at {r['rate']:g} operations/s: {r['summary']}")
        print("  from the kill, per 0.5 s: started/failed/slow " + " ".join(
            f"{b['t_s']:+g}:{b['started']}/{b['failed']}/{b['slow']}" for b in r["timeline"]
        ))  # fmt: skip
    return out


def _commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        return "?"


async def _run(args: argparse.Namespace) -> dict[str, Any]:
    result: dict[str, Any] = {
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "commit": _commit(), "cpus": os.cpu_count(), "python": platform.python_version(),
        "load_avg_before": os.getloadavg(), "args": vars(args),
    }  # fmt: skip
    t0 = time.perf_counter()
    if args.only in (None, "fleet"):
        result["fleet"] = await _fleet(args)
    if args.only in (None, "failover"):
        result["failover"] = await _failover(args)
    result["load_avg_after"] = os.getloadavg()
    result["run_s"] = time.perf_counter() - t0
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", choices=("fleet", "failover"))
    p.add_argument("--agents", type=int, default=100_000)
    p.add_argument("--hosts", type=int, default=10, help="simulated hosts (lease writers)")
    p.add_argument("--procs", type=int, default=5, help="worker processes for the hosts")
    p.add_argument("--coordinators", type=int, default=1)
    p.add_argument("--lease-beats", type=int, default=LEASE_MAX_BEATS,
                   help="beats per lease entry (the SDK's LEASE_MAX_BEATS by default)")  # fmt: skip
    p.add_argument("--window", type=float, default=60.0, help="seconds measured")
    p.add_argument("--register-timeout", type=float, default=60.0,
                   help="seconds the fleet gets to register before the window starts")  # fmt: skip
    p.add_argument("--rate", type=float, default=1000.0, help="failover: requests/s")
    p.add_argument(
        "--topologies",
        type=lambda v: v.split(","),
        default=["single-beats", "single", "cluster", "sentinel"],
        help="of single-beats,single,cluster,sentinel (fleet: single-beats, the baseline of "
        "full beats per agent, then single and cluster with lease renewals; failover: cluster, "
        "sentinel)",
    )
    p.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio")
    p.add_argument("--json", type=Path, help="write every figure there (bench/results/...)")
    args = p.parse_args()
    result = asyncio.run(_run(args))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2, default=str) + "\n")
        print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()

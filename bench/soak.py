"""Soak: the scenario-7 fleet under rounds of 20,000 mixed messages, memory sampled each round.

    python -m bench.soak                      # 100 agents / 4 processes, 6 rounds x 20,000
    python -m bench.soak --rounds 20 --messages 20000 --json bench/results/soak.jsonl

Each round sends ``--messages`` mixed messages (send, role queue, request, broadcast live and
durable, topics: ``tests/faults/load.py``), waits until every durable one was handled, then
samples the RSS of every agent process, of the coordinator and of this sender, Redis
``used_memory`` and the length of every stream. A round fails if a durable message was lost,
handled twice, or a request was neither answered nor failed with a reason. At the end it prints
the growth of each measure between the first warm round (round 2) and the last; streams are
capped (``MAXLEN ~``), so after warm-up nothing should keep growing.

It starts its own redis-server (AOF, fsync always) on a free port; never the one on 6379.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from agent_sdk import Bus
from tests.faults.harness import Cluster, LedgerTail
from tests.faults.load import mixed_load
from tests.support import wait_for


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def stream_lengths(cluster: Cluster, roles: list[str]) -> dict[str, int]:
    k, r = cluster.keys, cluster.sync
    out = {
        "control": r.xlen(k.control()),
        "events": r.xlen(k.events()),
        "deadletter": r.xlen(k.deadletter()),
    }
    out["role_queues"] = sum(r.xlen(k.role_queue(role)) for role in roles)
    return out


async def soak(args: argparse.Namespace) -> int:
    os.environ["AGENTBUS_CONTROL_MAXLEN"] = str(args.control_maxlen)  # the coordinator's cap
    os.environ["AGENTBUS_EVENTS_MAXLEN"] = str(args.control_maxlen)
    cluster = Cluster(
        heartbeat_interval=0.5, ttl=3.0, request_timeout=30.0,
        inbox_maxlen=args.inbox_maxlen, queue_maxlen=args.queue_maxlen,
    )  # fmt: skip
    failures = 0
    rows: list[dict[str, Any]] = []
    try:
        coordinator = cluster.coordinator("soak")
        per = args.agents // args.processes
        roles = {f"r{p}": [f"p{p}-{i}" for i in range(per)] for p in range(args.processes)}
        fleets = [
            cluster.fleet(members, role=role, concurrency=4, topic="news.*" if p == 0 else "")
            for p, (role, members) in enumerate(roles.items())
        ]
        for f in fleets:
            await cluster.wait_ready(f, timeout=300)
        t_start = time.monotonic()
        tail = LedgerTail([f.log for f in fleets])
        duplicated = 0
        async with Bus(cluster.settings) as bus:
            for rnd in range(1, args.rounds + 1):
                t0 = time.monotonic()
                result = await mixed_load(bus, args.messages, roles, seed=rnd)
                done: collections.Counter[str] = collections.Counter()
                late = 0  # done lines of earlier rounds' messages: duplicates
                copies = 0  # durable broadcast copies handled

                def handled(r: Any = result, done: Any = done) -> bool:
                    nonlocal late, copies
                    for ln in tail.new_lines():
                        if ln[0] == "done" and ln[5] == "job":
                            if ln[2] in r.durable_ids:
                                done[ln[2]] += 1
                            else:
                                late += 1
                        elif ln[0] == "done" and ln[5] == "bcast":
                            copies += 1
                    return len(done) == len(r.durable_ids) and copies >= r.durable_broadcast_copies

                await wait_for(handled, timeout=600, interval=0.5, message="durable handled")
                duplicated += late + sum(n - 1 for n in done.values())
                row = {
                    "round": rnd,
                    "elapsed_s": round(time.monotonic() - t_start, 1),
                    "round_s": round(time.monotonic() - t0, 1),
                    "messages": args.messages,
                    "durable_lost": len(result.durable_ids - set(done)),
                    "duplicated_total": duplicated,
                    "durable_broadcast_copies": f"{copies}/{result.durable_broadcast_copies}",
                    "requests": result.requests,
                    "answered": result.answered,
                    "failed": dict(result.failed),
                    "agents_rss_mb": round(sum(rss_mb(f.pid) for f in fleets), 1),
                    "coordinator_rss_mb": round(rss_mb(coordinator.pid), 1),
                    "sender_rss_mb": round(rss_mb(os.getpid()), 1),  # Bus + this harness
                    "redis_used_mb": round(
                        int(cluster.sync.info("memory")["used_memory"]) / 2**20, 2
                    ),
                    "streams": stream_lengths(cluster, list(roles)),
                    "expired": len(cluster.expired()),
                }
                bad = (
                    row["durable_lost"]
                    or row["duplicated_total"]
                    or copies != result.durable_broadcast_copies
                    or result.answered + sum(result.failed.values()) != result.requests
                )
                failures += int(bool(bad))
                rows.append(row)
                print(json.dumps(row), flush=True)
                if args.json:
                    with Path(args.json).open("a") as out:  # noqa: ASYNC230 - one short line
                        out.write(json.dumps(row) + "\n")
        if len(rows) >= 3:
            warm, last = rows[1], rows[-1]
            growth = {
                k: f"{warm[k]} -> {last[k]} MB ({(last[k] - warm[k]) / max(warm[k], 1e-9):+.0%})"
                for k in ("agents_rss_mb", "coordinator_rss_mb", "sender_rss_mb", "redis_used_mb")
            }
            print(json.dumps({"growth_round2_to_last": growth}), flush=True)
    finally:
        cluster.close()
    print("FAIL" if failures else "OK: nothing lost, nothing handled twice", flush=True)
    return 1 if failures else 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.split("\n")[0])
    p.add_argument("--agents", type=int, default=100)
    p.add_argument("--processes", type=int, default=4)
    p.add_argument("--messages", type=int, default=20_000, help="per round")
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--inbox-maxlen", type=int, default=1_000)
    p.add_argument("--queue-maxlen", type=int, default=10_000)
    p.add_argument("--control-maxlen", type=int, default=20_000)
    p.add_argument("--json", help="append one JSON line per round to this file")
    return asyncio.run(soak(p.parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())

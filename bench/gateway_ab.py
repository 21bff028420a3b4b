"""Two gateways on the same Redis, in turn: the gateway group's three targets for the code of
two checkouts (before and after a change), alternating which goes first, so both see the same
machine load. Each measure keeps its same-run Python baseline.

    python -m bench.gateway_ab --before ../main --after . --rounds 3

The gateway runs from each checkout's directory (``python -m coordinator.cli gateway`` with
that working directory, so its packages are imported first); the clients, the coordinator and
the Python baselines are this checkout's. One JSON line per gateway and round.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from bench import fleet, machine
from bench.common import Sizes
from bench.coord import CoordinatorProcess
from bench.gateway import (
    GatewayProcess,
    http_vs_python_discover,
    http_vs_python_request,
    sse_fanout,
)
from bench.procs import pick_loop, run
from bench.servers import RedisServer
from schemas.keys import KeySpace

__all__ = ["main"]


def _ms(us: float) -> float:
    return round(us / 1000, 3)


async def _one(
    url: str, ns: str, gw: GatewayProcess, label: str, turn: int, args: argparse.Namespace
) -> dict[str, Any]:
    sizes = Sizes(samples=args.samples)
    out: dict[str, Any] = {"gateway": label, "round": turn, "load": machine.loadavg()}
    if "sse" in args.what:
        fan = await sse_fanout(url, ns, gw, args.clients, args.events, 0.1, args.loop)
        lat = fan["latency"]
        out["sse_ms_p50_p99"] = [_ms(lat.p50), _ms(lat.p99)]
        out["sse_cpu_pct"] = round(fan["cpu_pct"], 1)
        out["sse_clients_cpu_pct"] = round(fan["clients_cpu_pct"], 1)
        out["sse_rss_mb"] = round(fan["rss_mb"])
        out["sse_delivered"] = f"{fan['delivered']}/{fan['expected']}"
    if "discover" in args.what:
        http, py, found = await http_vs_python_discover(url, ns, gw, sizes)
        out["agents_ms_http_py"] = [_ms(http.p50), _ms(py.p50), found]
        out["agents_ratio"] = round(http.p50 / py.p50, 2)
    if "request" in args.what:
        name = f"rx-{label}-{turn}"  # a fresh echo agent each time: no name held by the last
        http, py = await http_vs_python_request(url, ns, gw, sizes, args.loop, name=name)
        out["request_ms_http_py"] = [_ms(http.p50), _ms(py.p50)]
        out["request_ratio"] = round(http.p50 / py.p50, 2)
    return out


async def _compare(url: str, args: argparse.Namespace) -> None:
    ns = "gwab"
    roots = {"before": args.before.resolve(), "after": args.after.resolve()}
    with CoordinatorProcess(url, ns):
        if "discover" in args.what:
            await fleet.bulk_register(url, KeySpace(ns), args.agents)
        for turn in range(args.rounds):
            order = list(roots) if turn % 2 == 0 else list(roots)[::-1]
            for label in order:
                with GatewayProcess(url, ns, roots[label]) as gw:
                    print(json.dumps(await _one(url, ns, gw, label, turn, args)), flush=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.gateway_ab", description=__doc__)
    p.add_argument("--before", type=Path, required=True, help="checkout of the old gateway")
    p.add_argument("--after", type=Path, default=Path("."), help="checkout of the new one")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--what", default="sse,discover,request", help="comma list")
    p.add_argument("--samples", type=int, default=1000)
    p.add_argument("--agents", type=int, default=10_000)
    p.add_argument("--clients", type=int, default=1000)
    p.add_argument("--events", type=int, default=50)
    p.add_argument("--loop", choices=("auto", "uvloop", "asyncio"), default="auto")
    args = p.parse_args(argv)
    args.what = set(args.what.split(","))
    args.loop = pick_loop(args.loop)
    with RedisServer() as server:
        run(_compare(server.url, args), args.loop)
    return 0


if __name__ == "__main__":
    sys.exit(main())

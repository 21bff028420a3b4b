"""Instructions per start of a hosted agent, counted by callgrind: a figure the machine's speed
does not move.

``python -m bench.start_cost [--rounds R] [--burst B]``: one ``redis-server`` and one
coordinator (child processes, at full speed), and a host process run under
``valgrind --tool=callgrind`` twice: once adding no agent, once adding ``R`` bursts (default 10)
of ``B`` agents (default 100) at once, each made with ``host.agent`` and started in a task of
its own, as the ``host`` group's "added at once" does. The difference of the two counts,
divided by the starts, is the host's instructions per start: all its event loop does for them
(the starts, the replies and answers it reads, the stats claims, the collector as ``tune_gc``
sets it). The same host then runs natively: its CPU time per start, and the speed the machine
ran it at (instructions per microsecond of CPU).

What it is for: a burst's p50 is about half the host CPU of a burst (``bench.announce_cost``),
and on these machines the CPU time of the same work swings by up to 2× from one burst to the
next (docs/BENCHMARKS.md). Instructions do not: two runs of the same code agree to about
0.5 %, so a change to the start path is measured here, not by timing it.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

from agent_sdk.embedded import RedisServer
from bench.coord import CoordinatorProcess
from bench.protocol import card_for, echo_agent

__all__ = ["main"]

_NS = "start-cost"
#: A pause between bursts (not a wait for anything: the bursts are independent).
_GAP = 0.2


async def _host(url: str, rounds: int, burst: int, cards: int) -> dict[str, Any]:
    """A host adding ``rounds`` bursts of ``burst`` agents; the CPU seconds of the bursts.
    ``cards`` cards are made first, whatever ``rounds`` is: both counts hold the same."""
    from agent_sdk import Host
    from agent_sdk.settings import Settings

    # patient settings: under callgrind this process runs ~50x slower than the coordinator
    settings = Settings(redis_url=url, namespace=_NS, heartbeat_interval=5.0, ttl=60.0,
                        announce_timeout=60.0)  # fmt: skip
    host = Host(settings, name="cost")
    made = {i: card_for(i, "u") for i in range(cards)}  # what a server knows already

    async def start(i: int) -> None:
        await echo_agent(host, i, "u", made[i]).start()

    cpu = 0.0
    async with host:
        for r in range(rounds):
            await asyncio.sleep(_GAP)
            t = time.process_time()
            await asyncio.gather(
                *(asyncio.create_task(start(i)) for i in range(r * burst, (r + 1) * burst))
            )
            cpu += time.process_time() - t
        started = len(host.agents)
        # no stop: its leaves are not part of a start (the same for both counts)
        sys.stdout.write(orjson.dumps({"started": started, "cpu_s": cpu}).decode() + "\n")
        sys.stdout.flush()
        os._exit(0)
    return {}  # not reached


def _worker(url: str, rounds: int, burst: int, cards: int) -> None:
    from agent_sdk.runner import tune_gc

    tune_gc()  # the collector as a host's executable edge sets it (not paced: deterministic)
    asyncio.run(_host(url, rounds, burst, cards))


def _run(url: str, rounds: int, burst: int, cards: int, callgrind: bool) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "bench.start_cost", "--worker", url, "--rounds", str(rounds),
           "--burst", str(burst), "--cards", str(cards)]  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        if callgrind:
            out = Path(tmp) / "callgrind.out"
            cmd = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", *cmd]
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:3])}... failed: {done.stderr[-2000:]}")
    result: dict[str, Any] = orjson.loads(done.stdout.strip().splitlines()[-1])
    if result["started"] != rounds * burst:
        raise RuntimeError(f"{result['started']} of {rounds * burst} agents started")
    if callgrind:
        collected = re.search(r"Collected : (\d+)", done.stderr)
        if collected is None:
            raise RuntimeError(f"callgrind printed no count: {done.stderr[-2000:]}")
        result["instructions"] = int(collected.group(1))
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--burst", type=int, default=100)
    p.add_argument("--worker", metavar="URL", help=argparse.SUPPRESS)
    p.add_argument("--cards", type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        _worker(args.worker, args.rounds, args.burst, args.cards)
        return
    if shutil.which("valgrind") is None:
        sys.exit("bench.start_cost counts instructions with valgrind, which is not installed "
                 "(Debian: apt-get install valgrind)")  # fmt: skip
    starts = args.rounds * args.burst
    with RedisServer() as server, CoordinatorProcess(server.url, _NS):
        empty = _run(server.url, 0, args.burst, starts, callgrind=True)
        full = _run(server.url, args.rounds, args.burst, starts, callgrind=True)
    with RedisServer() as server, CoordinatorProcess(server.url, _NS):
        native = _run(server.url, args.rounds, args.burst, starts, callgrind=False)
    per_start = (full["instructions"] - empty["instructions"]) / starts
    cpu_us = native["cpu_s"] / starts * 1e6
    out = {"rounds": args.rounds, "burst": args.burst, "instructions_per_start": round(per_start),
           "instructions_empty": empty["instructions"], "instructions_full": full["instructions"],
           "native_cpu_us_per_start": round(cpu_us, 1),
           "instructions_per_cpu_us": round(per_start / cpu_us)}  # fmt: skip
    print(
        f"{starts} hosted agents started ({args.rounds} bursts of {args.burst}): "
        f"{per_start / 1000:.0f} thousand instructions per start (callgrind); natively "
        f"{cpu_us:.0f} µs of CPU per start, {per_start / cpu_us:.0f} instructions per µs"
    )
    print(orjson.dumps(out).decode())


if __name__ == "__main__":
    main()

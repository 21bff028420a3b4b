"""The coordinator's own work per registration, counted in instructions.

``python -m bench.coordinator_cost [--rounds R] [--burst B]``: one ``redis-server`` (native) and
one coordinator run under ``valgrind --tool=callgrind --instr-atstart=no``: nothing is counted
while it starts. Counting is switched on (``callgrind_control -i on``), ``R`` bursts (default
10) of ``B`` announcements (default 100) are written in one pipeline each, as
``bench.announce_cost`` writes them, and every answer is waited for; counting is switched off
and the coordinator stopped. The count divided by the announcements is the coordinator
process's work per registration: reading the control stream, decoding and validating each
announcement, the control script's call, the answers' bookkeeping, and its event loop.

What it is for: the coordinator answers the second half of a host's burst at its own pace and
shares the machine's cores with the host (docs/BENCHMARKS.md, sessions 16 and 17); its CPU time
swings with the machine's speed, its instruction count does not (``bench.start_cost`` counts
the host, ``bench.control_cost`` Redis). Needs valgrind.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from agent_sdk.connection import make_client
from agent_sdk.embedded import RedisServer
from agent_sdk.settings import Settings
from bench.announce_cost import announcement_args
from bench.common import callgrind_total
from bench.coord import CoordinatorProcess

__all__ = ["main"]

_NS = "coordinator-cost"


def _counting(pid: int, on: bool) -> None:
    subprocess.run(["callgrind_control", "-i", "on" if on else "off", str(pid)],
                   check=True, capture_output=True)  # fmt: skip


async def _bursts(url: str, pid: int, rounds: int, burst: int) -> None:
    settings = Settings(redis_url=url, namespace=_NS)
    client = make_client(settings)
    keys = settings.keys
    reply_to = keys.replies("coordinator-cost", "answers")
    try:
        _counting(pid, True)
        for r in range(rounds):
            pipe = client.pipeline(transaction=False)
            for k in range(r * burst, (r + 1) * burst):
                pipe.execute_command(
                    "XADD", keys.control(), "*", *announcement_args(settings, k, reply_to)
                )
            await pipe.execute()
            for _ in range(burst):  # under valgrind it is ~50x slower than natively
                if not await client.blpop([reply_to], timeout=120):
                    raise RuntimeError("the coordinator did not answer within 120 s")
        _counting(pid, False)
    finally:
        await client.aclose()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--burst", type=int, default=100)
    args = p.parse_args()
    for tool in ("valgrind", "callgrind_control"):
        if shutil.which(tool) is None:
            sys.exit(f"bench.coordinator_cost needs {tool} (Debian: apt-get install valgrind)")
    with tempfile.TemporaryDirectory() as tmp, RedisServer() as server:
        out = Path(tmp) / "callgrind.out"
        wrapper = ("valgrind", "--tool=callgrind", "--instr-atstart=no",
                   f"--callgrind-out-file={out}")  # fmt: skip
        coordinator = CoordinatorProcess(server.url, _NS, wrapper=wrapper)
        coordinator.start(timeout=300)
        try:
            assert coordinator.process is not None
            asyncio.run(_bursts(server.url, coordinator.process.pid, args.rounds, args.burst))
        finally:
            coordinator.stop(timeout=120)
        total = callgrind_total(out)
    if total is None:
        raise RuntimeError("callgrind wrote no total (did the coordinator exit cleanly?)")
    n = args.rounds * args.burst
    per = total / n
    print(f"{n} announcements ({args.rounds} pipelines of {args.burst}): {per / 1000:.0f} "
          f"thousand instructions per announcement in the coordinator (callgrind)")  # fmt: skip
    print(f'{{"rounds":{args.rounds},"burst":{args.burst},"instructions":{total},'
          f'"instructions_per_announce":{round(per)}}}')  # fmt: skip


if __name__ == "__main__":
    main()

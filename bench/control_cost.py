"""Redis's own work per registration: instructions inside the coordinator's control script.

``python -m bench.control_cost [--announces N] [--batch B]``: a ``redis-server`` run under
``valgrind --tool=callgrind --toggle-collect=evalShaCommand`` (only what runs inside
``EVALSHA`` is counted), and ``N`` announcements (default 1,000) applied through the
coordinator's ``Registry`` in batches of ``B`` (default 10, about what a coordinator takes at
once while a host adds 100 agents), each answered on a reply list: the cards of the ``host``
group's agents, with a handler listed and a host lease, as a hosted agent announces them. The
count, divided by ``N``, is the work of one registration inside Redis: the Lua of
``coordinator/lua/control.lua`` and the commands it calls (the record hash, the index sets, the
lease, the change feed, the answer).

What it is for: on this machine Redis shares a core with the coordinator while a host adds
agents, and its CPU time per registration swings with the machine's speed as the host's does;
an instruction count does not (``bench.start_cost`` is its counterpart for the host). Needs
valgrind.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import redis

from agent_sdk.connection import make_client
from agent_sdk.embedded import find_redis_server, free_port
from agent_sdk.settings import Settings
from bench.common import callgrind_total
from bench.protocol import card_for
from coordinator.registry import ControlBatch, Registry
from coordinator.settings import CoordinatorSettings
from coordinator.validation import PreparedAnnounce, prepare_announce
from schemas.envelope import new_id
from schemas.keys import COORDINATOR_GROUP

__all__ = ["main"]

_NS = "control-cost"


def _announcements(n: int, settings: Settings) -> list[PreparedAnnounce]:
    """``n`` announcements as a host's agents make them (a listed handler, a host lease)."""
    now_ms = time.time_ns() // 1_000_000
    out = []
    for i in range(n):
        card = card_for(i, "u").model_dump(mode="json", exclude_none=True)
        card["metadata"] = {"handles": "echo"}
        payload = {"card": card, "instance_id": new_id(), "status": "ready", "load": 0,
                   "heartbeat_ms": settings.heartbeat_ms, "ttl_ms": settings.ttl_ms,
                   "lease": f"cost:{new_id()}"}  # fmt: skip
        prepared = prepare_announce(payload, now_ms)
        if not isinstance(prepared, PreparedAnnounce):
            raise RuntimeError(f"the bench's announcement was refused: {prepared.description}")
        out.append(prepared)
    return out


async def _apply(url: str, n: int, batch: int) -> None:
    settings = CoordinatorSettings(redis_url=url, namespace=_NS)
    client = make_client(settings)
    try:
        await client.xgroup_create(settings.keys.control(), COORDINATOR_GROUP, "0", mkstream=True)
        registry = Registry(client, settings)
        anns = _announcements(n, settings)
        for start in range(0, n, batch):
            control = ControlBatch()
            for k in range(start, min(n, start + batch)):
                entry_id = f"{time.time_ns() // 1_000_000}-{k}"
                reply_to = settings.keys.replies("cost", f"r{k % 4}")
                control.announce(entry_id, anns[k], reply_to=reply_to, correlation_id=new_id())
            result = await registry.apply(control)
            if result.refused or result.failed or result.stale:
                raise RuntimeError(f"the control script did not register them all: {result}")
        await registry.aclose()
    finally:
        await client.aclose()


def _count(n: int, batch: int) -> int:
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "callgrind.out"
        server = subprocess.Popen(
            ["valgrind", "--tool=callgrind", "--toggle-collect=evalShaCommand",
             f"--callgrind-out-file={out}", find_redis_server(), "--port", str(port),
             "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        try:
            probe = redis.Redis(port=port)
            deadline = time.monotonic() + 60
            while True:  # polling a child process we started: no event to wait on
                try:
                    probe.ping()
                    break
                except redis.ConnectionError:
                    if server.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError("redis-server under valgrind did not start") from None
                    time.sleep(0.1)
            asyncio.run(_apply(f"redis://127.0.0.1:{port}/0", n, batch))
            with contextlib.suppress(redis.ConnectionError):  # it closes it as it exits
                probe.shutdown(nosave=True)
            _, err = server.communicate(timeout=60)
        finally:
            if server.poll() is None:
                server.kill()
                server.wait()
        total = callgrind_total(out)
    if total is None:
        raise RuntimeError(f"callgrind wrote no total: {err[-2000:]}")
    return total


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--announces", type=int, default=1000)
    p.add_argument("--batch", type=int, default=10)
    args = p.parse_args()
    if shutil.which("valgrind") is None:
        sys.exit("bench.control_cost counts instructions with valgrind, which is not installed "
                 "(Debian: apt-get install valgrind)")  # fmt: skip
    total = _count(args.announces, args.batch)
    per = total / args.announces
    print(f"{args.announces} announcements in batches of {args.batch}: {per / 1000:.0f} thousand "
          f"instructions per announcement inside EVALSHA (callgrind)")  # fmt: skip
    print(f'{{"announces":{args.announces},"batch":{args.batch},"instructions":{total},'
          f'"instructions_per_announce":{round(per)}}}')  # fmt: skip


if __name__ == "__main__":
    main()

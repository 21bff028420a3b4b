"""The cost of acl mode: request-reply latency, send throughput and control entries (heartbeats),
default mode and acl mode in the same run on the same private Redis.

    python -m bench.security [--requests 2000] [--sends 20000] [--beats 5000] [--rounds 10]

Both buses run at once (a coordinator and two agents each, one namespace per mode) and every
measure alternates between them in ``--rounds`` slices (which mode goes first alternates too), so
both modes see the same background load: on a shared machine the load drifts over seconds, and
whole runs of one mode after the other measured that drift as often as the mode. Prints one
JSON line per mode and the acl/off ratios (docs/SECURITY.md, "Cost").
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import statistics
import time
from contextlib import AsyncExitStack
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

import orjson
import redis.asyncio as aioredis

from agent_sdk import Agent
from agent_sdk.connection import make_client
from agent_sdk.embedded import RedisServer
from agent_sdk.membership import xadd_control
from agent_sdk.messaging import Message
from agent_sdk.settings import Settings
from bench.acl_users import acl_users
from coordinator import Coordinator, CoordinatorSettings
from schemas.envelope import Envelope

_IDS: dict[str, dict[str, Any]] = {
    "a": {"names": ["a"], "roles": ["w"]},
    "b": {"names": ["b"], "roles": ["w"]},
    "coord": {"kind": "coordinator"},
}
MODES = ("off", "acl")


class _Bus:
    """One mode's bus: a coordinator, ``b`` answering ``echo`` and counting ``note``s, and ``a``."""

    def __init__(self, mode: str, who: dict[str, Settings]) -> None:
        self.mode = mode
        self.who = who
        self.notes = 0
        self.wanted = 0
        self.arrived = asyncio.Event()
        self.latencies: list[float] = []
        self.send_time = 0.0
        self.beat_time = 0.0

    async def start(self, stack: AsyncExitStack) -> None:
        who = self.who
        cs = CoordinatorSettings(**who["coord"].model_dump(), coordinator_id=f"bench-{self.mode}")
        await stack.enter_async_context(Coordinator(cs))
        b = await stack.enter_async_context(Agent("b", "w", settings=who["b"], max_concurrency=64))

        @b.on("echo")
        async def echo(payload: Any, msg: Message) -> Any:
            return payload

        @b.on("note")
        async def note(payload: Any, msg: Message) -> None:
            self.notes += 1
            if self.notes >= self.wanted:
                self.arrived.set()

        self.a = await stack.enter_async_context(Agent("a", "w", settings=who["a"]))
        self.client = make_client(who["a"])
        stack.push_async_callback(self.client.aclose)
        self.beat = Envelope(
            kind="control",
            type="heartbeat",
            sender="a",
            payload={"instance_id": self.a.instance_id, "load": 0, "status": "ready"},
        )
        for _ in range(50):
            await self.a.request("b", "echo", 1)

    async def requests(self, n: int) -> None:
        for _ in range(n):
            t = time.perf_counter()
            await self.a.request("b", "echo", 1)
            self.latencies.append((time.perf_counter() - t) * 1e6)

    async def sends(self, n: int) -> None:
        self.wanted, self.notes = n, 0
        self.arrived.clear()
        t = time.perf_counter()
        for i in range(0, n, 200):
            await asyncio.gather(*(self.a.send("b", "note", j) for j in range(i, min(i + 200, n))))
        await asyncio.wait_for(self.arrived.wait(), 120)
        self.send_time += time.perf_counter() - t

    async def beats(self, n: int) -> None:
        t = time.perf_counter()
        for _ in range(n):
            await xadd_control(self.client, self.who["a"], self.beat, "beating")
        self.beat_time += time.perf_counter() - t


async def main(n_req: int, n_send: int, n_beat: int, rounds: int) -> None:
    with RedisServer() as server, TemporaryDirectory() as tmp:
        admin = aioredis.Redis(port=server.port, decode_responses=True)
        buses: dict[str, _Bus] = {}
        for mode in MODES:
            ns = f"bench{secrets.token_hex(3)}"
            base = Settings(redis_url=server.url, namespace=ns)
            who = {k: base for k in _IDS}
            if mode == "acl":
                who = await acl_users(admin, _IDS, ns, base, Path(tmp))
            buses[mode] = _Bus(mode, who)
        async with AsyncExitStack() as stack:
            for bus in buses.values():
                await bus.start(stack)
            for i in range(rounds):
                order = list(buses.values()) if i % 2 == 0 else list(buses.values())[::-1]
                for bus in order:
                    await bus.requests(n_req // rounds)
                for bus in order:
                    await bus.sends(n_send // rounds)
                for bus in order:
                    await bus.beats(n_beat // rounds)
        await admin.aclose()
    results: dict[str, dict[str, Any]] = {}
    for mode, bus in buses.items():
        lat = sorted(bus.latencies)
        results[mode] = {
            "mode": mode,
            "request_p50_us": round(statistics.median(lat)),
            "request_p99_us": round(lat[int(len(lat) * 0.99)]),
            "sends_per_s": round(n_send // rounds * rounds / bus.send_time),
            "control_entry_us": round(bus.beat_time / (n_beat // rounds * rounds) * 1e6, 1),
        }
        print(orjson.dumps(results[mode]).decode())
    for key in ("request_p50_us", "request_p99_us", "sends_per_s", "control_entry_us"):
        off, acl = results["off"][key], results["acl"][key]
        print(f"{key}: off {off:.1f}  acl {acl:.1f}  acl/off {acl / off:.3f}")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--requests", type=int, default=2000)
    p.add_argument("--sends", type=int, default=20000)
    p.add_argument("--beats", type=int, default=5000)
    p.add_argument("--rounds", type=int, default=10)
    a = p.parse_args()
    asyncio.run(main(a.requests, a.sends, a.beats, a.rounds))

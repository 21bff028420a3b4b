"""Control-stream flood: how long a new agent waits while a flood of control entries is read.

One private Redis, both modes in one run. Per mode: a coordinator runs; an attacker holding an
agent's credential writes ``--flood`` control entries (raw ``XADD``s claiming another agent's
name, pipelined); as soon as they are in, a new agent starts (``announce_timeout`` raised to
120 s so the wait is measured, not cut off), and we time its announce and the time until the
control stream's lag (``coordinator.lag``) is back to zero.

    python -m bench.control_flood --flood 200000
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import time
import uuid
from pathlib import Path
from tempfile import TemporaryDirectory

import orjson
import redis.asyncio as aioredis

from agent_sdk import Agent
from agent_sdk.connection import make_client
from agent_sdk.embedded import RedisServer
from agent_sdk.settings import Settings
from bench.acl_users import acl_users
from coordinator import Coordinator, CoordinatorSettings
from coordinator.lag import control_lag
from schemas.envelope import new_id

_IDS = {
    "a": {"names": ["a"], "roles": ["w"]},
    "b": {"names": ["b"], "roles": ["w"]},
    "m": {"names": ["m"], "roles": ["w"]},
    "coord": {"kind": "coordinator"},
}


async def _flood(settings: Settings, n: int) -> float:
    """``n`` raw control entries claiming sender ``a`` (heartbeats of an unknown instance)."""
    client = make_client(settings)
    stream = settings.keys.control()
    payload = orjson.dumps({"instance_id": "i" * 12, "load": 0, "status": "ready", "epoch": 1})
    t0 = time.perf_counter()
    try:
        for start in range(0, n, 5000):
            async with client.pipeline(transaction=False) as pipe:
                for _ in range(min(5000, n - start)):
                    pipe.xadd(stream, {
                        "v": "1", "id": new_id(), "kind": "control", "type": "heartbeat",
                        "sender": "a", "sent_at": "2026-01-01T00:00:00.000Z",
                        "payload": payload,
                    })  # fmt: skip
                await pipe.execute()
    finally:
        await client.aclose()
    return time.perf_counter() - t0


async def _measure(mode: str, who: dict[str, Settings], n: int) -> dict[str, object]:
    cs = CoordinatorSettings(
        **who["coord"].model_dump(), coordinator_id=f"bench-{uuid.uuid4().hex[:6]}"
    )
    async with Coordinator(cs) as coord:
        write_s = await _flood(who["m"], n)
        t0 = time.perf_counter()
        b = Agent("b", "w", settings=who["b"].model_copy(update={"announce_timeout": 120.0}))
        await b.start()
        announce_s = time.perf_counter() - t0
        client = make_client(who["coord"])
        try:
            for _ in range(12_000):  # polled every 50 ms, for 10 min at most
                if not (await control_lag(client, cs)).entries:
                    break
                await asyncio.sleep(0.05)
        finally:
            await client.aclose()
        drained_s = time.perf_counter() - t0
        await b.stop()
        stats = coord.stats
    return {
        "mode": mode, "flood": n, "write_s": round(write_s, 2),
        "new_agent_announce_s": round(announce_s, 3), "backlog_drained_s": round(drained_s, 2),
        "dead_letters": stats.dead_letters,
    }  # fmt: skip


async def main(n: int, modes: list[str]) -> None:
    with RedisServer() as server, TemporaryDirectory() as tmp:
        admin = aioredis.Redis(port=server.port, decode_responses=True)
        for mode in modes:
            base = Settings(redis_url=server.url, namespace=f"flood{secrets.token_hex(3)}")
            who = {k: base for k in _IDS}
            if mode == "acl":
                who = await acl_users(admin, _IDS, base.namespace, base, Path(tmp))
            print(orjson.dumps(await _measure(mode, who, n)).decode(), flush=True)
        await admin.aclose()


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--flood", type=int, default=200_000)
    p.add_argument("--modes", default="off,acl")
    a = p.parse_args()
    asyncio.run(main(a.flood, a.modes.split(",")))

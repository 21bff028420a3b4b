"""The cost of acl mode: request-reply latency, send throughput and control entries (heartbeats),
default mode and acl mode in the same run on the same private Redis.

    python -m bench.security [--requests 2000] [--sends 20000] [--beats 5000]

Prints one JSON line per measure and mode, and the acl/off ratios (docs/SECURITY.md, "Cost").
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import statistics
import time
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

import orjson
import redis.asyncio as aioredis
from pydantic import SecretStr

from agent_sdk import Agent
from agent_sdk.connection import make_client
from agent_sdk.embedded import RedisServer
from agent_sdk.membership import xadd_control
from agent_sdk.messaging import Message
from agent_sdk.settings import Settings
from coordinator import Coordinator, CoordinatorSettings
from coordinator.acl.apply import apply_plan, make_plan
from coordinator.acl.policy import Policy
from schemas.envelope import Envelope

_IDS = {
    "a": {"names": ["a"], "roles": ["w"]},
    "b": {"names": ["b"], "roles": ["w"]},
    "coord": {"kind": "coordinator"},
}


async def _users(admin: aioredis.Redis, ns: str, base: Settings, tmp: Path) -> dict[str, Settings]:
    ids = {k: {**v, "password_file": k} for k, v in _IDS.items()}
    for k in ids:
        (tmp / k).write_text(secrets.token_urlsafe(16) + "\n")
    policy = Policy.model_validate({"user_prefix": f"{ns}-", "identities": ids})
    await apply_plan(admin, await make_plan(admin, policy, base.keys, tmp), policy, base.keys)
    return {
        k: base.model_copy(
            update={
                "security": "acl",
                "redis_username": policy.user(k),
                "redis_password": SecretStr((tmp / k).read_text().strip()),
            }
        )
        for k in ids
    }


async def _measure(mode: str, who: dict[str, Settings], n_req: int, n_send: int, n_beat: int
                   ) -> dict[str, Any]:  # fmt: skip
    cs = CoordinatorSettings(**who["coord"].model_dump(), coordinator_id=f"bench-{mode}")
    out: dict[str, Any] = {"mode": mode}
    async with Coordinator(cs), Agent("b", "w", settings=who["b"], max_concurrency=64) as b, \
            Agent("a", "w", settings=who["a"]) as a:  # fmt: skip
        got = 0
        done = asyncio.Event()

        @b.on("echo")
        async def echo(payload: Any, msg: Message) -> Any:
            return payload

        @b.on("note")
        async def note(payload: Any, msg: Message) -> None:
            nonlocal got
            got += 1
            if got >= n_send:
                done.set()

        for _ in range(50):
            await a.request("b", "echo", 1)
        lat = []
        for _ in range(n_req):
            t = time.perf_counter()
            await a.request("b", "echo", 1)
            lat.append((time.perf_counter() - t) * 1e6)
        lat.sort()
        out["request_p50_us"] = round(statistics.median(lat))
        out["request_p99_us"] = round(lat[int(len(lat) * 0.99)])
        t = time.perf_counter()
        for i in range(0, n_send, 200):
            await asyncio.gather(*(a.send("b", "note", j) for j in range(i, min(i + 200, n_send))))
        await asyncio.wait_for(done.wait(), 120)
        out["sends_per_s"] = round(n_send / (time.perf_counter() - t))
        client = make_client(who["a"])
        try:
            env = Envelope(
                kind="control",
                type="heartbeat",
                sender="a",
                payload={"instance_id": a.instance_id, "load": 0, "status": "ready"},
            )
            t = time.perf_counter()
            for _ in range(n_beat):
                await xadd_control(client, who["a"], env, "beating")
            out["control_entry_us"] = round((time.perf_counter() - t) / n_beat * 1e6, 1)
        finally:
            await client.aclose()
    return out


async def main(n_req: int, n_send: int, n_beat: int) -> None:
    with RedisServer() as server, TemporaryDirectory() as tmp:
        admin = aioredis.Redis(port=server.port, decode_responses=True)
        results = []
        for mode in ("off", "acl", "off", "acl"):
            ns = f"bench{secrets.token_hex(3)}"
            base = Settings(redis_url=server.url, namespace=ns)
            who = {k: base for k in _IDS}
            if mode == "acl":
                who = await _users(admin, ns, base, Path(tmp))
            r = await _measure(mode, who, n_req, n_send, n_beat)
            print(orjson.dumps(r).decode())
            results.append(r)
        await admin.aclose()
    for key in ("request_p50_us", "request_p99_us", "sends_per_s", "control_entry_us"):
        off = statistics.median(r[key] for r in results if r["mode"] == "off")
        acl = statistics.median(r[key] for r in results if r["mode"] == "acl")
        print(f"{key}: off {off:.1f}  acl {acl:.1f}  acl/off {acl / off:.3f}")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--requests", type=int, default=2000)
    p.add_argument("--sends", type=int, default=20000)
    p.add_argument("--beats", type=int, default=5000)
    a = p.parse_args()
    asyncio.run(main(a.requests, a.sends, a.beats))

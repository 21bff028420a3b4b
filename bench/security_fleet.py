"""The cost of acl mode on heartbeats, as a fleet pays it: CPU per heartbeat, default mode and
acl mode in the same run.

    python -m bench.security_fleet [--agents 2000] [--heartbeat 0.5] [--window 20] [--lone]

Each mode gets a private Redis, a coordinator process and a host process carrying ``--agents``
agents (``--lone``: as many lone ``Agent``s, each sending a heartbeat entry of its own), in acl
mode as the users an ``agentbus acl`` policy makes (the host's own identity, the coordinator's).
Both modes run at the same time, so they see the same background load. After the fleets
settle, the CPU time of the host, the coordinator and Redis (``INFO cpu``) is read over
``--window`` seconds and divided by the heartbeats of that window (agents x window / interval);
the registry must still hold every agent at the end (no false expiry). Prints one JSON line per
mode and the acl/off ratios (docs/SECURITY.md, "Cost").

``bench.security`` times one control entry written alone (a lone agent's heartbeat); this
measures what carrying a fleet's heartbeats costs: a host sends one lease per interval for up to
1,000 of its agents, proved once, and the coordinator checks each beat's name against the
lessees of the lease's proved sender.
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import time
from contextlib import AsyncExitStack, ExitStack
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

import orjson
import psutil
import redis.asyncio as aioredis

from agent_sdk.embedded import RedisServer
from agent_sdk.settings import Settings
from bench.acl_users import acl_users
from bench.coord import CoordinatorProcess
from bench.procs import WorkerContext, pick_loop, spawn
from schemas.keys import KeySpace

MODES = ("off", "acl")
_PARTS = ("host", "coordinator", "redis")


async def fleet_host(ctx: WorkerContext, settings: Settings, agents: int, lone: bool) -> None:
    """``agents`` agents ``h-<i>`` (role ``w``) in one ``Host``, or with ``lone`` as that many
    lone ``Agent``s (each a host of one: a heartbeat entry of its own per interval, as many
    single-agent processes send), run until the process is stopped."""
    from agent_sdk import Agent, Host

    async with AsyncExitStack() as stack:
        if lone:
            for i in range(agents):
                await stack.enter_async_context(Agent(f"h-{i}", "w", settings=settings))
        else:
            host = Host(settings, name="h-host")  # a name of its identity: its replies are its own
            for i in range(agents):
                host.agent(f"h-{i}", "w")
            await stack.enter_async_context(host)
        ctx.ready()
        await asyncio.Event().wait()


async def _redis_cpu(r: aioredis.Redis) -> float:
    info = await r.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


class _Fleet:
    """One mode: its Redis, coordinator and host."""

    def __init__(self, mode: str, server: RedisServer) -> None:
        self.mode = mode
        self.server = server
        self.ns = f"fleet{secrets.token_hex(3)}"
        self.admin = aioredis.Redis(port=server.port)
        self.cpu: dict[str, float] = {}

    async def start(self, stack: ExitStack, args: argparse.Namespace, tmp: Path) -> None:
        base = Settings(
            redis_url=self.server.url, namespace=self.ns,
            heartbeat_interval=args.heartbeat, ttl=args.heartbeat * 3, announce_timeout=30.0,
        )  # fmt: skip
        host, extra = base, {}
        if self.mode == "acl":
            ids = {
                "host": {"names": ["h-*"], "roles": ["w"], "max_agents": args.agents + 10},
                "coord": {"kind": "coordinator"},
            }
            who = await acl_users(self.admin, ids, self.ns, base, tmp / self.mode)
            host, coord = who["host"], who["coord"]
            assert coord.redis_username is not None
            assert coord.redis_password is not None
            extra = {
                "security": "acl",
                "redis_username": coord.redis_username,
                "redis_password": coord.redis_password.get_secret_value(),
            }
        self.coordinator = stack.enter_context(
            CoordinatorProcess(
                self.server.url, self.ns, heartbeat_interval=str(args.heartbeat),
                ttl=str(args.heartbeat * 3), **extra,
            )
        )  # fmt: skip
        self.host = spawn(fleet_host, host, args.agents, args.lone, loop=pick_loop(args.loop))
        stack.callback(self.host.stop)
        self.host_ps = psutil.Process(self.host.pid)

    async def registered(self) -> int:
        return int(await self.admin.scard(KeySpace(self.ns).agents()))

    async def sample(self) -> dict[str, float]:
        return {
            "host": sum(self.host_ps.cpu_times()[:2]),
            "coordinator": self.coordinator.cpu_seconds(),
            "redis": await _redis_cpu(self.admin),
        }


async def main(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    with ExitStack() as stack, TemporaryDirectory() as tmp:
        fleets = {}
        for mode in MODES:
            (Path(tmp) / mode).mkdir()
            server = stack.enter_context(RedisServer())
            fleets[mode] = _Fleet(mode, server)
            await fleets[mode].start(stack, args, Path(tmp))
        deadline = time.monotonic() + 60
        while any([await f.registered() < args.agents for f in fleets.values()]):
            if time.monotonic() > deadline:
                raise RuntimeError("the fleets did not register within 60 s")
            await asyncio.sleep(0.2)
        await asyncio.sleep(args.heartbeat * 4)  # the start settles
        before = {m: await f.sample() for m, f in fleets.items()}
        t0 = time.perf_counter()
        await asyncio.sleep(args.window)
        elapsed = time.perf_counter() - t0
        after = {m: await f.sample() for m, f in fleets.items()}
        results: dict[str, dict[str, Any]] = {}
        for mode, fleet in fleets.items():
            beats = args.agents * elapsed / args.heartbeat
            per = {p: (after[mode][p] - before[mode][p]) / beats * 1e6 for p in _PARTS}
            results[mode] = {
                "mode": mode,
                "agents": args.agents,
                "lone": args.lone,
                "heartbeats_per_s": round(args.agents / args.heartbeat),
                **{f"{p}_us_per_beat": round(v, 2) for p, v in per.items()},
                "total_us_per_beat": round(sum(per.values()), 2),
                "registered_at_end": await fleet.registered(),
            }
            await fleet.admin.aclose()
    for res in results.values():
        print(orjson.dumps(res).decode())
    for key in (*(f"{p}_us_per_beat" for p in _PARTS), "total_us_per_beat"):
        off, acl = results["off"][key], results["acl"][key]
        print(f"{key}: off {off:.2f}  acl {acl:.2f}  acl/off {acl / off:.3f}")
    return results


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--agents", type=int, default=2000)
    p.add_argument("--heartbeat", type=float, default=0.5)
    p.add_argument("--window", type=float, default=20.0)
    p.add_argument("--lone", action="store_true", help="lone Agents, not one Host")
    p.add_argument("--loop", default="auto", choices=("auto", "uvloop", "asyncio"))
    asyncio.run(main(p.parse_args()))

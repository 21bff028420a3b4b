"""Where the CPU of a registration goes: the host, the coordinator and Redis, in one run.

``python -m bench.announce_cost [--burst B] [--rounds R]``: one ``redis-server`` and one
coordinator (child processes), then two parts:

* **a host**: a running ``Host`` of 100 agents in this process, to which ``B`` agents (default
  100) are added at once, ``R`` times (default 20), each made and started in a task of its own
  as the ``host`` group's "added at once" does. The CPU of each process during the bursts
  (``time.process_time`` here, psutil for the coordinator and ``redis-server``), per
  registration, and the p50 of the bursts;
* **the coordinator alone**: ``R`` bursts of ``B`` announcements written in one pipeline (as an
  SDK writes them: an ``Outgoing`` each), answered on one reply list; when the first, the
  middle and the last answer came, the coordinator's CPU per announcement, and Redis's own time
  in the control script per announcement (``INFO commandstats``).

What it is for: a burst's p50 cannot be lower than the CPU its first half costs on the cores
that do the work; this bench says how much each process spends, so the figure to cut is known.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
from typing import Any

import orjson
import psutil

from agent_sdk.connection import make_client
from agent_sdk.embedded import RedisServer
from agent_sdk.messaging.codec import Outgoing
from agent_sdk.settings import Settings
from bench.coord import CoordinatorProcess
from bench.protocol import card_for, echo_agent
from schemas.agent import AgentCard, ControlType
from schemas.envelope import Kind, new_id

__all__ = ["announcement_args", "main"]

#: A quiet gap between bursts (a pause, not a wait for anything: the bursts are independent).
_GAP = 0.3


class _Cpu:
    """CPU seconds of this process, the coordinator and ``redis-server`` over some windows."""

    def __init__(self, coordinator: CoordinatorProcess, redis_pid: int) -> None:
        self._coordinator = coordinator
        self._redis = psutil.Process(redis_pid)
        self.spent = {"host": 0.0, "coordinator": 0.0, "redis": 0.0}
        self._at: tuple[float, float, float] | None = None

    def _now(self) -> tuple[float, float, float]:
        t = self._redis.cpu_times()
        redis = float(t.user + t.system)
        return time.process_time(), self._coordinator.cpu_seconds(), redis

    def begin(self) -> None:
        self._at = self._now()

    def end(self) -> None:
        assert self._at is not None
        now = self._now()
        for key, a, b in zip(("host", "coordinator", "redis"), self._at, now, strict=True):
            self.spent[key] += b - a
        self._at = None


async def _host_part(settings: Settings, burst: int, rounds: int, cpu: _Cpu) -> dict[str, Any]:
    from agent_sdk import Host

    host = Host(settings, name="cost")

    for i in range(100):
        echo_agent(host, i, "base")
    p50s: list[float] = []
    async with host:
        for r in range(rounds):
            await asyncio.sleep(_GAP)

            async def timed(i: int) -> float:
                t = time.perf_counter()
                await echo_agent(host, i, "u").start()
                return time.perf_counter() - t

            cpu.begin()
            took = await asyncio.gather(
                *(asyncio.create_task(timed(i)) for i in range(r * burst, (r + 1) * burst))
            )
            cpu.end()
            p50s.append(statistics.median(took) * 1000)
    return {"p50_ms": statistics.median(p50s), "p50s_ms": p50s}


def announcement_args(settings: Settings, k: int, reply_to: str) -> list[Any]:
    """The stream fields of announcement ``k``, as an SDK writes it (an ``Outgoing``)."""
    c = card_for(k, "solo")
    card = AgentCard(name=f"solo-{k}", role=c.role, capabilities=c.capabilities, tags=c.tags,
                     host="bench", pid=os.getpid())  # fmt: skip
    payload = {"card": card.model_dump(mode="json", exclude_none=True), "instance_id": new_id(),
               "status": "ready", "load": 0, "heartbeat_ms": settings.heartbeat_ms,
               "ttl_ms": settings.ttl_ms}  # fmt: skip
    env = Outgoing(
        ControlType.ANNOUNCE.value, card.name, orjson.dumps(payload), kind=Kind.CONTROL,
        reply_to=reply_to, timeout=settings.announce_timeout,
    )  # fmt: skip
    return env.stream_args()


async def _coordinator_part(
    settings: Settings, burst: int, rounds: int, cpu: _Cpu
) -> dict[str, Any]:
    client = make_client(settings)
    keys = settings.keys
    reply_to = keys.replies("bench-cost", "answers")
    marks: list[tuple[float, float, float]] = []
    try:
        await client.config_resetstat()
        for r in range(rounds):
            await asyncio.sleep(_GAP)
            pipe = client.pipeline(transaction=False)
            for k in range(r * burst, (r + 1) * burst):
                pipe.execute_command(
                    "XADD", keys.control(), "*", *announcement_args(settings, k, reply_to)
                )
            cpu.begin()
            t0 = time.perf_counter()
            await pipe.execute()
            came = []
            for _ in range(burst):
                if not await client.blpop([reply_to], timeout=10):
                    raise RuntimeError("the coordinator did not answer within 10 s")
                came.append((time.perf_counter() - t0) * 1000)
            cpu.end()
            marks.append((came[0], came[len(came) // 2 - 1], came[-1]))
        stats = (await client.info("commandstats"))["cmdstat_evalsha"]
    finally:
        await client.aclose()
    return {
        "first_ms": statistics.median(m[0] for m in marks),
        "middle_ms": statistics.median(m[1] for m in marks),
        "last_ms": statistics.median(m[2] for m in marks),
        "script_us": float(stats["usec"]) / (rounds * burst),
    }


def _per(cpu: _Cpu, n: int) -> dict[str, float]:
    return {k: v / n * 1e6 for k, v in cpu.spent.items()}


async def _run(server: RedisServer, burst: int, rounds: int) -> dict[str, Any]:
    assert server.process is not None
    out: dict[str, Any] = {"burst": burst, "rounds": rounds, "cores": os.cpu_count()}
    for part in ("host", "coordinator"):
        ns = f"cost-{part}"
        settings = Settings(redis_url=server.url, namespace=ns, heartbeat_interval=1.0, ttl=3.0)
        with CoordinatorProcess(server.url, ns) as coordinator:
            cpu = _Cpu(coordinator, server.process.pid)
            if part == "host":
                out[part] = await _host_part(settings, burst, rounds, cpu)
            else:
                out[part] = await _coordinator_part(settings, burst, rounds, cpu)
            out[part]["cpu_us"] = _per(cpu, burst * rounds)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--burst", type=int, default=100)
    p.add_argument("--rounds", type=int, default=20)
    args = p.parse_args()
    with RedisServer() as server:
        out = asyncio.run(_run(server, args.burst, args.rounds))
    b, host, coord = args.burst, out["host"], out["coordinator"]
    print(f"{b} agents added at once to a running host, {args.rounds} bursts, {out['cores']} "
          f"cores: p50 {host['p50_ms']:.1f} ms (median of the bursts' p50s)")  # fmt: skip
    print("  CPU per registration (µs):  " + ",  ".join(
        f"{k} {v:.0f}" for k, v in host["cpu_us"].items()
    ) + f";  all three {sum(host['cpu_us'].values()):.0f}")  # fmt: skip
    print(f"  CPU of the first half of a burst ({b // 2} registrations): host "
          f"{host['cpu_us']['host'] * b / 2 / 1000:.1f} ms on its one event loop; all three "
          f"{sum(host['cpu_us'].values()) * b / 2 / 1000:.1f} ms")  # fmt: skip
    print(f"the coordinator alone, {b} announcements in one pipeline: answers first / middle / "
          f"last after {coord['first_ms']:.1f} / {coord['middle_ms']:.1f} / "
          f"{coord['last_ms']:.1f} ms;")  # fmt: skip
    print(f"  coordinator CPU {coord['cpu_us']['coordinator']:.0f} µs and Redis CPU "
          f"{coord['cpu_us']['redis']:.0f} µs per announcement (the control script "
          f"{coord['script_us']:.0f} µs of it)")  # fmt: skip
    print(orjson.dumps(out).decode())


if __name__ == "__main__":
    main()

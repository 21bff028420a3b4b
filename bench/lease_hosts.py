"""Simulated hosts speaking the real host lease protocol (docs/PROTOCOL.md, "Hosts").

A simulated host stands for one ``agent_sdk.Host`` process of thousands of agents, without the
per-agent inboxes, readers and subscriptions a real one keeps (which are not what a registry
at 100,000 agents is about), and with exactly its control traffic:

* each agent announces (a real ``announce`` envelope, ``reply_to`` = the host's reply list, as
  ``Host`` agents share its reply router), at most ``ramp`` announces in flight per host;
* every ``heartbeat`` seconds the host writes its ``lease`` entries (``schemas.agent.Lease``,
  ``max_beats`` agents per entry, ``agent_sdk.heartbeats.LEASE_MAX_BEATS`` in the SDK) to the
  control stream, as ``agent_sdk.heartbeats`` does: with ``renew`` (protocol 2.2, the SDK's
  way) the agents announce under the host's lease and each entry renews them by name, with
  the count of agents the host carries (``members``)
  (``[name, instance_id]``: their status and load never change here); without it, a full beat
  ``[name, instance_id, load, status, epoch]`` per agent (protocol 1.1, the baseline);
* its reply list is drained on every tick: ``announce_result`` marks an agent registered, a
  ``reannounce`` makes that agent announce again (and leave the lease until it is answered).

Several hosts may share one worker process (each with its own Redis client and connections);
each host's ticks start at a random phase of the interval, as independent processes would.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from dataclasses import dataclass
from typing import Any

import orjson

from agent_sdk.membership import CONTROL_MAXLEN
from bench.procs import WorkerContext
from bench.protocol import SimAgent, announce_fields
from schemas.agent import AgentCard, ControlType
from schemas.envelope import Envelope, Kind, encode_fields, new_id
from schemas.keys import KeySpace
from schemas.names import lease_id

__all__ = ["LeaseHostSpec", "card_100k", "lease_hosts_worker", "query_100k"]

_PIPE = 1000  # announces per pipeline
_POP = 2000  # replies popped per call


def card_100k(i: int, host: str) -> AgentCard:
    """Agent ``i`` of a large fleet: role ``role-<i % 10>``, capabilities ``skill-<(i // 10) %
    5>``, ``lang-<(i // 50) % 2>``, ``zone-<(i // 100) % 10>``: role + skill + lang matches 1 %
    of the fleet, adding the zone 0.1 %."""
    return AgentCard(
        name=f"a-{i:06d}",
        role=f"role-{i % 10}",
        version="1.2.3",
        description="simulated hosted agent",
        capabilities=(f"skill-{(i // 10) % 5}", f"lang-{(i // 50) % 2}", f"zone-{(i // 100) % 10}"),
        tags=("bench",),
        host=host,
        pid=1,
        max_concurrency=4,
    )


def query_100k(j: int, zone: bool) -> tuple[str, list[str]]:
    """The j-th discovery query: 1 % of the fleet matches it, 0.1 % with ``zone``."""
    caps = [f"skill-{(j // 10) % 5}", f"lang-{(j // 50) % 2}"]
    if zone:
        caps.append(f"zone-{(j // 100) % 10}")
    return f"role-{j % 10}", caps


@dataclass(frozen=True, slots=True)
class LeaseHostSpec:
    name: str
    first: int
    count: int


class _Host:
    def __init__(
        self,
        r: Any,
        keys: KeySpace,
        spec: LeaseHostSpec,
        hb_ms: int,
        ttl_ms: int,
        max_beats: int,
        renew: bool,
    ) -> None:
        self.r = r
        self.max_beats = max_beats
        self.keys = keys
        self.spec = spec
        self.hb_ms, self.ttl_ms = hb_ms, ttl_ms
        instance = new_id()
        self.reply_to = keys.replies(spec.name, instance)
        self.lease_id = lease_id(spec.name, instance) if renew else None
        self.agents = {
            (card := card_100k(i, spec.name)).name: SimAgent(card, new_id(), self.reply_to)
            for i in range(spec.first, spec.first + spec.count)
        }
        self.todo = list(self.agents)  # not announced yet
        self.in_flight: dict[str, float] = {}  # name -> when its announce went out
        self.epochs: dict[str, int] = {}  # registered: name -> epoch
        self.joins: list[float] = []
        self.leases = self.reannounces = self.refused = 0
        self.late_max = self.xadd_max = 0.0

    async def announce_some(self, ramp: int) -> None:
        names: list[str] = []
        while self.todo and len(self.in_flight) + len(names) < ramp:
            names.append(self.todo.pop())
        for k in range(0, len(names), _PIPE):
            pipe = self.r.pipeline(transaction=False)
            now = time.monotonic()
            for name in names[k : k + _PIPE]:
                agent = self.agents[name]
                fields = announce_fields(agent, self.hb_ms, self.ttl_ms, self.lease_id)
                pipe.xadd(self.keys.control(), fields, maxlen=CONTROL_MAXLEN, approximate=True)
                self.in_flight[name] = now
            await pipe.execute()

    async def drain_replies(self) -> None:
        while True:
            items = await self.r.rpop(self.reply_to, _POP)
            for raw in items or ():
                self._reply(orjson.loads(raw))
            if not items or len(items) < _POP:
                return

    def _reply(self, env: dict[str, Any]) -> None:
        name = str(env.get("target") or "")
        if env.get("type") == ControlType.ANNOUNCE_RESULT.value:
            started = self.in_flight.pop(name, None)
            if env.get("error"):
                self.refused += 1
            elif started is not None:
                self.joins.append(time.monotonic() - started)
                self.epochs[name] = int(env["payload"]["epoch"])
        elif env.get("type") == ControlType.REANNOUNCE.value and name in self.epochs:
            del self.epochs[name]  # out of the lease until answered, as the SDK does
            self.todo.append(name)
            self.reannounces += 1

    async def lease(self) -> None:
        if not self.epochs:
            return
        agents = self.agents
        if self.lease_id is None:
            items: list[list[Any]] = [
                [n, agents[n].instance_id, 0, "ready", e] for n, e in self.epochs.items()
            ]
        else:
            items = [[n, agents[n].instance_id] for n in self.epochs]
        t0 = time.perf_counter()
        for k in range(0, len(items), self.max_beats):  # as agent_sdk.heartbeats does
            part = items[k : k + self.max_beats]
            payload: dict[str, Any] = {"host": self.spec.name, "beats": part}
            if self.lease_id is not None:
                payload = {"host": self.spec.name, "beats": [], "lease": self.lease_id,
                           "ttl_ms": self.ttl_ms, "renew": part,
                           "members": len(items)}  # fmt: skip
            env = Envelope(  # a schemas.agent.Lease payload
                kind=Kind.CONTROL,
                type=ControlType.LEASE.value,
                sender=self.spec.name,
                reply_to=self.reply_to,
                payload=payload,
            )
            await self.r.xadd(
                self.keys.control(), encode_fields(env), maxlen=CONTROL_MAXLEN, approximate=True
            )
            self.leases += 1
        self.xadd_max = max(self.xadd_max, time.perf_counter() - t0)

    async def run(self, interval: float, ramp: int, stop: asyncio.Event) -> None:
        next_at = time.monotonic() + random.uniform(0, interval)
        while not stop.is_set():
            await self.drain_replies()
            await self.announce_some(ramp)
            now = time.monotonic()
            if now >= next_at:
                self.late_max = max(self.late_max, now - next_at)
                await self.lease()
                next_at += interval
            wait = min(next_at - time.monotonic(), 0.1)
            if wait > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), wait)

    def result(self) -> dict[str, Any]:
        return {
            "host": self.spec.name, "agents": self.spec.count, "registered": len(self.epochs),
            "leases": self.leases, "reannounces": self.reannounces, "refused": self.refused,
            "joins": self.joins, "late_max_s": self.late_max, "xadd_max_s": self.xadd_max,
        }  # fmt: skip


async def lease_hosts_worker(
    ctx: WorkerContext,
    url: str,
    ns: str,
    specs: list[LeaseHostSpec],
    go: Any,
    stop: Any,
    heartbeat: float,
    ttl: float,
    ramp: int,
    max_beats: int,
    renew: bool = True,
) -> None:
    """Simulated hosts ``specs`` (module docstring): start on ``go``, run until ``stop``, then
    put one result per host."""
    from agent_sdk.connection import make_client
    from agent_sdk.settings import Settings

    settings = Settings(redis_url=url, namespace=ns, heartbeat_interval=heartbeat, ttl=ttl)
    keys = KeySpace(ns)
    clients = [make_client(settings, max_connections=4) for _ in specs]
    hosts = [
        _Host(r, keys, spec, round(heartbeat * 1000), round(ttl * 1000), max_beats, renew)
        for r, spec in zip(clients, specs, strict=True)
    ]
    for r in clients:
        await r.ping()
    ctx.ready()
    await asyncio.to_thread(go.wait)
    stopping = asyncio.Event()
    tasks = [asyncio.create_task(h.run(heartbeat, ramp, stopping)) for h in hosts]
    await asyncio.to_thread(stop.wait)
    stopping.set()
    await asyncio.gather(*tasks)
    for r in clients:
        await r.aclose()
    ctx.put([h.result() for h in hosts])

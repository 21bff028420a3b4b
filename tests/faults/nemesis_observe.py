"""The nemesis's eyes: atomic registry snapshots, the change feed, and the prober.

A snapshot is one ``MULTI``/``EXEC``: the Redis time, ``R:agents``, ``R:deadlines``, every index
set the fleet can produce, every record of the fleet's names, the registry's key names (to catch
records and indexes of names nobody uses) and the change feed's last revision, all at one instant.
The feed is then read up to that revision, so the replay can be compared with the snapshot.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis

from agent_sdk import Bus
from schemas.errors import AgentbusError
from schemas.events import RegistryEvent
from schemas.keys import KeySpace

__all__ = ["Prober", "Snapshot", "read_feed", "take_snapshot"]

_INDEX_KINDS = ("agent:", "role:", "cap:", "tag:")


@dataclass(frozen=True, slots=True)
class Snapshot:
    at: float  # Redis time of the EXEC, seconds
    agents: frozenset[str]
    deadlines: frozenset[str]
    leases: frozenset[str]  # the leases that have a deadline (R:leases)
    indexes: dict[str, frozenset[str]]  # index key -> members, for every known index key
    records: dict[str, dict[str, str]]  # name -> hash, names whose record exists
    keys: frozenset[str]  # every record and index key under the registry prefix
    head: str | None  # the change feed's last revision

    def holder(self, name: str) -> str | None:
        rec = self.records.get(name)
        return rec.get("instance_id") if rec else None

    def holders(self) -> dict[str, str]:
        return {n: r.get("instance_id", "") for n, r in self.records.items()}


def index_keys(keys: KeySpace, roles: set[str], caps: set[str], tags: set[str]) -> list[str]:
    return sorted(
        {keys.role_index(r) for r in roles}
        | {keys.capability_index(c) for c in caps}
        | {keys.role_capability_index(r, c) for r in roles for c in caps}
        | {keys.tag_index(t) for t in tags}
    )


async def take_snapshot(
    client: aioredis.Redis, keys: KeySpace, names: list[str], indexes: list[str]
) -> Snapshot:
    async with client.pipeline(transaction=True) as pipe:
        pipe.time()
        pipe.smembers(keys.agents())
        pipe.zrange(keys.deadlines(), 0, -1)
        pipe.zrange(keys.leases(), 0, -1)
        for k in indexes:
            pipe.smembers(k)
        for n in names:
            pipe.hgetall(keys.record(n))
        pipe.keys(keys.registry_prefix + "*")
        pipe.xrevrange(keys.events(), count=1)
        res: list[Any] = await pipe.execute()
    secs, micros = res[0]
    members = res[4 : 4 + len(indexes)]
    hashes = res[4 + len(indexes) : 4 + len(indexes) + len(names)]
    prefixes = tuple(keys.registry_prefix + k for k in _INDEX_KINDS)
    head = res[-1]
    return Snapshot(
        at=int(secs) + int(micros) / 1e6,
        agents=frozenset(res[1]),
        deadlines=frozenset(res[2]),
        leases=frozenset(res[3]),
        indexes={k: frozenset(m) for k, m in zip(indexes, members, strict=True)},
        records={n: h for n, h in zip(names, hashes, strict=True) if h},
        keys=frozenset(k for k in res[-2] if k.startswith(prefixes)),
        head=head[0][0] if head else None,
    )


async def read_feed(
    client: aioredis.Redis, keys: KeySpace, after: str | None, head: str
) -> list[RegistryEvent]:
    """Change-feed entries after revision ``after`` (None: from the start) up to ``head``."""
    out: list[RegistryEvent] = []
    low = "-" if after is None else f"({after}"
    while True:
        raw: Any = await client.xrange(keys.events(), low, head, count=1000)
        out += [RegistryEvent.from_fields(eid, fields) for eid, fields in raw]
        if len(raw) < 1000:
            return out
        low = f"({raw[-1][0]}"


class Prober:
    """Sends a ``job`` to every name every ``period`` seconds; remembers what was acknowledged.

    A probe counts as sent only when ``send`` returned (the bus acknowledged it); one that raised
    is counted by exception type and never expected to be handled."""

    def __init__(self, bus: Bus, names: list[str], period: float) -> None:
        self.bus = bus
        self.names = names
        self.period = period
        self.acked: dict[str, tuple[str, float]] = {}  # message id -> (name, acked at)
        self.refused = collections.Counter[str]()

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            tick = time.monotonic()
            await asyncio.gather(*(self._probe(n) for n in self.names))
            with contextlib.suppress(TimeoutError):  # pacing the probes
                await asyncio.wait_for(stop.wait(), self.period - (time.monotonic() - tick))

    async def _probe(self, name: str) -> None:
        try:
            msg_id = await self.bus.send(name, "job", {"probe": name})
        except AgentbusError as e:
            self.refused[type(e).__name__] += 1
        else:
            self.acked[msg_id] = (name, time.time())

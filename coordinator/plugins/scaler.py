"""Replicas between ``replicas.min`` and ``replicas.max``: when to add or remove one.

Every ``interval`` seconds the supervisor measures each scalable unit (``max > min``):

* **backlog**: entries waiting unread for it: the ``lag`` of the group ``agent`` (``XINFO
  GROUPS``: entries not yet delivered to any consumer) on every priority stream of its role queue
  and of its agents' inboxes;
* **load**: the ``load`` of its agents' registry records (handlers running, from heartbeats).

``ScalePolicy.decide`` turns the readings into +1, 0 or -1: **up** when the backlog stays at or
above ``up_backlog`` per replica for ``up_after`` readings in a row, or every agent is at its
``max_concurrency`` while something waits; **down** once it was idle (no backlog, no load) for
``cooldown`` seconds (and again only after another ``cooldown``). Never outside ``[min, max]``.
The supervisor adds a replica as a worker process of one agent (same version, the next free
replica number) and removes the newest such worker by draining it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis

from schemas.keys import AGENT_GROUP, KeySpace
from schemas.priority import PRIORITIES

__all__ = ["Reading", "ScalePolicy", "ScaleState", "read_unit"]


@dataclass(frozen=True, slots=True)
class Reading:
    backlog: int
    #: Handlers running across the unit's agents, and the most they may run.
    load: int
    capacity: int


@dataclass(slots=True)
class ScaleState:
    """What the policy remembers of one unit between readings."""

    high: int = 0
    idle_since: float | None = None
    last_change: float = 0.0


@dataclass(frozen=True, slots=True)
class ScalePolicy:
    interval: float = 1.0
    up_backlog: int = 20
    up_after: int = 2
    cooldown: float = 30.0
    states: dict[Any, ScaleState] = field(default_factory=dict)

    def decide(
        self, unit: Any, reading: Reading, replicas: int, low: int, high: int, now: float
    ) -> int:
        """+1 (add a replica), -1 (remove one) or 0, for ``unit`` running ``replicas``."""
        st = self.states.setdefault(unit, ScaleState(last_change=now))
        saturated = reading.capacity > 0 and reading.load >= reading.capacity
        pressed = reading.backlog >= self.up_backlog * max(replicas, 1) or (
            saturated and reading.backlog > 0
        )
        st.high = st.high + 1 if pressed else 0
        if reading.backlog == 0 and reading.load == 0:
            st.idle_since = now if st.idle_since is None else st.idle_since
        else:
            st.idle_since = None
        if st.high >= self.up_after and replicas < high:
            st.high = 0
            st.last_change = now
            return 1
        idle_for = now - st.idle_since if st.idle_since is not None else 0.0
        if replicas > low and idle_for >= self.cooldown and now - st.last_change >= self.cooldown:
            st.last_change = now
            return -1
        return 0

    def forget(self, unit: Any) -> None:
        self.states.pop(unit, None)


async def read_unit(
    client: aioredis.Redis, keys: KeySpace, role: str, agents: list[str], per_agent: int
) -> Reading:
    """Backlog and load of a unit's role queue, inboxes and agents (one pipeline)."""
    families = [keys.role_queue(role), *(keys.inbox(a) for a in agents)]
    streams = [keys.prioritized(f, p) for f in families for p in PRIORITIES]
    async with client.pipeline(transaction=False) as pipe:
        for stream in streams:
            pipe.xinfo_groups(stream)
        for agent in agents:
            pipe.hget(keys.record(agent), "load")
        replies: list[Any] = await pipe.execute(raise_on_error=False)
    backlog = 0
    for groups in replies[: len(streams)]:
        if isinstance(groups, Exception):  # no such stream (never written): nothing waits
            continue
        for group in groups:
            name = group.get("name")
            if name in (AGENT_GROUP, AGENT_GROUP.encode()):
                backlog += int(group.get("lag") or 0)
    load = sum(int(v) for v in replies[len(streams) :] if isinstance(v, bytes | str | int) and v)
    return Reading(backlog=backlog, load=load, capacity=per_agent * len(agents))

"""Reads about the whole fleet for the API and the metrics: usage of many agents in one round
trip, the control stream's lag, live coordinators, dead letters, and the statistics."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import orjson
import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from agent_sdk.connection import redis_errors
from agent_sdk.settings import Settings
from agent_sdk.usage import TypeUsage, parse_usage
from gateway.health import health
from gateway.lanes import LanePool, as_fields
from schemas.agent import AgentRecord, AgentStatus
from schemas.keys import COORDINATOR_GROUP

__all__ = ["ControlState", "FleetStats", "control_state", "fleet_stats", "usage_of"]


async def usage_of(
    lanes: LanePool, settings: Settings, names: Iterable[str]
) -> dict[str, list[TypeUsage]]:
    """Usage rows of each agent in ``names`` (one round trip on a lane: raw replies)."""
    chosen = list(dict.fromkeys(names))
    if not chosen:
        return {}
    keys = settings.keys  # a KeySpace is built per access: once, not once per name
    with redis_errors(settings, "reading usage stats"):
        results = await lanes.execute([("HGETALL", keys.stats(name)) for name in chosen])
    with redis_errors(settings, "reading usage stats"):
        return {
            name: parse_usage(as_fields(reply)) if reply else []
            for name, reply in zip(chosen, results, strict=True)
        }


@dataclass(frozen=True, slots=True)
class ControlState:
    """The control stream as the coordinators see it."""

    length: int
    lag: int | None  # entries the coordinators' group has not read yet (None: unknown)
    pending: int  # read but not yet acknowledged
    coordinators: dict[str, dict[str, Any]]  # live coordinators' health status, by id
    deadletters: int

    def as_dict(self) -> dict[str, Any]:
        return {
            "control_length": self.length,
            "control_lag": self.lag,
            "control_pending": self.pending,
            "coordinators": len(self.coordinators),
            "coordinator_ids": sorted(self.coordinators),
            "deadletters": self.deadletters,
        }


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


async def control_state(client: aioredis.Redis, settings: Settings) -> ControlState:
    keys = settings.keys
    with redis_errors(settings, "reading the control stream's state"):
        pipe = client.pipeline(transaction=False)
        pipe.xlen(keys.control())
        pipe.xlen(keys.deadletter())
        pipe.zrange(keys.coordinators(), 0, -1)
        length, deadletters, raw_ids = await pipe.execute()
        try:
            groups: Any = await client.xinfo_groups(keys.control())
        except ResponseError:  # no control stream yet
            groups = []
        ids = [_text(i) for i in raw_ids]
        values: list[Any] = (
            await client.mget([keys.coordinator_health(i) for i in ids]) if ids else []
        )
    lag: int | None = None
    pending = 0
    for group in groups:
        info = {_text(k): v for k, v in group.items()}
        if _text(info.get("name", "")) == COORDINATOR_GROUP:
            pending = int(info.get("pending") or 0)
            raw_lag = info.get("lag")
            lag = None if raw_lag is None else int(raw_lag)
    coordinators = {}
    for cid, value in zip(ids, values, strict=True):
        if value is not None:
            try:
                coordinators[cid] = orjson.loads(value)
            except orjson.JSONDecodeError:
                coordinators[cid] = {}
    return ControlState(int(length), lag, pending, coordinators, int(deadletters))


@dataclass(frozen=True, slots=True)
class FleetStats:
    agents: list[AgentRecord]
    usage: dict[str, list[TypeUsage]]
    control: ControlState

    def as_dict(self) -> dict[str, Any]:
        by_status = Counter(a.status.value for a in self.agents)
        by_role = Counter(a.role for a in self.agents)
        invocations = sum(u.invocations for rows in self.usage.values() for u in rows)
        errors = sum(u.errors for rows in self.usage.values() for u in rows)
        by_type: dict[str, list[int]] = {}
        for rows in self.usage.values():
            for u in rows:
                counts = by_type.setdefault(u.type, [0, 0])
                counts[0] += u.invocations
                counts[1] += u.errors
        scores = [health(a, self.usage.get(a.name, [])).score for a in self.agents]
        return {
            "agents": len(self.agents),
            "by_status": {s.value: by_status.get(s.value, 0) for s in AgentStatus},
            "by_role": dict(sorted(by_role.items())),
            "load": sum(a.load for a in self.agents),
            "capacity": sum(a.max_concurrency for a in self.agents),
            "invocations": invocations,
            "errors": errors,
            "error_rate": round(errors / invocations, 4) if invocations else 0.0,
            "by_type": {
                t: {"invocations": n, "errors": e, "error_rate": round(e / n, 4) if n else 0.0}
                for t, (n, e) in sorted(by_type.items())
            },
            "health_min": min(scores) if scores else None,
            **self.control.as_dict(),
        }


async def fleet_stats(
    client: aioredis.Redis, lanes: LanePool, settings: Settings, agents: list[AgentRecord]
) -> FleetStats:
    """Usage and control state for ``agents`` (every live agent, from discovery)."""
    usage = await usage_of(lanes, settings, (a.name for a in agents))
    return FleetStats(agents, usage, await control_state(client, settings))

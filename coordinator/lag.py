"""How far the coordinators are behind on the control stream (``agentbus coordinator check``).

A coordinator that is alive but buried under a backlog (a flood of control entries, a fleet
restarting at once) answers announces late: new agents get ``NoCoordinator`` although its
health key is fresh. ``control_lag`` measures the backlog: the entries of ``R:control`` not yet
delivered to the group ``coordinators`` and the age of the oldest of them.

* Redis 7: the group's ``lag`` (``XINFO GROUPS``), exact and O(1);
* Redis 6.2 (no ``lag``), or when Redis cannot tell it (``lag`` nil after ``XDEL``): the entries
  after the group's ``last-delivered-id`` are counted, at most ``limit + 1`` of them (``exact``
  is False when the count stopped there).

``check`` fails when ``entries`` exceeds ``control_lag_max`` (``AGENTBUS_CONTROL_LAG_MAX``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis

from coordinator.settings import CoordinatorSettings
from schemas.keys import COORDINATOR_GROUP

__all__ = ["ControlLag", "control_lag"]


@dataclass(frozen=True, slots=True)
class ControlLag:
    """The coordinators' backlog on the control stream."""

    #: entries written but not yet read by any coordinator
    entries: int
    #: entries read but not yet acknowledged (in hand, or left by a dead coordinator)
    pending: int
    #: entries in the stream (read or not; trimmed as they are processed)
    length: int
    #: seconds since the oldest unread entry was written (0 when none)
    oldest_age: float
    #: False when ``entries`` is a lower bound (Redis 6.2, counted up to the limit)
    exact: bool = True

    def describe(self) -> str:
        more = "" if self.exact else "more than "
        age = f", the oldest written {self.oldest_age:.1f}s ago" if self.entries else ""
        return (
            f"control stream lag {more}{self.entries} unread entries{age} "
            f"({self.pending} pending, {self.length} in the stream)"
        )


def _text(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def _group(groups: Any) -> dict[str, Any] | None:
    for g in groups or []:
        info = {_text(k): v for k, v in g.items()}
        if _text(info.get("name")) == COORDINATOR_GROUP:
            return info
    return None


async def control_lag(client: aioredis.Redis, settings: CoordinatorSettings) -> ControlLag:
    """The backlog of the control stream (a few commands; see the module docstring)."""
    stream = settings.keys.control()
    limit = settings.control_lag_max
    length = int(await client.xlen(stream))
    group = None
    lag: Any
    if length:
        group = _group(await client.xinfo_groups(stream))
    if group is None:  # nobody ever read it: all of it is unread
        start, pending, lag = "-", 0, length
    else:
        start = "(" + _text(group.get("last-delivered-id", "0-0"))
        pending = int(group.get("pending") or 0)
        lag = group.get("lag")
    exact = True
    if lag is None:  # Redis 6.2, or an XDEL made it unknown: count, up to limit + 1
        after = await client.xrange(stream, start, "+", count=limit + 1) or []
        lag, exact = len(after), len(after) <= limit
    first = (await client.xrange(stream, start, "+", count=1) or []) if int(lag) else []
    age = 0.0
    if first:
        seconds, micros = await client.time()
        now_ms = seconds * 1000 + micros // 1000
        age = max(0.0, (now_ms - int(_text(first[0][0]).split("-", 1)[0])) / 1000)
    return ControlLag(int(lag), pending, length, age, exact)

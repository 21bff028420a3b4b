"""The sweeper: expires agents that stopped heartbeating, fairly (docs/PROTOCOL.md).

Every ``sweep_interval`` one Lua script (``lua/sweep.lua``) computes the cutoff on the Redis clock
and expires, atomically, every agent whose deadline is older:

* cutoff = min(Redis TIME, time of the oldest control entry not processed yet) — a heartbeat
  still waiting in the stream counts, so a slow, restarted or absent coordinator never expires
  an agent it simply has not heard yet;
* after a stall (nobody swept for longer than ``stall_threshold``: Redis blocked, or every
  coordinator down) the cutoff stays at the stall's start for one TTL (``R:clock``).

Several coordinators may sweep at once: the script re-checks each deadline, so an agent is
expired once.
"""

from __future__ import annotations

import asyncio
import logging

from coordinator.loops import periodic
from coordinator.registry import Registry, SweepResult
from coordinator.settings import CoordinatorSettings
from coordinator.stats import CoordinatorStats

__all__ = ["Sweeper"]

log = logging.getLogger("agentbus.coordinator.liveness")

#: Most agents one script call expires (the sweep repeats at once while it hits this).
SWEEP_LIMIT = 1000


#: Sweeps between two checks of the registry's layout (``Registry.reindex``).
_LAYOUT_EVERY = 50


class Sweeper:
    """Runs the sweep script periodically and counts expiries."""

    def __init__(
        self, registry: Registry, settings: CoordinatorSettings, stats: CoordinatorStats
    ) -> None:
        self._registry = registry
        self.settings = settings
        self.stats = stats
        self.last: SweepResult | None = None
        self._sweeps = 0

    async def sweep_once(self) -> int:
        """Sweep until nothing more is due now; return how many agents expired. The first
        sweep, then one in ``_LAYOUT_EVERY``, also makes sure the registry's role x capability
        sets exist (built once for records written before them, or after Redis lost its
        data)."""
        if self._sweeps % _LAYOUT_EVERY == 0:
            built = await self._registry.reindex()
            if built:
                log.info("built the role x capability sets of the registry (%d steps)", built)
        self._sweeps += 1
        total = 0
        while True:
            result = await self._registry.sweep(SWEEP_LIMIT)
            self.last = result
            self.stats.sweeps += 1
            if result.stall_began:
                log.warning(
                    "no sweep for longer than %.2fs (Redis blocked or no coordinator ran): "
                    "holding expiries back for one TTL",
                    self.settings.stall_threshold,
                )
            total += result.expired
            self.stats.expiries += result.expired
            if result.expired < SWEEP_LIMIT:
                break
        if total:
            log.info("expired %d agent(s) that stopped heartbeating", total)
        return total

    async def run(self, stopping: asyncio.Event) -> None:
        await periodic("sweeping", self.settings.sweep_interval, self.sweep_once, stopping, log)

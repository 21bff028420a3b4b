"""Taking over entries left pending: by dead coordinators, by our own failed batches.

Every ``claim_idle / 2`` seconds each coordinator looks at the group's pending entries per
consumer (``XPENDING``) and claims (``XCLAIM``) and applies those that are stranded:

* its own entries pending longer than ``claim_idle`` that it does not hold in hand (a batch
  whose apply failed, a read whose answer was lost);
* entries of a coordinator whose health key is gone (dead: the key expires 3 x
  ``health_interval`` after its last refresh) pending longer than ``claim_idle``;
* entries of a coordinator that is alive (health key present) only when pending longer than
  ``claim_live_idle``: its control loop is stuck, not slow. A batch that is merely slow (a
  loaded machine, a backlog) is never taken from a live coordinator, which would apply it twice.

Applying twice is harmless when it happens (heartbeats only move deadlines forward, announces
and leaves are idempotent; the agent may see a second reply). Consumers of coordinators whose
health key is gone and that hold nothing are deleted from the group.

Each round also trims the stream (``coordinator/lua/trim.lua``): entries every coordinator has
processed go at once (so the stream holds the backlog, not history: its memory follows the lag,
not the fleet's age), and a backlog nobody reads is capped at ``control_maxlen``
(approximately).
"""

from __future__ import annotations

import logging
from typing import Any

import redis.asyncio as aioredis

from coordinator.control import ControlConsumer, Entry
from coordinator.settings import CoordinatorSettings
from coordinator.stats import CoordinatorStats
from schemas.keys import COORDINATOR_GROUP

__all__ = ["Recovery"]

log = logging.getLogger("agentbus.coordinator.recovery")

#: Dead consumers are pruned every this many claim rounds.
PRUNE_EVERY = 10


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class Recovery:
    """Claims stranded control entries and prunes dead consumers."""

    def __init__(
        self,
        client: aioredis.Redis,
        consumer: ControlConsumer,
        settings: CoordinatorSettings,
        stats: CoordinatorStats,
    ) -> None:
        self._client = client
        self._consumer = consumer
        self.settings = settings
        self.stats = stats
        self._control = settings.keys.control()
        self._rounds = 0

    async def step(self) -> None:
        """One round: claim, trim; every ``PRUNE_EVERY`` rounds prune dead consumers."""
        await self.claim_once()
        await self._consumer.registry.trim_control()
        self._rounds += 1
        if self._rounds % PRUNE_EVERY == 0:
            await self.prune_consumers()

    async def claim_once(self) -> int:
        """Claim and apply stranded entries (see the module docstring); return how many."""
        summary: Any = await self._client.xpending(self._control, COORDINATOR_GROUP)
        if not summary or not int(summary["pending"]):
            return 0
        total = 0
        for c in summary["consumers"] or []:
            name = _text(c["name"])
            min_idle = await self._min_idle(name)
            total += await self._claim_from(name, min_idle)
        return total

    async def _min_idle(self, consumer: str) -> int:
        """How long an entry of ``consumer`` must be pending before we take it (ms)."""
        s = self.settings
        if consumer == s.coordinator_id:
            return s.claim_idle_ms  # and never what is in hand: see _claim_from
        if await self._client.exists(s.keys.coordinator_health(consumer)):
            return s.claim_live_idle_ms  # alive: only a stuck batch
        return s.claim_idle_ms

    async def _claim_from(self, consumer: str, min_idle: int) -> int:
        s = self.settings
        start = "-"
        total = 0
        while True:
            rows: Any = await self._client.xpending_range(
                self._control,
                COORDINATOR_GROUP,
                min=start,
                max="+",
                count=s.batch_size,
                consumername=consumer,
                idle=min_idle,
            )
            if not rows:
                return total
            start = "(" + _text(rows[-1]["message_id"])
            in_hand = self._consumer.in_hand
            ids: list[Any] = [i for i in (_text(r["message_id"]) for r in rows) if i not in in_hand]
            if ids:
                # XCLAIM re-checks the idle time: an entry acked or claimed meanwhile is skipped;
                # one trimmed away while pending is dropped from the pending list (Redis >= 7)
                claimed: Any = await self._client.xclaim(
                    self._control, COORDINATOR_GROUP, s.coordinator_id, min_idle, ids
                )
                entries: list[Entry] = [e for e in claimed if e is not None]
                gone = len(ids) - len(entries)
                if gone and consumer != s.coordinator_id:
                    log.debug("%d entries of %s were trimmed while pending", gone, consumer)
                if entries:
                    total += len(entries)
                    self.stats.claimed += len(entries)
                    log.info(
                        "claimed %d control entries left pending by %s", len(entries), consumer
                    )
                    await self._consumer.process(entries)
            if len(rows) < s.batch_size:
                return total

    async def prune_consumers(self) -> int:
        """Delete group consumers of coordinators that are gone and hold no entries."""
        keys = self.settings.keys
        consumers: Any = await self._client.xinfo_consumers(self._control, COORDINATOR_GROUP)
        removed = 0
        for c in consumers:
            name = _text(c["name"])
            if name == self.settings.coordinator_id or int(c["pending"]):
                continue
            if int(c["idle"]) < 2 * self.settings.claim_idle_ms:
                continue
            if await self._client.exists(keys.coordinator_health(name)):
                continue
            await self._client.xgroup_delconsumer(self._control, COORDINATOR_GROUP, name)
            log.info("removed consumer %s of a coordinator that is gone", name)
            removed += 1
        return removed

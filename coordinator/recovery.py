"""Taking over from dead coordinators.

A coordinator that dies mid-batch leaves entries pending in the group ``coordinators``. Every
``claim_idle / 2`` seconds each coordinator ``XAUTOCLAIM``s entries idle longer than
``claim_idle`` and applies them (applying twice is harmless: heartbeats only move deadlines
forward, announces and leaves are idempotent). Consumers of coordinators whose health key is gone
and that hold nothing are deleted from the group, and the stream is trimmed to
``control_maxlen`` (approximately).
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
        """One round: claim; every ``PRUNE_EVERY`` rounds prune dead consumers and trim."""
        await self.claim_once()
        self._rounds += 1
        if self._rounds % PRUNE_EVERY == 0:
            await self.prune_consumers()
            # agents cap the stream as they write; this enforces the coordinator's own cap
            await self._client.xtrim(
                self._control, maxlen=self.settings.control_maxlen, approximate=True
            )

    async def claim_once(self) -> int:
        """Take over and apply entries pending longer than ``claim_idle``; return how many."""
        s = self.settings
        start = "0-0"
        total = 0
        while True:
            res: Any = await self._client.xautoclaim(
                self._control,
                COORDINATOR_GROUP,
                s.coordinator_id,
                min_idle_time=s.claim_idle_ms,
                start_id=start,
                count=s.batch_size,
            )
            start = _text(res[0])
            entries: list[Entry] = list(res[1])
            deleted = [_text(x) for x in res[2]] if len(res) > 2 else []
            if deleted:  # trimmed away while pending: nothing left to apply
                await self._client.xack(self._control, COORDINATOR_GROUP, *deleted)
            if entries:
                total += len(entries)
                self.stats.claimed += len(entries)
                log.info("claimed %d control entries left pending by others", len(entries))
                await self._consumer.process(entries)
            if start == "0-0" or not entries:
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

"""Coordinator health: a TTL'd status key per coordinator and a check anyone can run.

Every ``health_interval`` a coordinator ``SET``s ``R:coordinator:<id>`` (JSON status) with
``PX`` 3 x interval and records its tick in the ``R:coordinators`` zset. ``check()`` (used by
``agentbus coordinator check``) answers whether any coordinator, or a given one, is alive.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Callable, Mapping
from typing import Any

import orjson
import redis.asyncio as aioredis

from agent_sdk import telemetry
from agent_sdk.connection import make_client
from agent_sdk.settings import Settings
from coordinator.loops import RETRYABLE, periodic
from coordinator.settings import CoordinatorSettings

__all__ = ["HealthReporter", "check", "live_coordinators"]

log = logging.getLogger("agentbus.coordinator.health")

#: ``R:coordinators`` entries older than this are pruned (ms).
_FORGET_MS = 24 * 3600 * 1000


class HealthReporter:
    """Writes this coordinator's health key until stopped; deletes it on clean stop."""

    def __init__(
        self,
        client: aioredis.Redis,
        settings: CoordinatorSettings,
        status: Callable[[], Mapping[str, object]],
    ) -> None:
        self._client = client
        self.settings = settings
        self._status = status
        self._started = time.time()

    async def beat(self) -> None:
        s = self.settings
        keys = s.keys
        now_ms = int(time.time() * 1000)
        status = {
            "id": s.coordinator_id,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "started_at": self._started,
            "at": now_ms,
            **self._status(),
        }
        ttl_ms = max(1, round(3 * s.health_interval * 1000))
        pipe = self._client.pipeline(transaction=False)
        pipe.set(keys.coordinator_health(s.coordinator_id), orjson.dumps(status), px=ttl_ms)
        pipe.zadd(keys.coordinators(), {s.coordinator_id: now_ms})
        pipe.zremrangebyscore(keys.coordinators(), "-inf", now_ms - _FORGET_MS)
        pipe.scard(keys.agents())
        *_, agents = await pipe.execute()
        telemetry.set_registry_size(s.namespace, int(agents))  # the registry size gauge

    async def run(self, stopping: asyncio.Event) -> None:
        await periodic(
            "writing the health key", self.settings.health_interval, self.beat, stopping, log
        )

    async def clear(self) -> None:
        """Delete the health key (clean stop): ``check`` turns false at once."""
        keys = self.settings.keys
        await self._client.delete(keys.coordinator_health(self.settings.coordinator_id))


async def live_coordinators(settings: Settings) -> dict[str, dict[str, object]]:
    """Status of every coordinator whose health key is present, by id."""
    keys = settings.keys
    client = make_client(settings)
    try:
        raw: Any = await client.zrange(keys.coordinators(), 0, -1)
        ids = [bytes(x).decode() for x in raw]
        if not ids:
            return {}
        values = await client.mget([keys.coordinator_health(i) for i in ids])
    finally:
        await client.aclose()
    return {i: orjson.loads(v) for i, v in zip(ids, values, strict=True) if v is not None}


async def check(settings: Settings, coordinator_id: str | None = None) -> bool:
    """Whether a coordinator (any, or ``coordinator_id``) is alive; ``False`` if Redis is down.

    A probe: it tries Redis once more at most instead of the usual reconnect attempts.
    """
    settings = settings.model_copy(update={"retry_attempts": min(settings.retry_attempts, 1)})
    try:
        if coordinator_id is not None:
            client = make_client(settings)
            try:
                key = settings.keys.coordinator_health(coordinator_id)
                return bool(await client.exists(key))
            finally:
                await client.aclose()
        return bool(await live_coordinators(settings))
    except RETRYABLE as e:
        log.warning("cannot check coordinator health at %s: %s", settings.display_url, e)
        return False

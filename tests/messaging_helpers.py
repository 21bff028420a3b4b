"""Helpers for the data-plane tests: registry records written by hand, and a messaging node.

Until an agent is built on ``Agent`` these tests register an agent the way the coordinator does
(record hash + role index + agents set) and run ``Messaging`` with a ``ReplyRouter``.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

import redis.asyncio as aioredis

from agent_sdk.connection import make_client
from agent_sdk.messaging import Messaging
from agent_sdk.replies import ReplyRouter
from agent_sdk.settings import Settings
from schemas.agent import AgentRecord


def record(name: str, role: str, instance_id: str, max_concurrency: int = 1) -> AgentRecord:
    now = datetime.now(UTC)
    return AgentRecord(
        name=name, role=role, instance_id=instance_id, registered_at=now, last_seen=now,
        heartbeat_ms=100, ttl_ms=500, max_concurrency=max_concurrency,
    )  # fmt: skip


async def register(
    r: aioredis.Redis, settings: Settings, name: str, role: str, instance_id: str
) -> None:
    keys = settings.keys
    await r.hset(keys.record(name), mapping=record(name, role, instance_id).to_hash())  # type: ignore[misc]
    await r.sadd(keys.role_index(role), name)  # type: ignore[misc]
    await r.sadd(keys.agents(), name)  # type: ignore[misc]


async def unregister(r: aioredis.Redis, settings: Settings, name: str, role: str) -> None:
    keys = settings.keys
    await r.delete(keys.record(name))
    await r.srem(keys.role_index(role), name)  # type: ignore[misc]
    await r.srem(keys.agents(), name)  # type: ignore[misc]


@asynccontextmanager
async def node(
    settings: Settings,
    name: str,
    role: str = "worker",
    *,
    r: aioredis.Redis | None = None,
    instance_id: str | None = None,
    max_concurrency: int = 1,
    start: bool = True,
    **kwargs: Any,
) -> AsyncIterator[Messaging]:
    """A registered messaging node (registry written by hand when ``r`` is given)."""
    instance_id = instance_id or uuid.uuid4().hex[:12]
    client = make_client(settings)
    router = ReplyRouter(settings, settings.keys.replies(name, instance_id))
    await router.start()
    if r is not None:
        await register(r, settings, name, role, instance_id)
    m = Messaging(
        client, settings, name=name, instance_id=instance_id, role=role, replies=router,
        max_concurrency=max_concurrency, **kwargs,
    )  # fmt: skip
    try:
        if start:
            await m.start()
        yield m
    finally:
        await m.stop(grace=1.0)
        await router.stop()
        await client.aclose()

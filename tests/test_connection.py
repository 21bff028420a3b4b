"""The Redis client factory: bounded pool that queues callers instead of failing."""

from __future__ import annotations

import asyncio

from agent_sdk.connection import make_client
from agent_sdk.settings import Settings


async def test_more_concurrent_calls_than_connections_queue_instead_of_failing(
    settings: Settings,
) -> None:
    small = settings.model_copy(update={"max_connections": 4})
    client = make_client(small)
    try:
        # 40 blocking calls at once on a 4-connection pool: all complete, none raise
        results = await asyncio.gather(
            *(client.blpop(["nothing"], timeout=0.01) for _ in range(40))
        )
        assert results == [None] * 40
        clients = await client.client_list()
        mine = [c for c in clients if c["name"] == f"agentbus:{small.namespace}"]
        assert 1 <= len(mine) <= 4
    finally:
        await client.aclose()

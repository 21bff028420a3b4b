"""A few raw Redis lanes shared by the gateway's concurrent requests, for wide reads.

A ``Lane`` (``agent_sdk.lane``) packs commands with hiredis, writes them in one write and reads
the raw replies straight off its connection: for the 1,000 ``HGETALL`` of an agents page that
is a few milliseconds less than a redis-py pipeline, which builds a command object, applies a
response callback and checks every reply in Python. A lane runs one round trip at a time, so
the gateway keeps a small pool: a request takes an idle lane or opens one, and gives it back;
beyond ``size`` lanes at once a request opens a lane of its own and closes it afterwards.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import redis.asyncio as aioredis

from agent_sdk.cluster_lane import AnyLane, open_lane

__all__ = ["LanePool", "as_fields"]


class LanePool:
    """Up to ``size`` idle lanes on ``client`` kept for the next request."""

    def __init__(self, client: aioredis.Redis, size: int = 4) -> None:
        self.client = client
        self.size = size
        self._idle: list[AnyLane] = []

    @asynccontextmanager
    async def lane(self) -> AsyncIterator[AnyLane]:
        lane = self._idle.pop() if self._idle else open_lane(self.client)
        keep = False
        try:
            yield lane
            keep = True
        finally:
            if keep and len(self._idle) < self.size:
                self._idle.append(lane)
            else:  # failed (its connection was dropped) or one too many
                await lane.aclose()

    async def execute(self, commands: Sequence[Sequence[Any]]) -> list[Any]:
        """``commands`` in one round trip; their raw replies (error replies as values)."""
        async with self.lane() as lane:
            return await lane.execute(commands)

    async def aclose(self) -> None:
        idle, self._idle = self._idle, []
        for lane in idle:
            await lane.aclose()


def as_fields(reply: Any) -> dict[Any, Any]:
    """A raw ``HGETALL`` reply as a dict: RESP3 sends a map, RESP2 a flat array."""
    if isinstance(reply, dict):
        return reply
    if isinstance(reply, Exception):
        raise reply
    return dict(zip(reply[::2], reply[1::2], strict=True))

"""Mixed load for scenario 7 and ``bench/soak.py``: send, role queue, request, broadcast, topics.

``mixed_load`` drives ``total`` messages from ``concurrency`` coroutines over one ``Bus`` and
returns what the bus acknowledged, so the caller can check the agents' ledgers against it.
The mix (per 100 messages): 40 direct sends, 30 role-queue sends, 8 requests to an agent, 7
requests to a role, 2 live broadcasts to a role, 1 durable broadcast to a role, 12 topic messages.
"""

from __future__ import annotations

import asyncio
import collections
import random
from dataclasses import dataclass, field
from typing import Any

from schemas.errors import AgentbusError

MIX = (
    ("send", 40),
    ("role", 30),
    ("request", 8),
    ("request_role", 7),
    ("broadcast", 2),
    ("broadcast_durable", 1),
    ("topic", 12),
)


@dataclass
class LoadResult:
    durable_ids: set[str] = field(default_factory=set)  # send + role: one handler run each
    durable_broadcast_copies: int = 0
    live_broadcasts: int = 0
    live_broadcast_receivers: int = 0  # as counted by PUBLISH
    topics: int = 0
    topic_receivers: int = 0  # as counted by PUBLISH
    requests: int = 0
    answered: int = 0
    failed: collections.Counter[str] = field(default_factory=collections.Counter)
    by_kind: collections.Counter[str] = field(default_factory=collections.Counter)

    def figures(self) -> dict[str, Any]:
        return {
            "sent_by_kind": dict(self.by_kind),
            "durable_sent": len(self.durable_ids),
            "durable_broadcast_copies": self.durable_broadcast_copies,
            "requests": self.requests,
            "requests_answered": self.answered,
            "requests_failed_by_reason": dict(self.failed),
            "topic_deliveries_published": self.topic_receivers,
            "live_broadcast_deliveries_published": self.live_broadcast_receivers,
        }


def plan(total: int, seed: int = 5) -> list[str]:
    kinds = [k for k, w in MIX for _ in range(w)]
    rng = random.Random(seed)
    return [kinds[rng.randrange(len(kinds))] for _ in range(total)]


async def mixed_load(
    bus: Any,
    total: int,
    roles: dict[str, list[str]],
    *,
    topic: str = "news.load",
    concurrency: int = 16,
    request_timeout: float = 30.0,
    seed: int = 5,
) -> LoadResult:
    result = LoadResult()
    todo = plan(total, seed)
    rng = random.Random(seed + 1)
    names = [n for members in roles.values() for n in members]
    role_names = list(roles)
    queue: asyncio.Queue[str] = asyncio.Queue()
    for k in todo:
        queue.put_nowait(k)

    async def one(kind: str) -> None:
        role = rng.choice(role_names)
        if kind == "send":
            result.durable_ids.add(await bus.send(rng.choice(names), "job", {"k": kind}))
        elif kind == "role":
            result.durable_ids.add(await bus.send(role=role, type="job", payload={"k": kind}))
        elif kind in ("request", "request_role"):
            result.requests += 1
            try:
                if kind == "request":
                    target = rng.choice(names)
                    reply = await bus.request(target, "ask", {}, timeout=request_timeout)
                    assert reply == target, (reply, target)
                else:
                    reply = await bus.request(role=role, type="ask", payload={},
                                              timeout=request_timeout)  # fmt: skip
                    assert reply in roles[role], (reply, role)
                result.answered += 1
            except AgentbusError as e:
                result.failed[f"{type(e).__name__}: {e.code}"] += 1
        elif kind == "broadcast":
            result.live_broadcasts += 1
            n = await bus.broadcast("bcast", {}, role=role)
            result.live_broadcast_receivers += n  # never `x += await ...`: it loses updates
        elif kind == "broadcast_durable":
            n = await bus.broadcast("bcast", {}, role=role, durable=True)
            result.durable_broadcast_copies += n
        else:
            result.topics += 1
            n = await bus.publish(topic, {})
            result.topic_receivers += n
        result.by_kind[kind] += 1

    async def worker() -> None:
        while not queue.empty():
            await one(queue.get_nowait())

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return result

"""Simulated agents for coordinator tests: they write control envelopes straight to the stream.

No SDK involved: each ``FakeAgent`` speaks the wire protocol (docs/PROTOCOL.md) with raw Redis
commands, so coordinator tests do not depend on ``agent_sdk``'s agent implementation.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import orjson
import redis.asyncio as aioredis

from agent_sdk.tasks import cancel_and_wait
from schemas.keys import KeySpace

__all__ = ["FakeAgent", "xadd_control"]


async def xadd_control(r: aioredis.Redis, keys: KeySpace, fields: dict[str, Any]) -> str:
    """XADD raw fields to the control stream; returns the entry id."""
    entry_id: Any = await r.xadd(keys.control(), fields)
    return entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)


class FakeAgent:
    """One agent instance speaking the control protocol by hand."""

    def __init__(
        self,
        r: aioredis.Redis,
        keys: KeySpace,
        name: str,
        *,
        role: str = "worker",
        instance_id: str | None = None,
        heartbeat_ms: int = 100,
        ttl_ms: int = 500,
        lease: str | None = None,
        **card: Any,
    ) -> None:
        self.r = r
        self.keys = keys
        self.name = name
        self.instance_id = instance_id or uuid.uuid4().hex[:16]
        self.heartbeat_ms = heartbeat_ms
        self.ttl_ms = ttl_ms
        #: the host lease it announces under (renewed by name: protocol 1.2)
        self.lease = lease
        self.card: dict[str, Any] = {"name": name, "role": role, **card}
        self.heartbeats_sent = 0
        self._task: asyncio.Task[None] | None = None

    @property
    def reply_key(self) -> str:
        return self.keys.replies(self.name, self.instance_id)

    def announce_payload(self, **overrides: Any) -> dict[str, Any]:
        payload = {
            "card": {**self.card, **overrides},
            "instance_id": self.instance_id,
            "heartbeat_ms": self.heartbeat_ms,
            "ttl_ms": self.ttl_ms,
        }
        if self.lease is not None:
            payload["lease"] = self.lease
        return payload

    async def send(self, type: str, payload: Any, **extra: Any) -> str:
        fields = {
            "v": "1",
            "kind": "control",
            "type": type,
            "sender": self.name,
            "payload": orjson.dumps(payload).decode(),
            **extra,
        }
        return await xadd_control(self.r, self.keys, fields)

    async def announce(self, payload: Any = None, **card: Any) -> str:
        """Send an announce; returns its id (the reply's correlation id)."""
        msg_id = uuid.uuid4().hex
        body = payload if payload is not None else self.announce_payload(**card)
        await self.send("announce", body, id=msg_id, reply_to=self.reply_key)
        return msg_id

    async def next_reply(self, timeout: float = 10.0) -> dict[str, Any]:
        """The next envelope pushed to this instance's reply list (JSON decoded)."""
        popped: Any = await self.r.blpop([self.reply_key], timeout=timeout)
        assert popped is not None, f"no reply for {self.name} within {timeout}s"
        result: dict[str, Any] = orjson.loads(popped[1])
        return result

    async def register(self, timeout: float = 10.0, **card: Any) -> dict[str, Any]:
        """Announce and return the announce_result reply (asserting it correlates)."""
        msg_id = await self.announce(**card)
        reply = await self.next_reply(timeout)
        assert reply["type"] == "announce_result", reply
        assert reply["correlation_id"] == msg_id, reply
        return reply

    async def heartbeat(self, load: int = 0, status: str = "ready") -> str:
        self.heartbeats_sent += 1
        return await self.send(
            "heartbeat", {"instance_id": self.instance_id, "load": load, "status": status}
        )

    async def leave(self, reply: bool = False) -> str:
        extra = {"reply_to": self.reply_key} if reply else {}
        return await self.send("leave", {"instance_id": self.instance_id}, **extra)

    def start_heartbeats(self) -> None:
        """Heartbeat every ``heartbeat_ms`` in the background (the agent's own cadence)."""
        if self._task is None:
            self._task = asyncio.create_task(self._beat())

    async def _beat(self) -> None:
        while True:
            await self.heartbeat()
            await asyncio.sleep(self.heartbeat_ms / 1000)

    async def stop_heartbeats(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            await cancel_and_wait(task)  # a plain cancel can be lost inside redis-py

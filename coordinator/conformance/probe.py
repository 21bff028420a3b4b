"""The conformance check's own end of the wire: raw envelopes out, raw replies and traces in.

The probe speaks the protocol with plain Redis commands (``XADD``, ``BRPOP``, ``XPENDING``,
``XREAD``, …), as a client in any language would, so what it observes is what the agent wrote,
not what the Python SDK would make of it. It answers to the name ``conformance-<id>`` and reads
its own reply list, ``<ns>:agent:{conformance-<id>}:replies:<id>``, deleted on ``close`` with
the dead letters its own messages caused.

When an expected reply does not come, ``diagnose`` says where the message got stuck: never read,
read but not acknowledged, acknowledged without a reply, or dead-lettered (and why).
"""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from agent_sdk.connection import is_cluster
from agent_sdk.messaging.deadletter import DeadLetter
from agent_sdk.settings import Settings
from schemas.envelope import Envelope, Kind, decode_json, encode_fields, encode_json, new_id, utcnow
from schemas.errors import ProtocolError
from schemas.events import RegistryEvent
from schemas.keys import AGENT_GROUP

__all__ = ["Probe", "entry_key"]


def entry_key(entry_id: str) -> tuple[int, int]:
    """A stream entry id (``<ms>-<seq>``) as a tuple that sorts like Redis sorts ids."""
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


class Probe:
    """A client that sends requests by hand and keeps every reply it receives by correlation id.

    ``client`` must decode responses (``decode_responses=True``).
    """

    def __init__(self, client: aioredis.Redis, settings: Settings) -> None:
        self.client = client
        self.settings = settings
        self.keys = settings.keys
        self.run_id = new_id()
        self.sender = f"conformance-{self.run_id}"
        self.reply_key = self.keys.replies(self.sender, self.run_id)
        self._replies: dict[str, Envelope] = {}
        #: Reply-list entries that were not envelopes (why each failed to decode).
        self.undecodable: list[str] = []

    async def close(self, since_ms: int | None = None) -> None:
        """Delete the reply list, and the dead letters of the probe's own messages written since
        ``since_ms`` (the expired request and the send of an unknown type)."""
        await self.client.delete(self.reply_key)
        if since_ms is not None:
            mine = await self.dead_letters_from(self.sender, since_ms)
            if mine:
                await self.client.xdel(self.keys.deadletter(), *(d.id for d in mine))

    async def now_ms(self) -> int:
        """The Redis clock, in ms (dead letters and events are stamped by it)."""
        seconds, micros = await self.client.time()
        return int(seconds) * 1000 + int(micros) // 1000

    # -- sending -----------------------------------------------------------------------------
    def envelope(
        self,
        kind: Kind,
        type: str,
        payload: Any,
        *,
        target: str,
        expires_in: float | None = None,
        headers: dict[str, str] | None = None,
    ) -> Envelope:
        """An envelope from the probe; a request gets the probe's reply list and a deadline
        ``expires_in`` seconds from now (negative: already passed)."""
        request = kind is Kind.REQUEST
        return Envelope(
            kind=kind,
            type=type,
            sender=self.sender,
            target=target,
            reply_to=self.reply_key if request else None,
            deadline=utcnow() + timedelta(seconds=expires_in) if expires_in is not None else None,
            headers=headers or {},
            payload=payload,
        )

    async def xadd(self, stream: str, env: Envelope, maxlen: int) -> str:
        """Append ``env`` to ``stream`` as flat fields and ring its doorbell; the entry id."""
        fields: Any = encode_fields(env)
        entry_id: Any = await self.client.xadd(stream, fields, maxlen=maxlen, approximate=True)
        if is_cluster(self.client):  # a doorbell is a sharded channel there
            await self.client.spublish(self.keys.bell(stream), entry_id)
        else:
            await self.client.publish(self.keys.bell(stream), entry_id)
        return str(entry_id)

    async def publish(self, channel: str, env: Envelope) -> int:
        """Publish ``env`` as JSON; how many subscribers received it."""
        receivers: int = await self.client.publish(channel, encode_json(env))
        return receivers

    # -- replies -----------------------------------------------------------------------------
    async def reply(self, correlation_id: str, timeout: float) -> Envelope | None:
        """The reply to ``correlation_id``, waiting up to ``timeout`` seconds; ``None`` if none.

        Replies to other requests that arrive meanwhile are kept for their own callers."""
        give_up = time.monotonic() + timeout
        while correlation_id not in self._replies:
            remaining = give_up - time.monotonic()
            if remaining <= 0:
                return None
            await self._receive(min(remaining, 0.25))
        return self._replies.pop(correlation_id)

    async def _receive(self, block: float) -> None:
        popped: Any = await self.client.brpop([self.reply_key], timeout=max(block, 0.01))
        if popped is None:
            return
        try:
            env = decode_json(popped[1])
        except ProtocolError as e:
            self.undecodable.append(f"{e} in {popped[1][:200]!r}")
            return
        self._replies[env.correlation_id or ""] = env

    def strays(self) -> list[str]:
        """Correlation ids of replies received that no caller took (yet)."""
        return sorted(self._replies)

    # -- where did a message go ----------------------------------------------------------------
    async def pending(self, stream: str, entry_id: str) -> tuple[str, int] | None:
        """``(consumer, times delivered)`` if the entry is pending in the group ``agent``."""
        rows: Any = await self.client.xpending_range(stream, AGENT_GROUP, entry_id, entry_id, 1)
        if not rows:
            return None
        return str(rows[0]["consumer"]), int(rows[0]["times_delivered"])

    async def delivered(self, stream: str, entry_id: str) -> bool:
        """Whether the group ``agent`` has read past ``entry_id`` (delivered it once)."""
        groups: Any = await self.client.xinfo_groups(stream)
        for group in groups:
            if group["name"] == AGENT_GROUP:
                return entry_key(str(group["last-delivered-id"])) >= entry_key(entry_id)
        return False

    async def has_group(self, stream: str) -> bool:
        try:
            groups: Any = await self.client.xinfo_groups(stream)
        except ResponseError:  # no such stream
            return False
        return any(g["name"] == AGENT_GROUP for g in groups)

    async def dead_letter(self, message_id: str, since_ms: int) -> DeadLetter | None:
        """The dead letter of message ``message_id`` written since ``since_ms``, if any."""
        entries: Any = await self.client.xrange(
            self.keys.deadletter(), min=f"{since_ms}-0", count=10_000
        )
        for entry_id, fields in entries:
            letter = DeadLetter.from_entry(entry_id, fields)
            if letter.original.get("id") == message_id:
                return letter
        return None

    async def dead_letters_from(self, sender: str, since_ms: int) -> list[DeadLetter]:
        """Dead letters written since ``since_ms`` of entries whose ``sender`` is ``sender``."""
        entries: Any = await self.client.xrange(
            self.keys.deadletter(), min=f"{since_ms}-0", count=10_000
        )
        letters = [DeadLetter.from_entry(entry_id, fields) for entry_id, fields in entries]
        return [d for d in letters if d.original.get("sender") == sender]

    async def acknowledged(self, stream: str, entry_id: str, timeout: float) -> bool:
        """Wait up to ``timeout`` until the entry was delivered and is no longer pending."""
        give_up = time.monotonic() + timeout
        while True:
            if (
                await self.delivered(stream, entry_id)
                and await self.pending(stream, entry_id) is None
            ):
                return True
            if time.monotonic() > give_up:
                return False
            await asyncio.sleep(0.02)

    async def diagnose(
        self, stream: str, entry_id: str, message_id: str, since_ms: int, instance: str
    ) -> str:
        """One sentence: what became of the entry ``entry_id`` of ``stream``."""
        if not await self.has_group(stream):
            return (
                f"{stream} has no consumer group {AGENT_GROUP!r}: the agent never created it "
                f"(XGROUP CREATE <stream> {AGENT_GROUP} 0 MKSTREAM)"
            )
        letter = await self.dead_letter(message_id, since_ms)
        if letter is not None:
            return f"it was dead-lettered [{letter.code}]: {letter.reason}"
        held = await self.pending(stream, entry_id)
        if held is not None:
            consumer, count = held
            who = "the agent's instance" if consumer == instance else "consumer"
            return (
                f"{who} {consumer} read it (delivered {count}x) but neither answered nor "
                "acknowledged it"
            )
        if await self.delivered(stream, entry_id):
            return "it was read and acknowledged, but no reply came"
        return f"nobody read it from {stream} (XREADGROUP GROUP {AGENT_GROUP} <instance> ... >)"

    # -- the registry's change feed ------------------------------------------------------------
    async def last_event_id(self) -> str:
        entries: Any = await self.client.xrevrange(self.keys.events(), count=1)
        return str(entries[0][0]) if entries else "0-0"

    async def events(self, after: str, block: float) -> list[RegistryEvent]:
        """Change-feed events after ``after``, waiting up to ``block`` seconds for one."""
        found: Any = await self.client.xread(
            {self.keys.events(): after}, count=1000, block=max(1, int(block * 1000))
        )
        return [
            RegistryEvent.from_fields(str(entry_id), fields)
            for _, entries in found or []
            for entry_id, fields in entries
        ]

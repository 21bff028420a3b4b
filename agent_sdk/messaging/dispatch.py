"""Handling one entry: decode, check, run the handler, then reply, acknowledge, dead-letter or
leave it for redelivery. The ``Consumer`` reads entries and hands each to a ``Dispatcher``.

An entry that does not decode is dead-lettered; if its raw fields say it is a request with a
reply list of this namespace, the requester first gets the error (``Replier.refusal``) instead
of waiting for its timeout.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis

from agent_sdk import telemetry
from agent_sdk.messaging.batcher import Batcher
from agent_sdk.messaging.deadletter import dead_letter
from agent_sdk.messaging.handlers import HandlerRegistry, Message, Outcome
from agent_sdk.messaging.replier import Replier
from agent_sdk.messaging.scripts import Scripts
from agent_sdk.security import UNVERIFIED
from agent_sdk.settings import Settings
from agent_sdk.writethrough import WriteThrough
from schemas.display import safe_text
from schemas.envelope import Envelope, Kind, decode_fields
from schemas.errors import ErrorCode, ProtocolError

__all__ = ["MAX_DELIVERIES_CODE", "Dispatcher", "Fields", "StreamState", "id_key", "text"]

log = logging.getLogger("agentbus.messaging")

#: Dead-letter code of an entry that failed ``max_deliveries`` times.
MAX_DELIVERIES_CODE = "max_deliveries"

Fields = dict[Any, Any]


def text(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else v


def id_key(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


@dataclass(slots=True)
class StreamState:
    """What one consumer knows about one stream it reads."""

    key: str
    group: str
    #: Entries this instance works on (lease renewed), by entry id.
    held: set[str] = field(default_factory=set)
    #: Finished entries waiting for the next batched XACK.
    acks: list[str] = field(default_factory=list)
    #: May hold entries not yet delivered to the group (read it before blocking).
    dirty: bool = True
    cursor: str = "0-0"


class Dispatcher:
    """Runs handlers for entries of a ``StreamState`` and settles each entry."""

    def __init__(
        self,
        client: aioredis.Redis,
        settings: Settings,
        scripts: Scripts,
        *,
        name: str,
        handlers: HandlerRegistry,
        ack: Callable[[StreamState, str], None],
        batcher: Batcher | None = None,
        on_retry: Callable[[StreamState], None] | None = None,
        direct: WriteThrough | None = None,
    ) -> None:
        self.client = client
        self.settings = settings
        self.scripts = scripts
        self.name = name
        self.handlers = handlers
        self.ack = ack
        #: Told when an entry is left pending for a redelivery (claimed once idle for a TTL).
        self.on_retry = on_retry
        self.replier = Replier(client, settings, scripts, name, batcher=batcher, direct=direct)

    async def to_dead_letter(
        self, s: StreamState, entry_id: str, fields: Fields, reason: str, code: str
    ) -> None:
        log.warning("dead-lettering entry %s of %s: %s", entry_id, s.key, reason)
        mtype = fields.get(b"type", fields.get("type"))
        if isinstance(mtype, bytes):  # may be any bytes: this entry is bad, maybe for that
            mtype = mtype.decode(errors="replace")
        telemetry.record_dead_lettered(mtype, code)
        await dead_letter(self.client, self.scripts, self.settings, source=s.key,
                          entry_id=entry_id, fields=fields, reason=reason, code=code,
                          group=s.group)  # fmt: skip
        s.held.discard(entry_id)

    async def handle_entry(
        self,
        s: StreamState,
        entry_id: str,
        fields: Fields,
        count: int,
        handled: Callable[[], None] | None = None,
    ) -> None:
        """Decode, check and handle one entry, then settle it. ``handled`` is called once the
        handler has returned and the reply (or ack) is written, without waiting for Redis to
        answer it (the consumer frees the entry's slot then, so its reader reads again)."""
        if count == UNVERIFIED:  # acl mode: the sender it claims did not write it
            sender = safe_text(text(fields.get(b"sender", fields.get("sender", ""))), 200)
            reason = (
                f"sender {sender!r} is not proved: written by someone else, or older than "
                "proof_keep (docs/SECURITY.md)"
            )
            await self.to_dead_letter(s, entry_id, fields, reason, ErrorCode.UNAUTHENTICATED)
            return
        try:
            env = decode_fields(fields, entry_id)
        except ProtocolError as e:
            # a request is answered (its caller would wait for its timeout), then dead-lettered
            refusal = self.replier.refusal(fields, entry_id, e.info)
            if refusal is not None:
                await self.replier.refuse(refusal, stream=s.key, group=s.group)
            await self.to_dead_letter(s, entry_id, fields, e.description, e.code)
            return
        if count > self.settings.max_deliveries:
            reason = f"not handled after {count - 1} deliveries (max_deliveries)"
            await self.to_dead_letter(s, entry_id, fields, reason, MAX_DELIVERIES_CODE)
            return
        if env.expired():
            reason = f"deadline {env.deadline} passed before it was handled"
            await self.to_dead_letter(s, entry_id, fields, reason, ErrorCode.DEADLINE_EXCEEDED)
            return
        msg = Message(env, delivery_count=count, source=s.key, entry_id=entry_id)
        telemetry.record_received(env.type)
        with telemetry.consumer_span(
            env.target or self.name, env.type, headers=env.headers, message_id=env.id,
            conversation_id=env.correlation_id or (env.id if env.kind is Kind.REQUEST else None),
        ) as span:  # fmt: skip
            # observed before the reply is settled (unlike a direct request's answer, whose
            # write does not wait): once a durable request returns, its handler's usage is in
            outcome = await self.handlers.handle(msg)
            if handled is not None:  # once the settling write below is out, not before it
                asyncio.get_running_loop().call_soon(handled)
            if outcome.error is not None:
                telemetry.mark_error(span, outcome.error.code, outcome.error.description)
                telemetry.record_failed(env.type, outcome.error.code)
            await self.settle(s, entry_id, fields, env, outcome, count)

    async def settle(
        self, s: StreamState, entry_id: str, fields: Fields, env: Envelope, outcome: Outcome,
        count: int,
    ) -> None:  # fmt: skip
        """Reply, acknowledge, dead-letter or leave for redelivery, by outcome."""
        if env.kind is Kind.REQUEST and env.reply_to:
            ack = [entry_id, *s.acks]
            s.acks = []
            try:
                await self.replier.reply(env, outcome, stream=s.key, group=s.group, ack=ack)
            except BaseException:
                s.acks[:0] = ack[1:]
                raise
            s.held.difference_update(ack)
        elif outcome.ok:
            self.ack(s, entry_id)
        elif outcome.final:
            assert outcome.error is not None
            await self.to_dead_letter(s, entry_id, fields, outcome.error.description,
                                       outcome.error.code)  # fmt: skip
        else:
            # A failed delivery: stop renewing the lease; after the TTL a claim redelivers it.
            s.held.discard(entry_id)
            if self.on_retry is not None:
                self.on_retry(s)
            log.warning("message %s (%r) failed on delivery %d; it will be retried",
                        env.id, env.type, count)  # fmt: skip

    async def live(self, msg: Message) -> None:
        env = msg.envelope
        telemetry.record_received(env.type)
        with telemetry.consumer_span(
            env.target or self.name, env.type, headers=env.headers, message_id=env.id
        ) as span:
            outcome: Outcome = await self.handlers.handle(msg)
            error = outcome.error
            if error is not None:
                telemetry.mark_error(span, error.code, error.description)
                telemetry.record_failed(env.type, error.code)
        if error is not None:
            log.warning("broadcast %s (%r) failed: %s", env.id, env.type, error.description)

"""Answering a request: ``LPUSH`` the JSON reply to ``reply_to``, ``PEXPIRE`` it, ``XACK`` the
request (and any other finished entries of the same stream): one ``EVALSHA`` (``reply.lua``).
On a Redis Cluster the reply list and the stream are in different slots: the reply is written
first, then the request acknowledged (a failure in between redelivers the request: a second
reply, which the requester ignores, rather than none).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
import redis.asyncio as aioredis

from agent_sdk.connection import publish_command, redis_errors
from agent_sdk.messaging.batcher import Batcher, Op
from agent_sdk.messaging.codec import Outgoing, encode_payload
from agent_sdk.messaging.handlers import Outcome
from agent_sdk.messaging.scripts import Scripts
from agent_sdk.settings import Settings
from agent_sdk.writethrough import WriteThrough
from schemas.envelope import Envelope, Kind
from schemas.errors import AgentbusError, ErrorCode, ErrorInfo, PayloadTooLarge

__all__ = ["REPLY_LINGER_MS", "Refusal", "Replier"]

log = logging.getLogger("agentbus.messaging")

#: A reply list outlives the request's deadline by this much (then Redis drops it).
REPLY_LINGER_MS = 60_000


class Replier:
    def __init__(
        self,
        client: aioredis.Redis,
        settings: Settings,
        scripts: Scripts,
        sender: str,
        *,
        batcher: Batcher | None = None,
        direct: WriteThrough | None = None,
    ) -> None:
        self.client = client
        self.settings = settings
        self.scripts = scripts
        self.sender = sender
        #: Answers to ``durable=False`` requests, posted (``WriteThrough.post``) when given.
        self.direct = direct
        self._reply_prefix = f"{settings.keys.ns}:"
        self._agents_prefix = settings.keys.agents_prefix
        #: Replies of concurrent handlers share round trips (one in flight, on its own lane;
        #: the host's, shared by its agents).
        self.batcher = batcher or Batcher(  # join_turn=False: leaves as soon as it can
            client,
            join_turn=False,
            replica_acks=settings.replica_acks,
            replica_timeout=settings.replica_ack_timeout,
        )

    def build(self, request: Envelope, outcome: Outcome) -> bytes:
        error = outcome.error
        body = b"null"
        if error is None:
            try:
                body = encode_payload(outcome.result, self.settings.max_payload_bytes)
            except PayloadTooLarge as e:
                error = ErrorInfo(
                    code=e.code, description=f"the handler's result: {e.description}",
                    details=e.details,
                )  # fmt: skip
            except AgentbusError as e:  # not JSON: the handler's fault, not the request's
                log.error("the handler of %r returned a value that is not JSON (%s); replying "
                          "with error handler_error", request.type, e.description)  # fmt: skip
                error = ErrorInfo(
                    code=ErrorCode.HANDLER_ERROR,
                    description="the handler returned a value that is not JSON "
                    f"serialisable ({e.__cause__ or e.description})",
                    details={**e.details, "exception": "TypeError"},
                )
        return Outgoing(
            type=request.type, sender=self.sender, payload=body, kind=Kind.REPLY,
            target=request.sender, correlation_id=request.id, error=error,
            headers=request.headers or None,
        ).json()  # fmt: skip

    async def publish_reply(self, request: Envelope, outcome: Outcome) -> None:
        """Answer a ``durable=False`` request: ``PUBLISH`` on the channel named like its
        ``reply_to`` (at-most-once, as the request was), posted on the direct writer: nothing
        comes back, the handler's slot is free at once. Without one (a cluster) ``SPUBLISH``
        through the batcher: the channel has the requester's hash tag, a sharded channel like
        a doorbell."""
        assert request.reply_to is not None
        reply_to = request.reply_to
        if not reply_to.startswith(self._reply_prefix) or ":replies:" not in reply_to:
            log.warning("request %s has a reply_to outside this namespace's reply lists: %r",
                        request.id, reply_to)  # fmt: skip
            return
        data = self.build(request, outcome)
        if self.direct is not None:  # nothing comes back: no Redis error to report here
            await self.direct.start()
            self.direct.post(("PUBLISH", reply_to, data))
            return
        with redis_errors(self.settings, f"replying to {request.sender}"):
            await self.batcher.run(Op((publish_command(self.client), reply_to, data)))

    async def reply(
        self, request: Envelope, outcome: Outcome, *, stream: str, group: str, ack: list[str]
    ) -> None:
        assert request.reply_to is not None
        reply_to = request.reply_to
        if not reply_to.startswith(self._reply_prefix) or ":replies:" not in reply_to:
            # Never write to arbitrary keys named by a sender: acknowledge without answering.
            log.warning("request %s has a reply_to outside this namespace's reply lists: %r",
                        request.id, reply_to)  # fmt: skip
            with redis_errors(self.settings, "acknowledging a request"):
                await self.client.xack(stream, group, *ack)
            return
        linger = REPLY_LINGER_MS
        if request.deadline is not None:
            left = (request.deadline - datetime.now(UTC)).total_seconds() * 1000
            linger += max(0, int(left))
        data = self.build(request, outcome)
        with redis_errors(self.settings, f"replying to {request.sender}"):
            if self.settings.secure:  # no PEXPIRE of another's list (docs/SECURITY.md)
                await self.batcher.run(
                    Op([data, group, *ack], self.scripts.reply_secure, (reply_to, stream))
                )
            elif self.scripts.cluster:  # two slots: the reply first, then the acknowledgement
                await self.batcher.run(Op([data, linger, group], self.scripts.reply, (reply_to,)))
                if ack:
                    await self.batcher.run(Op(("XACK", stream, group, *ack)))
            else:
                await self.batcher.run(
                    Op([data, linger, group, *ack], self.scripts.reply, (reply_to, stream))
                )

    def refusal(self, fields: Mapping[Any, Any], entry_id: str, error: ErrorInfo) -> Refusal | None:
        """The error reply owed to a request that does not decode (an unknown envelope field, a
        bad deadline, ...): built from its raw fields when they say ``kind`` request and name a
        reply list of this namespace (``<ns>:agent:{<name>}:replies:<instance>``) and a usable
        id; else ``None`` (nobody to answer)."""
        if _raw(fields, "kind") != Kind.REQUEST.value:
            return None
        reply_to = _raw(fields, "reply_to")
        if (
            reply_to is None
            or len(reply_to) > _MAX_REPLY_TO
            or not reply_to.startswith(self._agents_prefix)
            or ":replies:" not in reply_to
        ):
            return None
        msg_id = _raw(fields, "id") if _has(fields, "id") else entry_id
        if not msg_id or len(msg_id) > _MAX_ID:
            return None  # the requester cannot be waiting for an id the envelope refuses
        mtype = _raw(fields, "type")
        sender = _raw(fields, "sender")
        data = Outgoing(
            type=mtype if mtype and len(mtype) <= _MAX_ID else "undecodable",
            sender=self.sender, payload=b"null", kind=Kind.REPLY,
            target=sender if sender and len(sender) <= _MAX_TARGET else None,
            correlation_id=msg_id, error=error, headers=_headers(fields),
        ).json()  # fmt: skip
        return Refusal(reply_to, data)

    async def refuse(self, refusal: Refusal, *, stream: str, group: str) -> None:
        """Push an error reply built by ``refusal`` (no acknowledgement: a dead letter does)."""
        with redis_errors(self.settings, "answering an undecodable request"):
            if self.settings.secure:
                await self.scripts.reply_secure(
                    keys=[refusal.reply_to, stream], args=[refusal.data, group]
                )
                return
            keys = [refusal.reply_to] if self.scripts.cluster else [refusal.reply_to, stream]
            await self.scripts.reply(keys=keys, args=[refusal.data, REPLY_LINGER_MS, group])


@dataclass(frozen=True, slots=True)
class Refusal:
    """An error reply to a request that does not decode: where it goes and its JSON."""

    reply_to: str
    data: bytes


_MAX_ID = 128
_MAX_TARGET = 300
_MAX_REPLY_TO = 512


def _has(fields: Mapping[Any, Any], name: str) -> bool:
    return name in fields or name.encode() in fields


def _raw(fields: Mapping[Any, Any], name: str) -> str | None:
    """A raw stream field as text (``None`` when absent or not UTF-8)."""
    value = fields.get(name, fields.get(name.encode()))
    if isinstance(value, bytes):
        try:
            return value.decode()
        except UnicodeDecodeError:
            return None
    return value if isinstance(value, str) else None


def _headers(fields: Mapping[Any, Any]) -> dict[str, str] | None:
    """The raw ``headers`` when they are a JSON object of strings (trace continuity)."""
    text = _raw(fields, "headers")
    if text is None:
        return None
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError:
        return None
    if isinstance(value, dict) and all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        return value or None
    return None

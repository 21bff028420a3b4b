"""Answering a request: ``LPUSH`` the JSON reply to ``reply_to``, ``PEXPIRE`` it, ``XACK`` the
request (and any other finished entries of the same stream): one ``EVALSHA`` (``reply.lua``).
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime

import redis.asyncio as aioredis

from agent_sdk.connection import redis_errors
from agent_sdk.messaging.batcher import Batcher, Op
from agent_sdk.messaging.codec import Outgoing, encode_payload
from agent_sdk.messaging.handlers import Outcome
from agent_sdk.messaging.scripts import Scripts
from agent_sdk.settings import Settings
from schemas.envelope import Envelope, Kind
from schemas.errors import AgentbusError, ErrorInfo

__all__ = ["REPLY_LINGER_MS", "Replier"]

log = logging.getLogger("agentbus.messaging")

#: A reply list outlives the request's deadline by this much (then Redis drops it).
REPLY_LINGER_MS = 60_000


class Replier:
    def __init__(
        self, client: aioredis.Redis, settings: Settings, scripts: Scripts, sender: str
    ) -> None:
        self.client = client
        self.settings = settings
        self.scripts = scripts
        self.sender = sender
        self._reply_prefix = f"{settings.keys.ns}:"
        #: Replies of concurrent handlers share round trips (one in flight, on its own lane).
        self.batcher = Batcher(client, join_turn=False)  # a reply leaves as soon as it can

    def build(self, request: Envelope, outcome: Outcome) -> bytes:
        error = outcome.error
        body = b"null"
        if error is None:
            try:
                body = encode_payload(outcome.result, self.settings.max_payload_bytes)
            except AgentbusError as e:
                error = ErrorInfo(
                    code=e.code, description=f"the handler's result: {e.description}",
                    details=e.details,
                )  # fmt: skip
        return Outgoing(
            type=request.type, sender=self.sender, payload=body, kind=Kind.REPLY,
            target=request.sender, correlation_id=request.id, error=error,
            headers=request.headers or None,
        ).json()  # fmt: skip

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
        with redis_errors(self.settings, f"replying to {request.sender}"):
            await self.batcher.run(
                Op([self.build(request, outcome), linger, group, *ack], self.scripts.reply,
                   (reply_to, stream))
            )  # fmt: skip

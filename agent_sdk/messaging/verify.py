"""acl mode: a broadcast or topic message is handed on only if its claimed sender proved it.

A publisher in acl mode publishes through ``publish_proved.lua``, which adds the digest of
``<channel>\\n\\n<message>`` (``agent_sdk.security.publish_digest``) to its proof zset
``<ns>:agent:{<sender>}:sent`` in the same call, before the ``PUBLISH``: only the Redis user that
owns the name may write that zset. The subscriber's side is here: every broadcast and topic
message a hub receives waits in one queue; one task checks them in batches (one pipelined
``ZSCORE`` per message, one round trip per batch, in arrival order) and delivers the proved ones.
An unproved message (a raw ``PUBLISH`` claiming another sender, an invalid sender, a proof pruned
after ``proof_keep``) is dropped, counted (``unproved``) and logged with its channel and claimed
sender, escaped; it is never handled. Pub/sub is at-most-once anyway: a message that cannot be
queued (``_QUEUE_MAX`` waiting) is dropped and counted (``overflow``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from agent_sdk.security import publish_digest
from agent_sdk.settings import Settings
from agent_sdk.tasks import cancel_and_wait
from schemas.display import safe_text
from schemas.envelope import Envelope
from schemas.names import check_identifier

__all__ = ["PublishVerifier"]

log = logging.getLogger("agentbus.messaging")

_QUEUE_MAX = 10_000
_BATCH = 256
#: Unproved messages logged one by one; past this, every ``_LOG_EVERY``-th (a flood of forged
#: publishes must not flood the log as well).
_LOG_FIRST = 20
_LOG_EVERY = 1000

_Item = tuple[str, bytes, Envelope, Callable[[], None]]


def _valid_sender(sender: str) -> bool:
    try:
        check_identifier(sender)
    except ValueError:
        return False
    return True


class PublishVerifier:
    """Checks the proofs of received publishes; ``start``/``stop`` are idempotent."""

    def __init__(self, client: aioredis.Redis, settings: Settings) -> None:
        self.client = client
        self.settings = settings
        self._queue: asyncio.Queue[_Item] = asyncio.Queue(_QUEUE_MAX)
        self._task: asyncio.Task[None] | None = None
        #: Messages delivered after their proof was found.
        self.verified = 0
        #: Messages dropped: their claimed sender did not prove them.
        self.unproved = 0
        #: Messages dropped because too many were waiting for their check.
        self.overflow = 0

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="agentbus-publish-verifier")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            await cancel_and_wait(task)

    def submit(self, channel: str, data: bytes, env: Envelope, deliver: Callable[[], None]) -> None:
        """Call ``deliver`` once ``data`` (received on ``channel``) is proved by its sender."""
        if not _valid_sender(env.sender):
            self._reject(channel, env, "its sender is not a valid name")
            return
        try:
            self._queue.put_nowait((channel, data, env, deliver))
        except asyncio.QueueFull:
            self.overflow += 1
            if self.overflow % _LOG_EVERY == 1:
                log.warning("dropping a message on %s: %d wait for their proof check",
                            safe_text(channel), _QUEUE_MAX)  # fmt: skip

    async def _run(self) -> None:
        backoff = 0.05
        while True:
            batch = [await self._queue.get()]
            while len(batch) < _BATCH and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            while True:
                try:
                    scores = await self._check(batch)
                    break
                except RedisError as e:  # an outage: these wait (pub/sub reconnects meanwhile)
                    log.warning("checking publish proofs failed (%s); retrying in %.2fs",
                                e, backoff)  # fmt: skip
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, self.settings.retry_max_backoff)
            backoff = 0.05
            for (channel, _, env, deliver), score in zip(batch, scores, strict=True):
                if score is None:
                    self._reject(channel, env, "that name's owner did not publish it (no proof)")
                    continue
                self.verified += 1
                try:
                    deliver()
                except Exception:
                    log.exception("delivering a message on %s failed", safe_text(channel))

    async def _check(self, batch: list[_Item]) -> list[object]:
        keys = self.settings.keys
        async with self.client.pipeline(transaction=False) as pipe:
            for channel, data, env, _ in batch:
                pipe.zscore(keys.proofs(env.sender), publish_digest(channel, data))
            return list(await pipe.execute())

    def _reject(self, channel: str, env: Envelope, why: str) -> None:
        self.unproved += 1
        n = self.unproved
        if n <= _LOG_FIRST or n % _LOG_EVERY == 0:
            log.warning(
                "dropping %s %s on %s claiming sender %s: %s (acl mode; %d dropped so far)",
                safe_text(env.kind.value, 32), safe_text(env.type, 64), safe_text(channel),
                safe_text(env.sender, 128), why, n,
            )  # fmt: skip

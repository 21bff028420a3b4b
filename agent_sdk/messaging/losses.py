"""Entries removed from an inbox or role queue before they were read: detected and reported.

Permission to append to a stream is permission to trim it: a sender may ``XADD <inbox> MAXLEN 0``
or ``XTRIM`` another agent's inbox (and in ``off`` mode every sender caps an inbox at *its own*
``inbox_maxlen``). Redis ACLs cannot tell an ``XADD`` with ``MAXLEN`` from one without, and a
script or Function runs its commands with its caller's permissions, so this cannot be prevented
by the generated users; it is **detected**: every ``loss_check`` seconds a host runs ``lost.lua``
on each stream it reads (through its batcher, ``_CHUNK`` streams a round trip: packed by
hiredis, and no round trip of others waits behind more than one chunk). On Redis 7 the
group's ``lag`` keeps counting entries trimmed before delivery, so ``lag`` minus the entries
after the group's last-delivered id is the number lost. Each new loss is reported once (the
count reported so far lives in
``<stream>:lost``, which only the stream's readers may write): a warning in the log and a record
in the dead-letter stream (code ``messages_lost``, ``source`` the stream, ``count``), where
``agentbus deadletter`` shows it. Redis 6.2 has no ``lag``: nothing is detected there.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import redis.asyncio as aioredis

from agent_sdk.messaging.batcher import Batcher, Op
from agent_sdk.messaging.scripts import script_text
from agent_sdk.settings import Settings
from schemas.display import safe_text
from schemas.envelope import utcnow
from schemas.errors import ErrorCode
from schemas.keys import AGENT_GROUP

__all__ = ["LossWatch"]

log = logging.getLogger("agentbus.messaging")

_CHUNK = 200


class LossWatch:
    """Checks streams for entries trimmed before they were read; reports each loss once."""

    def __init__(self, client: aioredis.Redis, settings: Settings, batcher: Batcher) -> None:
        self.client = client
        self.settings = settings
        self.batcher = batcher
        self._script = client.register_script(script_text("lost"))
        #: Entries found lost (and reported) by this watch.
        self.lost = 0

    async def run(self, streams: Callable[[], list[str]]) -> None:
        """Check ``streams()`` every ``loss_check`` seconds, forever."""
        while True:
            await asyncio.sleep(self.settings.loss_check)
            await self.check(streams())

    async def check(self, streams: list[str]) -> int:
        """Check ``streams`` now; report and return the entries newly found lost."""
        found = 0
        for i in range(0, len(streams), _CHUNK):
            chunk = streams[i : i + _CHUNK]
            keys = self.settings.keys
            ops = [Op((AGENT_GROUP,), self._script, (s, keys.losses(s))) for s in chunk]
            results: list[Any] = await self.batcher.run_many(ops)
            for stream, result in zip(chunk, results, strict=True):
                new, total = int(result[0]), int(result[1])
                if new > 0:
                    found += new
                    await self._report(stream, new, total)
        self.lost += found
        return found

    async def _report(self, stream: str, n: int, total: int) -> None:
        reason = (
            f"{n} entries of {stream} were removed before they were read (a sender's XADD "
            f"MAXLEN or XTRIM, or a cap too small for the backlog): lost; {total} in all"
        )
        log.warning("%s", safe_text(reason))
        fields = {
            "reason": reason, "code": ErrorCode.MESSAGES_LOST.value, "source": stream,
            "source_id": "", "count": str(n), "total": str(total),
            "failed_at": utcnow().isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        }  # fmt: skip
        await self.client.xadd(
            self.settings.keys.deadletter(),
            fields,  # type: ignore[arg-type]
            maxlen=self.settings.deadletter_maxlen,
            approximate=True,
        )

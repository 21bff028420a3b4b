"""One loop that flushes the usage stats of every agent of a host.

A lone agent's ``UsageRecorder`` runs its own flush loop. A host of 10,000 agents must not run
10,000 loops that wake every second to find nothing to write: its agents' recorders tell the
host's ``UsageFlusher`` when they have something (their first flush, which claims the stats
hash for the instance, or a handled message), and once an interval it flushes those, and only
those, together.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from agent_sdk.tasks import cancel_and_wait

if TYPE_CHECKING:
    from agent_sdk.messaging.batcher import Batcher
    from agent_sdk.usage import UsageRecorder

__all__ = ["UsageFlusher"]

log = logging.getLogger("agentbus.usage")


class UsageFlusher:
    """Flushes the recorders marked since the last round, once per ``interval``."""

    def __init__(self, interval: float = 1.0) -> None:
        self.interval = interval
        #: The host's send batcher, once it runs: thousands of flushes (a fleet starting, each
        #: claiming its stats hash) leave in a few pipelines on its connection instead of
        #: queueing in the command pool ahead of the heartbeats.
        self.batcher: Batcher | None = None
        self._due: dict[UsageRecorder, None] = {}
        self._task: asyncio.Task[None] | None = None
        #: Flush rounds that wrote something (for tests and stats).
        self.rounds = 0

    def mark(self, recorder: UsageRecorder) -> None:
        """``recorder`` has something to write: flush it in the next round."""
        self._due[recorder] = None

    def forget(self, recorder: UsageRecorder) -> None:
        self._due.pop(recorder, None)

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._loop(), name="agentbus-usage-flusher")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            await cancel_and_wait(task)

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            if self._due:
                await self.flush_due()

    async def flush_due(self) -> None:
        """Flush every recorder marked since the last round (a failed one stays marked). The
        recorders whose only write is the claim of their stats hash (agents that just started)
        send their claims together, with no flush of their own."""
        due, self._due = list(self._due), {}
        batcher = self.batcher
        claims = [(r, op) for r in due if (op := r.claim_op()) is not None] if batcher else []
        claiming = {r for r, _ in claims}
        rest = [r for r in due if r not in claiming]
        answering = batcher.submit([op for _, op in claims]) if batcher and claims else None
        results = await asyncio.gather(*(r.flush(batcher) for r in rest), return_exceptions=True)
        failed = [(r, e) for r, e in zip(rest, results, strict=True) if isinstance(e, Exception)]
        if answering is not None:
            try:
                answers: list[Any] = await answering
            except Exception as e:  # the round trip failed: every claim did
                answers = [e] * len(claims)
            for (r, _), answer in zip(claims, answers, strict=True):
                if isinstance(answer, Exception):
                    failed.append((r, answer))
                else:
                    r.flushed(answer)
        for recorder, _ in failed:
            self._due[recorder] = None  # kept, tried again next round
        if failed:
            log.warning("usage stats: %d agent(s) could not be flushed (%s); again in %.1fs",
                        len(failed), failed[0][1], self.interval)  # fmt: skip
        self.rounds += 1

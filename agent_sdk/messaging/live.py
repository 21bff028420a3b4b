"""Running the handlers of broadcasts received on pub/sub: a bounded queue and a few workers.

Pub/sub cannot push back on a publisher, so an agent that handles broadcasts slower than they
arrive must drop some (at-most-once, as documented) rather than grow without bound. Messages go
into a queue of ``queue_max`` (10,000); when it is full a message is dropped and counted
(``dropped``, logged at the first drop and every 1,000th: NATS calls this a slow consumer).

Handlers run on up to ``workers`` (32) tasks. Another worker is started only when messages wait
while every worker is inside a handler that waits (checked once the running code yields), so
handlers that never wait are all run by one worker, one after another, with no task per message
(≈ 2 µs a message for the queue against ≈ 5 µs for a task), and handlers that wait on I/O get
up to ``workers`` running at once. Broadcast handlers are not counted against ``max_concurrency``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from agent_sdk.messaging.handlers import Message

__all__ = ["LiveDispatch"]

log = logging.getLogger("agentbus.messaging")

QUEUE_MAX = 10_000
WORKERS = 32


class LiveDispatch:
    """A bounded queue of received broadcasts and the workers that run their handlers."""

    def __init__(
        self,
        run: Callable[[Message], Awaitable[None]],
        *,
        queue_max: int = QUEUE_MAX,
        workers: int = WORKERS,
    ) -> None:
        self._run = run
        self._queue: asyncio.Queue[Message] = asyncio.Queue(queue_max)
        self._max_workers = workers
        self._workers: set[asyncio.Task[None]] = set()
        self._idle = 0
        self._poked = False
        self._settled: asyncio.Event | None = None
        #: Broadcasts dropped because the queue was full.
        self.dropped = 0

    def put(self, msg: Message) -> None:
        """Queue ``msg`` for a worker (never blocks; drops and counts when full)."""
        try:
            self._queue.put_nowait(msg)
        except asyncio.QueueFull:
            self.dropped += 1
            if self.dropped % 1000 == 1:
                log.warning("broadcast handlers fall behind: %d message(s) dropped so far "
                            "(queue of %d full)", self.dropped, self._queue.maxsize)  # fmt: skip
            return
        if self._settled is not None:
            self._settled.clear()
        self._poke()

    def _poke(self) -> None:
        """Check, once the running code yields, whether another worker is needed."""
        if not self._poked:
            self._poked = True
            asyncio.get_running_loop().call_soon(self._check)

    def _check(self) -> None:
        # Runs when every worker is either waiting for a message or waiting inside a handler:
        # work queued and no idle worker means handlers wait on I/O, so one more may help.
        self._poked = False
        if self._idle == 0 and not self._queue.empty() and len(self._workers) < self._max_workers:
            self._idle += 1  # idle until it takes its first message
            task = asyncio.create_task(self._worker(), name="agentbus-broadcast")
            self._workers.add(task)
            task.add_done_callback(self._workers.discard)

    async def _worker(self) -> None:
        while True:  # counted in _idle here
            settled = self._queue.empty() and self._idle == len(self._workers)
            if settled and self._settled is not None:
                self._settled.set()
            try:
                msg = await self._queue.get()
            finally:
                self._idle -= 1
            if not self._queue.empty():
                self._poke()
            try:
                await self._run(msg)
            except Exception:
                log.exception("broadcast handler for %r failed", msg.type)
            self._idle += 1

    async def stop(self, grace: float) -> None:
        """Let queued and running handlers finish for up to ``grace`` seconds, then cancel."""
        if self._workers and (not self._queue.empty() or self._idle < len(self._workers)):
            self._settled = asyncio.Event()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(grace):
                    await self._settled.wait()
        workers = list(self._workers)
        for task in workers:
            task.cancel()
        await asyncio.gather(*workers, return_exceptions=True)
        self._settled = None

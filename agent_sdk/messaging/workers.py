"""Running handlers without a task per message: a queue and a pool of workers started on demand.

Another worker is started only when items wait while every worker is inside a handler that waits
(checked once the running code yields), so handlers that never wait all run on one worker, one
after another (≈ 2 µs an item for the queue against ≈ 5 µs for a task), and handlers that wait
on I/O get up to ``workers`` running at once.

Two pools per agent:

* **stream entries** (inbox and role queue): unbounded queue (the reader never reads more than
  ``max_concurrency`` entries), ``max_concurrency`` workers;
* **broadcasts** received on pub/sub: pub/sub cannot push back on a publisher, so an agent that
  handles broadcasts slower than they arrive must drop some (at-most-once, as documented) rather
  than grow without bound. A queue of 10,000; when full an item is dropped and counted
  (``dropped``, logged at the first drop and every 1,000th: NATS calls this a slow consumer);
  32 workers. Broadcast handlers are not counted against ``max_concurrency``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

from agent_sdk.tasks import cancel_all

__all__ = ["BROADCAST_QUEUE_MAX", "BROADCAST_WORKERS", "WorkerPool"]

log = logging.getLogger("agentbus.messaging")

BROADCAST_QUEUE_MAX = 10_000
BROADCAST_WORKERS = 32

T = TypeVar("T")


class WorkerPool(Generic[T]):
    """A queue of items and up to ``workers`` tasks running ``run(item)`` on them.

    ``queue_max`` 0 is unbounded. ``run`` should handle its own errors; one that escapes is
    logged (``what`` names the pool) and the worker goes on.

    The queue is a ``deque`` and an idle worker waits on a future of its own: what
    ``asyncio.Queue`` does, less its per-item bookkeeping (≈ 1 µs an item).
    """

    __slots__ = ("_idle", "_max_workers", "_poked", "_queue", "_queue_max", "_run", "_settled",
                 "_waiting", "_what", "_workers", "dropped")  # fmt: skip

    def __init__(
        self,
        run: Callable[[T], Awaitable[None]],
        *,
        queue_max: int = 0,
        workers: int = BROADCAST_WORKERS,
        what: str = "handler",
    ) -> None:
        self._run = run
        self._what = what
        self._queue: deque[T] = deque()
        self._queue_max = queue_max
        self._max_workers = workers
        self._workers: set[asyncio.Task[None]] = set()
        self._waiting: deque[asyncio.Future[None]] = deque()  # idle workers, first to wait first
        self._idle = 0
        self._poked = False
        self._settled: asyncio.Event | None = None
        #: Items dropped because the queue was full.
        self.dropped = 0

    def put(self, item: T) -> None:
        """Queue ``item`` for a worker (never blocks; drops and counts when full)."""
        if self._queue_max and len(self._queue) >= self._queue_max:
            self.dropped += 1
            if self.dropped % 1000 == 1:
                log.warning("%ss fall behind: %d message(s) dropped so far (queue of %d full)",
                            self._what, self.dropped, self._queue_max)  # fmt: skip
            return
        self._queue.append(item)
        if self._settled is not None:
            self._settled.clear()
        waiting = self._waiting
        while waiting:  # wake one idle worker (one cancelled while waiting is skipped)
            waiter = waiting.popleft()
            if not waiter.done():
                waiter.set_result(None)
                break
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
        if self._idle == 0 and self._queue and len(self._workers) < self._max_workers:
            self._idle += 1  # idle until it takes its first message
            task = asyncio.create_task(self._worker(), name=f"agentbus-{self._what}")
            self._workers.add(task)
            task.add_done_callback(self._workers.discard)

    async def _worker(self) -> None:
        queue = self._queue
        loop = asyncio.get_running_loop()
        while True:  # counted in _idle here
            if not queue:
                if self._settled is not None and self._idle == len(self._workers):
                    self._settled.set()
                waiter = loop.create_future()
                self._waiting.append(waiter)
                await waiter
                continue  # another worker may have taken the item first
            self._idle -= 1
            item = queue.popleft()
            if queue:
                self._poke()
            try:
                await self._run(item)
            except Exception:
                log.exception("%s failed", self._what)
            self._idle += 1

    @property
    def busy(self) -> bool:
        """Items queued or running."""
        return bool(self._queue) or self._idle < len(self._workers)

    async def stop(self, grace: float) -> None:
        """Let queued and running items finish for up to ``grace`` seconds, then cancel (an
        item not started is dropped)."""
        if self._workers and self.busy:
            self._settled = asyncio.Event()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(grace):
                    await self._settled.wait()
        await cancel_all(list(self._workers))
        self._settled = None
        self._waiting.clear()
        self._queue.clear()

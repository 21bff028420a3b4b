"""One shared Redis read per stream, fanned out to every client that follows it.

A ``StreamHub`` tails one stream (the registry change feed, or one session's activity) with a
single blocking ``XREAD`` loop (``agent_sdk.watch.tail_stream``: reconnects with backoff and
resumes from the last id) and puts each entry, decoded once, into the bounded queue of every
subscriber. A subscriber whose queue is full is **cut off**: it is removed and gets a final
``cutoff`` frame after what it had queued, so a slow client never makes the gateway buffer
without bound and never slows the others.

Resuming exactly (``follow``): a client that comes with a resume id ``L`` subscribes first,
which tells it the hub's position ``P`` (the last id given to subscribers); it then replays
``(L, P]`` from Redis with ``XRANGE`` (a one-off read at connect time) and goes on with its
queue, which holds only ids after ``P``. Ids at or before the larger of ``L`` and ``P`` are
never sent twice, and none after them is skipped: nothing lost, nothing repeated. A resume id
older than what the stream still holds gets a final ``events_lost`` frame instead.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
import redis.asyncio as aioredis

from agent_sdk.connection import redis_errors
from agent_sdk.settings import Settings
from agent_sdk.tasks import cancel_and_wait
from agent_sdk.watch import check_resumable, latest_id, tail_stream
from schemas.errors import EventsLost

__all__ = ["Frame", "StreamHub", "Subscriber", "follow", "follow_batches", "id_key"]

log = logging.getLogger("agentbus.gateway.fanout")

#: Turns one stream entry into a frame (``None``: skip it, it did not decode).
Decoder = Callable[[str, dict[Any, Any]], "Frame | None"]

_PAGE = 500


def id_key(entry_id: str) -> tuple[int, int]:
    """A stream id as a sortable pair."""
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


@dataclass(frozen=True, slots=True)
class Frame:
    """One thing to send to a client: an event with an id, or a control frame without one.

    ``kind``: the SSE event name (``agent_registered``, ``tool_executing``, ...; ``keepalive``,
    ``cutoff``, ``events_lost`` for control frames). ``data``: the JSON payload (bytes).
    ``attrs``: what per-client filters look at (``role``, ``name``, ``type``).
    """

    kind: str
    data: bytes
    id: str | None = None
    attrs: dict[str, str | None] = field(default_factory=dict)
    final: bool = False
    #: The frame as Server-Sent Events bytes, encoded once for every client.
    sse: bytes = field(init=False, repr=False, compare=False)
    #: ``id_key(id)``, parsed once for every client (``None``: no id).
    key: tuple[int, int] | None = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        head = b"id: " + self.id.encode() + b"\n" if self.id is not None else b""
        body = head + b"event: " + self.kind.encode() + b"\ndata: " + self.data + b"\n\n"
        object.__setattr__(self, "sse", body)
        object.__setattr__(self, "key", None if self.id is None else id_key(self.id))


class Subscriber:
    """One client's bounded queue. The hub cuts it off (``reason``) when the queue is full.

    A deque and at most one waiting future rather than an ``asyncio.Queue``: the hub offers
    each frame to every client, so the offer is the fan-out's inner loop (an append, and a
    wake-up only for a client that is waiting).
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        # at most limit + 1 frames: the final frame of a cut-off client comes on top
        self.frames: deque[Frame] = deque()
        self.reason: str | None = None
        #: Set (and the client woken) when a keep-alive is due (``follow_batches``).
        self.keepalive_due = False
        self._waiter: asyncio.Future[None] | None = None

    def offer(self, frame: Frame) -> bool:
        """Queue ``frame``; ``False`` (and cut off) when the client is ``limit`` frames behind."""
        if self.reason is not None:
            return False
        if len(self.frames) >= self.limit:
            self.cut("slow_consumer", frame.id)
            return False
        self.frames.append(frame)
        self.wake()
        return True

    def cut(self, reason: str, first_missed: str | None = None) -> None:
        """Stop this subscriber: a final frame follows what it has queued."""
        if self.reason is not None:
            return
        self.reason = reason
        body = f'{{"reason":"{reason}"'
        if first_missed is not None:
            body += f',"first_missed":"{first_missed}"'
        body += "}"
        self.frames.append(Frame("cutoff", body.encode(), final=True))
        self.wake()

    def wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def wait(self) -> None:
        """Until a frame is queued or a keep-alive is due."""
        while not self.frames and not self.keepalive_due:
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None


class StreamHub:
    """Tails one stream once for all its subscribers. ``start``/``stop`` are idempotent."""

    def __init__(
        self,
        client: aioredis.Redis,
        settings: Settings,
        key: str,
        decode: Decoder,
        *,
        block_ms: int = 5_000,
    ) -> None:
        self.client = client
        self.settings = settings
        self.key = key
        self.decode = decode
        self.block_ms = block_ms
        #: The id of the last entry given to subscribers ("0-0": none yet, empty stream).
        self.position = "0-0"
        self.subscribers: set[Subscriber] = set()
        self.cutoffs = 0
        self._task: asyncio.Task[None] | None = None
        self._starting: asyncio.Lock = asyncio.Lock()

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    async def start(self) -> None:
        async with self._starting:
            if self.running:
                return
            with redis_errors(self.settings, f"reading {self.key}"):
                self.position = await latest_id(self.client, self.key)
            self._task = asyncio.create_task(self._run(), name=f"agentbus-hub-{self.key}")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            await cancel_and_wait(task)
        for sub in list(self.subscribers):
            sub.cut("gateway_stopping")
        self.subscribers.clear()

    def subscribe(self, limit: int) -> tuple[Subscriber, str]:
        """A new subscriber and the position its queue starts after (no await in between)."""
        sub = Subscriber(limit)
        self.subscribers.add(sub)
        return sub, self.position

    def unsubscribe(self, sub: Subscriber) -> None:
        self.subscribers.discard(sub)

    def _publish(self, frame: Frame) -> None:
        for sub in list(self.subscribers):
            if not sub.offer(frame):
                self.subscribers.discard(sub)
                self.cutoffs += 1

    async def _run(self) -> None:
        while True:
            try:
                async for entry_id, fields in tail_stream(
                    self.client, self.key, self.position, block_ms=self.block_ms
                ):
                    frame = self.decode(entry_id, fields)
                    self.position = entry_id
                    if frame is not None:
                        self._publish(frame)
            except EventsLost as e:  # this gateway fell behind the stream's trimming
                log.warning("%s; followers are cut off and must resume", e.description)
                for sub in list(self.subscribers):
                    sub.cut("events_lost")
                self.subscribers.clear()
                self.position = await latest_id(self.client, self.key)
            except Exception:  # never die: log, back off, go on from where we were
                log.exception("reading %s failed; retrying", self.key)
                await asyncio.sleep(1.0)

    async def history(self, after: str | None, until: str) -> AsyncIterator[Frame]:
        """The frames of the entries after ``after`` (``None``: from the first) up to ``until``
        included, read with ``XRANGE`` in pages."""
        low = "-" if after is None else f"({after}"
        while True:
            with redis_errors(self.settings, f"replaying {self.key}"):
                page: Any = await self.client.xrange(self.key, min=low, max=until, count=_PAGE)
            for raw_id, fields in page:
                entry_id = raw_id.decode() if isinstance(raw_id, bytes) else raw_id
                frame = self.decode(entry_id, fields)
                if frame is not None:
                    yield frame
            if len(page) < _PAGE:
                return
            last = page[-1][0]
            low = "(" + (last.decode() if isinstance(last, bytes) else last)


class _KeepaliveTimer:
    """Marks ``sub.keepalive_due`` (and wakes it) once nothing was sent to it for ``period``
    seconds. Sending only records the time (``sent``): the timer is re-armed when it fires,
    for the period after the last send, instead of a timeout set and cancelled per frame."""

    def __init__(self, sub: Subscriber, loop: asyncio.AbstractEventLoop, period: float) -> None:
        self.sub = sub
        self.loop = loop
        self.period = period
        self.last = loop.time()
        self.handle = loop.call_at(self.last + period, self._fire)

    def sent(self) -> None:
        self.last = self.loop.time()

    def _fire(self) -> None:
        now = self.loop.time()
        due = self.last + self.period
        if now >= due:
            self.sub.keepalive_due = True
            self.sub.wake()
            due = now + self.period
        self.handle = self.loop.call_at(due, self._fire)

    def cancel(self) -> None:
        self.handle.cancel()


def _keepalive(position: str) -> Frame:
    body = f'{{"at":{time.time():.3f},"revision":"{position}"}}'
    return Frame("keepalive", body.encode())


def _lost(e: EventsLost) -> Frame:
    return Frame("events_lost", orjson.dumps(e.info.model_dump()), final=True)


async def follow_batches(
    hub: StreamHub,
    after: str | None,
    *,
    replay_all: bool,
    limit: int,
    keepalive: float,
    accept: Callable[[Frame], bool] | None = None,
) -> AsyncGenerator[list[Frame], None]:
    """Every frame after ``after`` (see the module docstring), then live ones, with a
    ``keepalive`` frame after each ``keepalive`` seconds of silence, until a final frame; in
    batches: each wake-up takes everything the client's queue holds, so a client that fell
    behind catches up with one write per batch instead of one per frame.

    The first batch is ``[ready]`` (sent once subscribed: anything written after it arrives),
    with the position the live part starts after.
    ``after=None``: everything the stream holds when ``replay_all``, else only new entries.
    ``accept`` filters frames (the position still advances past the rejected ones).
    """
    await hub.start()
    sub, position = hub.subscribe(limit)
    try:
        floor = position
        if after is not None and id_key(after) >= id_key(position):
            floor = after  # the client is ahead of this hub (it started after that event)
        yield [Frame("ready", f'{{"revision":"{floor}"}}'.encode())]
        if floor != after and (after is not None or replay_all):
            if after is not None:
                try:
                    await check_resumable(hub.client, hub.key, after)
                except EventsLost as e:
                    yield [_lost(e)]
                    return
            page: list[Frame] = []
            async for held in hub.history(after, position):
                if accept is None or accept(held):
                    page.append(held)
                if len(page) >= _PAGE:
                    yield page
                    page = []
            if page:
                yield page
        floor_key = id_key(floor)
        frames = sub.frames
        loop = asyncio.get_running_loop()
        timer = _KeepaliveTimer(sub, loop, keepalive)
        try:
            while True:
                if not frames:
                    await sub.wait()
                    if not frames:  # woken for a keep-alive: nothing was sent for a while
                        sub.keepalive_due = False
                        timer.sent()
                        yield [_keepalive(hub.position)]
                        continue
                batch: list[Frame] = []
                while frames:
                    live = frames.popleft()
                    if live.final:
                        batch.append(live)
                        yield batch
                        return
                    if (live.key is None or live.key > floor_key) and (
                        accept is None or accept(live)
                    ):
                        batch.append(live)
                if batch:
                    sub.keepalive_due = False
                    timer.sent()
                    yield batch
        finally:
            timer.cancel()
    finally:
        hub.unsubscribe(sub)


async def follow(
    hub: StreamHub,
    after: str | None,
    *,
    replay_all: bool,
    limit: int,
    keepalive: float,
    accept: Callable[[Frame], bool] | None = None,
) -> AsyncGenerator[Frame, None]:
    """``follow_batches``, one frame at a time."""
    batches = follow_batches(
        hub, after, replay_all=replay_all, limit=limit, keepalive=keepalive, accept=accept
    )
    try:
        async for batch in batches:
            for frame in batch:
                yield frame
    finally:
        await batches.aclose()

"""Pub/sub: one connection per host (or client) shared by broadcasts, doorbells and topics (on
a Redis Cluster, one per master its doorbells live on plus one: ``agent_sdk.messaging.links``).

``subscribe("news.*")`` returns a ``Subscription``: an async context manager and an async iterator
of ``Message``. It is active when the ``async with`` body starts (the ``PSUBSCRIBE`` is
confirmed). Channels a host listens to (broadcasts, the doorbells of the streams its agents
read) are ``SUBSCRIBE``d with ``listen`` and each routed to its callback, raw. On one server
the pushes are routed as the connection receives them (``SingleLink.read``'s sink), not by a
task woken for each: the hub's task only opens, reconnects and waits for the connection's end.

Delivery is at-most-once: messages published while the connection is down are lost. When the
connection breaks, the loop logs, backs off, opens a new connection and subscribes again to every
channel and pattern, so messages flow again after a reconnect.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import NoPermissionError, ResponseError

from agent_sdk.connection import access_error
from agent_sdk.messaging.handlers import Message
from agent_sdk.messaging.links import Links, open_links
from agent_sdk.messaging.verify import PublishVerifier
from agent_sdk.settings import Settings
from agent_sdk.tasks import cancel_and_wait
from schemas.envelope import decode_json
from schemas.errors import InvalidInput, ProtocolError
from schemas.names import check_topic_pattern

__all__ = ["PubSubHub", "Subscription"]

log = logging.getLogger("agentbus.messaging")

#: Gets each message of a ``listen``ed channel: (channel name, raw data).
ChannelCallback = Callable[[str, bytes], None]
_QUEUE_MAX = 10_000
_CONFIRM_TIMEOUT = 10.0
_MESSAGE = frozenset((b"message", "message", b"smessage", "smessage"))  # smessage: a cluster's


def _text(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


class Subscription:
    """Messages of one topic pattern; ``async with`` it, then ``async for msg in sub``."""

    def __init__(self, hub: PubSubHub, pattern: str) -> None:
        self.hub = hub
        self.pattern = pattern
        self.channel_pattern = hub.keys.topic_channel(pattern)
        self.queue: asyncio.Queue[Message | None] = asyncio.Queue(_QUEUE_MAX)
        #: Messages dropped because the consumer did not keep up (the queue was full).
        self.dropped = 0
        self._closed = False

    async def __aenter__(self) -> Subscription:
        await self.hub._add(self)
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        await self.hub._remove(self)
        with contextlib.suppress(asyncio.QueueFull):
            self.queue.put_nowait(None)

    def _put(self, msg: Message) -> None:
        try:
            self.queue.put_nowait(msg)
        except asyncio.QueueFull:
            self.dropped += 1

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> Message:
        if self._closed and self.queue.empty():
            raise StopAsyncIteration
        msg = await self.queue.get()
        if msg is None:
            raise StopAsyncIteration
        return msg

    async def get(self, timeout: float | None = None) -> Message:
        """The next message; ``TimeoutError`` after ``timeout`` seconds."""
        async with asyncio.timeout(timeout):
            return await self.__anext__()


class PubSubHub:
    """Owns the pub/sub connection; ``start``/``stop`` are idempotent."""

    def __init__(self, client: aioredis.Redis, settings: Settings) -> None:
        self.client = client
        self.settings = settings
        self.keys = settings.keys
        #: Channels ``SUBSCRIBE``d (broadcasts, doorbells) and who gets their messages.
        self._listeners: dict[str, ChannelCallback] = {}
        self._subs: dict[str, list[Subscription]] = {}
        self._confirmed: dict[str, asyncio.Event] = {}
        #: channels and patterns whose (P)SUBSCRIBE Redis refused (``NOPERM``), until raised
        self._refused: dict[str, Exception] = {}
        #: Channels ``listen_soon`` queued for the next ``SUBSCRIBE``, and who waits for them.
        self._queued: list[str] = []
        self._queued_waiters: list[asyncio.Future[None]] = []
        self._subscriber: asyncio.Task[None] | None = None
        #: Channels ``unlisten`` dropped, for the next ``UNSUBSCRIBE`` (agents stopping together
        #: share one), and the future of that ``UNSUBSCRIBE``.
        self._unqueued: list[str] = []
        self._unsubscribed: asyncio.Future[None] | None = None
        self._background: set[asyncio.Task[None]] = set()
        self._names: dict[Any, str] = {}  # channel as received -> its name
        self._pubsub: Links | None = None
        self._task: asyncio.Task[None] | None = None
        self._ready: asyncio.Event | None = None
        #: Times the connection was re-established after a failure.
        self.reconnects = 0
        #: Called after every reconnect (messages published meanwhile were lost).
        self.on_reconnect: Callable[[], None] | None = None
        #: acl mode: topic messages (and the plane's broadcasts) are delivered once proved.
        self.verifier = PublishVerifier(client, settings) if settings.secure else None

    async def start(self) -> None:
        if self._task is not None:
            return
        self._ready = asyncio.Event()
        if self.verifier is not None:
            await self.verifier.start()
        self._task = asyncio.create_task(self._run(), name="agentbus-pubsub")
        ready = asyncio.ensure_future(self._ready.wait())
        await asyncio.wait({ready, self._task}, return_when=asyncio.FIRST_COMPLETED)
        ready.cancel()

    async def stop(self) -> None:
        if self._subscriber is not None:
            await cancel_and_wait(self._subscriber)
        for pending in list(self._background):
            await cancel_and_wait(pending)
        task, self._task = self._task, None
        if task is None:
            return
        await cancel_and_wait(task)
        if self.verifier is not None:
            await self.verifier.stop()
        await self._close_pubsub()
        for subs in list(self._subs.values()):
            for sub in subs:
                with contextlib.suppress(asyncio.QueueFull):
                    sub.queue.put_nowait(None)

    def subscribe(self, pattern: str) -> Subscription:
        try:
            check_topic_pattern(pattern)
        except ValueError as e:
            raise InvalidInput(str(e)) from e
        return Subscription(self, pattern)

    async def listen(self, channels: dict[str, ChannelCallback]) -> None:
        """``SUBSCRIBE`` ``channels`` (each to its callback); returns once Redis confirmed them
        (after a reconnect every channel is subscribed again, and ``on_reconnect`` called)."""
        await self.listen_soon(channels)

    def listen_soon(self, channels: dict[str, ChannelCallback]) -> asyncio.Future[None]:
        """``listen`` without awaiting it: the channels asked for in one turn of the event loop
        (agents starting together) go out in **one** ``SUBSCRIBE``; the future is done once
        Redis confirmed them (``TimeoutError`` if it did not within 10 s)."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()
        new = [c for c in channels if c not in self._listeners]
        self._listeners.update(channels)
        if not new:
            done.set_result(None)
            return done
        if self._unqueued:  # listened again before its UNSUBSCRIBE left: it must not leave
            again = set(new)
            self._unqueued = [c for c in self._unqueued if c not in again]
        self._queued.extend(new)
        self._queued_waiters.append(done)
        if self._subscriber is None:
            self._subscriber = loop.create_task(self._subscribe_queued(), name="agentbus-subscribe")
        return done

    async def _subscribe_queued(self) -> None:
        """Subscribe what ``listen_soon`` queued, a batch at a time, until nothing is queued."""
        waiters: list[asyncio.Future[None]] = []
        try:
            await self.start()
            while self._queued:
                new, waiters = self._queued, self._queued_waiters
                self._queued, self._queued_waiters = [], []
                last = self._confirmed.setdefault(new[-1], asyncio.Event())
                last.clear()
                if self._pubsub is not None:
                    with contextlib.suppress(Exception):  # a broken connection resubscribes all
                        await self._pubsub.subscribe(new)
                try:
                    async with asyncio.timeout(_CONFIRM_TIMEOUT):
                        await last.wait()
                except TimeoutError as e:
                    _settle_all(waiters, e)
                else:
                    refused = self._take_refusal(new[-1], listened=new)
                    _settle_all(waiters, refused)
                finally:
                    self._confirmed.pop(new[-1], None)
        except BaseException as e:
            failure = e if isinstance(e, Exception) else RuntimeError("the pub/sub hub stopped")
            _settle_all(waiters + self._queued_waiters, failure)
            self._queued, self._queued_waiters = [], []
            raise
        finally:
            self._subscriber = None

    async def unlisten(self, channels: list[str]) -> None:
        """``UNSUBSCRIBE`` ``channels`` (nothing more is routed to their callbacks from now
        on); the channels dropped in one turn of the event loop (a host's agents stopping
        together) leave in one ``UNSUBSCRIBE``, which this returns after."""
        gone = [c for c in channels if self._listeners.pop(c, None) is not None]
        for c in gone:
            self._names.pop(c.encode(), None)
        if not gone or self._pubsub is None:
            return
        self._unqueued.extend(gone)
        done = self._unsubscribed
        if done is None:
            done = self._unsubscribed = asyncio.get_running_loop().create_future()
            task = asyncio.create_task(self._unsubscribe_queued(done), name="agentbus-unsub")
            self._background.add(task)
            task.add_done_callback(self._background.discard)
        await asyncio.shield(done)

    async def _unsubscribe_queued(self, done: asyncio.Future[None]) -> None:
        """One ``UNSUBSCRIBE`` for what ``unlisten`` queued until now (a failure is left to
        the reconnection, which subscribes the listened channels only)."""
        try:
            gone, self._unqueued = self._unqueued, []
            self._unsubscribed = None
            if gone and self._pubsub is not None:
                with contextlib.suppress(Exception):
                    await self._pubsub.unsubscribe(gone)
        finally:
            if not done.done():
                done.set_result(None)

    async def _add(self, sub: Subscription) -> None:
        await self.start()
        chan = sub.channel_pattern
        first = chan not in self._subs
        self._subs.setdefault(chan, []).append(sub)
        if first:
            event = self._confirmed.setdefault(chan, asyncio.Event())
            if self._pubsub is not None:
                with contextlib.suppress(Exception):  # a broken connection resubscribes all
                    await self._pubsub.psubscribe(chan)
            async with asyncio.timeout(_CONFIRM_TIMEOUT):
                await event.wait()
            refused = self._take_refusal(chan, patterns=[chan])
            if refused is not None:
                raise refused

    def _take_refusal(
        self, key: str, *, listened: Sequence[str] = (), patterns: Sequence[str] = ()
    ) -> Exception | None:
        """The refusal of the command that subscribed ``key`` (None if Redis confirmed it);
        what it asked for is forgotten, so a reconnect does not ask for it again."""
        refused = self._refused.pop(key, None)
        if refused is not None:
            for c in listened:
                self._listeners.pop(c, None)
            for c in patterns:
                self._subs.pop(c, None)
                self._confirmed.pop(c, None)
        return refused

    def _on_error_reply(self, error: ResponseError) -> None:
        """An error reply on the pub/sub connection: a (P)SUBSCRIBE refused by the ACL. Every
        subscription still waiting for its confirmation is failed with it (Redis does not say
        which channel it refused; the connection and what it confirmed are unharmed)."""
        if not isinstance(error, NoPermissionError):
            if not str(error).startswith("NOPERM"):
                log.warning("pub/sub connection: unexpected error reply: %s", error)
                return
            error = NoPermissionError(str(error))
        for chan, event in self._confirmed.items():
            if not event.is_set():
                self._refused[chan] = access_error(self.settings, f"subscribing to {chan!r}", error)
                event.set()

    async def _remove(self, sub: Subscription) -> None:
        chan = sub.channel_pattern
        subs = self._subs.get(chan, [])
        if sub in subs:
            subs.remove(sub)
        if not subs and chan in self._subs:
            del self._subs[chan]
            self._confirmed.pop(chan, None)
            if self._pubsub is not None:
                with contextlib.suppress(Exception):
                    await self._pubsub.punsubscribe(chan)

    async def _close_pubsub(self) -> None:
        links, self._pubsub = self._pubsub, None
        if links is not None:
            with contextlib.suppress(Exception):
                await links.close()

    async def _connect(self) -> Links:
        for event in self._confirmed.values():
            event.clear()
        links = open_links(self.client, self.settings)
        try:
            await links.open(list(self._listeners), list(self._subs))
        except BaseException:
            await links.close()
            raise
        return links

    async def _run(self) -> None:
        assert self._ready is not None
        backoff = 0.05
        while True:
            try:
                if self._pubsub is None:
                    self._pubsub = await self._connect()
                    self._ready.set()
                    if self.reconnects and self.on_reconnect is not None:
                        self.on_reconnect()
                replies = await self._pubsub.read(self._push)
                backoff = 0.05
                for reply in replies:
                    self._push(reply)
            except asyncio.CancelledError:
                raise
            except Exception as e:
                log.warning("pub/sub connection to %s failed (%s); reconnecting in %.2fs",
                            self.settings.display_url, e, backoff)  # fmt: skip
                await self._close_pubsub()
                self.reconnects += 1
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self.settings.retry_max_backoff)

    def _push(self, reply: Any) -> None:
        """One push of the connection (from ``_run``, or straight from the transport: see
        ``SingleLink.read``); never raises. Nothing is routed once the hub stops (the
        connection may still receive while it closes)."""
        if self._task is None:
            return
        try:
            if isinstance(reply, list) and reply:
                self._route(reply)
            elif isinstance(reply, ResponseError):
                self._on_error_reply(reply)
        except Exception:
            log.exception("pub/sub: handling a push failed")

    def _route(self, raw: list[Any]) -> None:
        kind = raw[0]
        if kind in _MESSAGE and len(raw) == 3:
            channel, data, pattern = raw[1], raw[2], None
        elif (kind == b"pmessage" or kind == "pmessage") and len(raw) == 4:
            pattern, channel, data = raw[1], raw[2], raw[3]
        else:
            if _text(kind) in ("psubscribe", "subscribe", "ssubscribe") and len(raw) > 1:
                event = self._confirmed.get(_text(raw[1]))
                if event is not None:
                    event.set()
            return
        if pattern is None:  # a listened channel (broadcasts, doorbells): each name decoded once
            name = self._names.get(channel)
            if name is None:
                name = _text(channel)
                if name not in self._listeners:
                    return  # unsubscribed meanwhile
                self._names[channel] = name
            listener = self._listeners.get(name)
            if listener is not None:
                try:
                    listener(name, data)
                except Exception:
                    log.exception("pub/sub listener failed on %s", name)
            return
        name = _text(channel)  # any topic the pattern matches: not cached (they are unbounded)
        try:
            env = decode_json(data)
        except ProtocolError as e:
            log.warning("dropping an undecodable message on %s: %s", name, e.description)
            return
        msg = Message(env, source=name)
        subs = self._subs.get(_text(pattern), ())
        if self.verifier is None:
            for sub in subs:
                sub._put(msg)
            return

        def deliver() -> None:
            for sub in subs:
                if not sub._closed:
                    sub._put(msg)

        self.verifier.submit(name, data, env, deliver)


def _settle_all(waiters: list[asyncio.Future[None]], error: BaseException | None) -> None:
    for waiter in waiters:
        if waiter.done():
            continue
        if error is None:
            waiter.set_result(None)
        else:
            waiter.set_exception(error)

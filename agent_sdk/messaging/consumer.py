"""Reading an agent's streams: its inbox (group ``agent``) and its role queue (group ``members``).

One reader per stream, sharing the handler slots, never holding more entries than there are
free slots (readers reserve slots *before* they read; reservations are not reported as load):

1. while a stream may hold undelivered entries (``dirty``): ``XREADGROUP ... COUNT <free>``
   without blocking, until it returns fewer than asked;
2. then wait: the inbox, while at least two slots are free, blocks on ``XREADGROUP COUNT 1
   BLOCK`` with one slot reserved (lowest latency); if the role queue then needs that slot, it
   ends the read with ``CLIENT UNBLOCK`` (it returns as if timed out, taking nothing). Otherwise a
   stream is watched with ``XREAD BLOCK`` from the last id seen, which takes nothing and marks
   the stream dirty when it grows.

Around it: a lease loop (every heartbeat, ``lease.lua`` resets the idle time of the entries held,
``XCLAIM ... JUSTID``), a claim loop (every ``claim_interval``, ``claim.lua`` = ``XAUTOCLAIM``
of entries idle longer than the TTL, with their delivery counts), an ack loop (finished entries
are ``XACK``ed in batches; replies ack inside the reply script) and, on start, the takeover of
the inbox entries the agent's previous instance left pending. Entries that do not decode, have
expired, name no handler, or exhausted ``max_deliveries`` go to the dead-letter stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Coroutine
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from agent_sdk.connection import make_client
from agent_sdk.messaging.dispatch import (
    MAX_DELIVERIES_CODE,
    Dispatcher,
    Fields,
    StreamState,
    id_key,
    text,
)
from agent_sdk.messaging.handlers import HandlerRegistry, Message
from agent_sdk.messaging.scripts import Scripts
from agent_sdk.messaging.slots import Slots
from agent_sdk.settings import Settings
from schemas.envelope import Envelope
from schemas.keys import AGENT_GROUP, ROLE_GROUP

__all__ = ["MAX_DELIVERIES_CODE", "Consumer"]

log = logging.getLogger("agentbus.messaging")

_BLOCK_MS = 2000
_SEEN_COUNT = 64
_LEASE_CHUNK = 500
_PRUNE_EVERY = 50  # claim rounds


def _nogroup(e: BaseException) -> bool:
    if isinstance(e, BaseExceptionGroup):
        return any(_nogroup(x) for x in e.exceptions)
    return isinstance(e, ResponseError) and "NOGROUP" in str(e)


class Consumer:
    """Reads, dispatches and acknowledges the entries of one agent instance."""

    def __init__(
        self,
        client: aioredis.Redis,
        settings: Settings,
        scripts: Scripts,
        *,
        name: str,
        instance_id: str,
        role: str | None,
        handlers: HandlerRegistry,
        max_concurrency: int = 1,
        on_load: Callable[[int], None] | None = None,
    ) -> None:
        self.client = client
        self.settings = settings
        self.scripts = scripts
        self.name = name
        self.instance_id = instance_id
        self.handlers = handlers
        self.slots = Slots(max_concurrency, on_load)
        keys = settings.keys
        self.inbox = StreamState(keys.inbox(name), AGENT_GROUP)
        self.streams = [self.inbox]
        if role is not None:
            self.streams.append(StreamState(keys.role_queue(role), ROLE_GROUP))
        self.dispatcher = Dispatcher(
            client, settings, scripts, name=name, handlers=handlers, ack=self._ack
        )
        self._tasks: list[asyncio.Task[None]] = []
        self._work: set[asyncio.Task[None]] = set()
        self._ack_event: asyncio.Event | None = None
        self._started = False
        #: Block on the inbox with ``XREADGROUP`` while at least two slots are free (else watch
        #: it with ``XREAD`` like the role queue).
        self.direct_inbox = True
        self._blocker: aioredis.Redis | None = None  # one connection for that blocking read
        self._blocked_id: int | None = None  # its CLIENT ID while it blocks with a reservation
        #: Entries handled (any outcome) and claim rounds done: for tests and stats.
        self.handled = 0
        self.claim_rounds = 0

    # -- lifecycle -----------------------------------------------------------------------------
    async def start(self) -> None:
        if self._started:
            return
        self._started = True
        self._ack_event = asyncio.Event()
        if self.direct_inbox:
            self._blocker = make_client(self.settings, max_connections=1)
        await self._ensure_groups()
        self._tasks = [
            asyncio.create_task(self._guard("read", self._read_loop)),
            asyncio.create_task(self._guard("lease", self._lease_loop)),
            asyncio.create_task(self._guard("ack", self._ack_loop)),
        ]

    async def stop(self, grace: float | None = None) -> None:
        """Stop reading, let running handlers finish for ``grace`` seconds, flush acks."""
        if not self._started:
            return
        self._started = False
        grace = self.settings.shutdown_grace if grace is None else grace
        readers, others = self._tasks[:1] + self._tasks[3:], self._tasks[1:3]
        for task in readers:
            task.cancel()
        await asyncio.gather(*readers, return_exceptions=True)
        if self._work:
            _, late = await asyncio.wait(set(self._work), timeout=grace)
            for task in late:
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)
        with contextlib.suppress(Exception):
            await self._flush_acks()
        for task in others:
            task.cancel()
        await asyncio.gather(*others, return_exceptions=True)
        self._tasks = []
        blocker, self._blocker = self._blocker, None
        if blocker is not None:
            await blocker.aclose()

    async def __aenter__(self) -> Consumer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def in_flight(self) -> int:
        return self.slots.load

    async def _guard(self, what: str, loop: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """Run a background loop forever: log, back off, continue."""
        backoff = 0.05
        while True:
            try:
                await loop()
                return
            except asyncio.CancelledError:
                raise
            except (ResponseError, ExceptionGroup) as e:
                if _nogroup(e):
                    log.warning("%s: consumer group missing (Redis lost data?); recreating", what)
                    with contextlib.suppress(Exception):
                        await self._ensure_groups()
                else:
                    log.exception("%s loop of agent %s failed; retrying", what, self.name)
            except Exception:
                log.exception("%s loop of agent %s failed; retrying in %.2fs", what, self.name,
                              backoff)  # fmt: skip
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, self.settings.retry_max_backoff)

    async def _ensure_groups(self) -> None:
        for s in self.streams:
            try:
                await self.client.xgroup_create(s.key, s.group, id="0", mkstream=True)
            except ResponseError as e:
                if "BUSYGROUP" not in str(e):
                    raise

    # -- reading -------------------------------------------------------------------------------
    async def _read_loop(self) -> None:
        await self._takeover(self.inbox)
        if len(self._tasks) < 4:
            self._tasks.append(asyncio.create_task(self._guard("claim", self._claim_loop)))
        for s in self.streams:
            last: Any = await self.client.xrevrange(s.key, count=1)
            s.seen = text(last[0][0]) if last else "0-0"
            s.dirty = True  # read what is already there first
        async with asyncio.TaskGroup() as tg:
            for s in self.streams:
                tg.create_task(self._stream_loop(s))

    async def _stream_loop(self, s: StreamState) -> None:
        """Read one stream: non-blocking while it may hold undelivered entries, else block."""
        while True:
            if s.dirty and self.slots.free == 0 and s is not self.inbox:
                await self._unblock_inbox()  # its idle reservation is the slot this one needs
            await self.slots.wait_free()
            if s.dirty:
                await self._read_now(s)
            elif s is self.inbox and self._blocker is not None and self.slots.free >= 2:
                await self._read_blocking(s)
            else:
                woke: Any = await self.client.xread(
                    {s.key: s.seen}, count=_SEEN_COUNT, block=_BLOCK_MS
                )
                if woke:
                    s.dirty = True
                    self._advance(s, text(woke[0][1][-1][0]))

    @staticmethod
    def _advance(s: StreamState, entry_id: str) -> None:
        if id_key(entry_id) > id_key(s.seen):
            s.seen = entry_id

    async def _read_now(self, s: StreamState) -> None:
        """``XREADGROUP COUNT <free>`` without blocking; fewer than asked: the stream is clean."""
        n = self.slots.free
        if n <= 0:
            return
        self.slots.reserve(n)
        used = 0
        try:
            res: Any = await self.client.xreadgroup(
                s.group, self.instance_id, {s.key: ">"}, count=n
            )
            entries = res[0][1] if res else []
            if len(entries) < n:
                s.dirty = False
            used = self._take_entries(s, entries)
        finally:
            self.slots.settle(n, used)

    async def _read_blocking(self, s: StreamState) -> None:
        """``XREADGROUP COUNT 1 BLOCK``: one slot reserved while waiting (another stays free for
        the other stream, so it is never starved); the lowest latency when idle."""
        blocker = self._blocker
        assert blocker is not None
        client_id = int(await blocker.client_id())
        if self.slots.free < 2:
            return
        self.slots.reserve(1)
        self._blocked_id = client_id
        used = 0
        try:
            res: Any = await blocker.xreadgroup(
                s.group, self.instance_id, {s.key: ">"}, count=1, block=_BLOCK_MS
            )
            self._blocked_id = None
            entries = res[0][1] if res else []
            if entries:
                s.dirty = True
            used = self._take_entries(s, entries)
        finally:
            self._blocked_id = None
            self.slots.settle(1, used)

    async def _unblock_inbox(self) -> None:
        """End the inbox's blocking read (``CLIENT UNBLOCK``: it returns as if timed out, taking
        nothing), handing its reserved slot to the stream that has work waiting."""
        client_id, self._blocked_id = self._blocked_id, None
        if client_id is not None:
            await self.client.client_unblock(client_id)

    def _take_entries(self, s: StreamState, entries: list[Any]) -> int:
        if entries:
            self._advance(s, text(entries[-1][0]))
        used = 0
        for entry_id, fields in entries:
            if fields is None:  # deleted while pending: nothing to do
                continue
            used += 1
            self._dispatch(s, text(entry_id), fields, 1)
        return used

    async def _takeover(self, s: StreamState) -> None:
        """Claim every entry the agent's previous instance left pending in the inbox."""
        cursor = "0-0"
        while True:
            cursor = await self._claim(s, min_idle_ms=0, cursor=cursor)
            if cursor == "0-0":
                return

    async def _claim(self, s: StreamState, *, min_idle_ms: int, cursor: str) -> str:
        n = await self.slots.wait_free()
        self.slots.reserve(n)
        used = 0
        try:
            # Held now = ours: if the claim returns one, it is in our hands or was acked while
            # the claim ran (a stalled loop lets its own entries idle past the TTL); running it
            # again would be a duplicate without a crash behind it.
            held_before = set(s.held)
            next_cursor, entries, counts = await self.scripts.claim(
                keys=[s.key], args=[s.group, self.instance_id, min_idle_ms, cursor, n]
            )
            for (entry_id, flat), count in zip(entries, counts, strict=True):
                eid = text(entry_id)
                if eid in s.held or eid in held_before or flat is None:
                    continue
                fields = dict(zip(flat[::2], flat[1::2], strict=True))
                used += 1
                self._dispatch(s, eid, fields, int(count))
        finally:
            self.slots.settle(n, used)
        return text(next_cursor)

    async def _claim_loop(self) -> None:
        interval = self.settings.claim_interval
        while True:
            await asyncio.sleep(interval)
            for s in self.streams:
                if self.slots.free > 0:
                    s.cursor = await self._claim(
                        s, min_idle_ms=self.settings.ttl_ms, cursor=s.cursor
                    )
            self.claim_rounds += 1
            if self.claim_rounds % _PRUNE_EVERY == 0:
                for s in self.streams:
                    await self.prune_consumers(s)

    async def prune_consumers(self, s: StreamState) -> list[str]:
        """Delete consumers of dead instances: nothing pending, idle for 10 TTLs (a live one
        that is deleted is simply recreated by its next read)."""
        idle_limit = 10 * self.settings.ttl_ms
        consumers: Any = await self.client.xinfo_consumers(s.key, s.group)
        gone = []
        for c in consumers:
            name = text(c["name"])
            if name != self.instance_id and int(c["pending"]) == 0 and int(c["idle"]) > idle_limit:
                await self.client.xgroup_delconsumer(s.key, s.group, name)
                gone.append(name)
        return gone

    # -- leases and acks -----------------------------------------------------------------------
    async def _lease_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.heartbeat_interval)
            await self.renew_leases()

    async def renew_leases(self) -> None:
        for s in self.streams:
            ids = list(s.held)
            for i in range(0, len(ids), _LEASE_CHUNK):
                chunk = ids[i : i + _LEASE_CHUNK]
                lost = await self.scripts.lease(
                    keys=[s.key], args=[s.group, self.instance_id, *chunk]
                )
                for eid in lost:
                    s.held.discard(text(eid))

    def _ack(self, s: StreamState, entry_id: str) -> None:
        s.acks.append(entry_id)
        if self._ack_event is not None:
            self._ack_event.set()

    async def _ack_loop(self) -> None:
        assert self._ack_event is not None
        while True:
            await self._ack_event.wait()
            self._ack_event.clear()
            await self._flush_acks()

    async def _flush_acks(self) -> None:
        for s in self.streams:
            ids, s.acks = s.acks, []
            if not ids:
                continue
            try:
                await self.client.xack(s.key, s.group, *ids)
            except BaseException:
                s.acks[:0] = ids
                raise
            s.held.difference_update(ids)

    # -- handling ------------------------------------------------------------------------------
    def _dispatch(self, s: StreamState, entry_id: str, fields: Fields, count: int) -> None:
        s.held.add(entry_id)
        task = asyncio.create_task(self._process(s, entry_id, fields, count))
        self._work.add(task)
        task.add_done_callback(self._work.discard)

    async def _process(self, s: StreamState, entry_id: str, fields: Fields, count: int) -> None:
        try:
            await self.dispatcher.handle_entry(s, entry_id, fields, count)
        except asyncio.CancelledError:
            s.held.discard(entry_id)  # stays pending: redelivered to whoever claims it
            raise
        except Exception:
            s.held.discard(entry_id)
            log.exception("agent %s failed on entry %s of %s; it will be redelivered",
                          self.name, entry_id, s.key)  # fmt: skip
        finally:
            self.handled += 1
            self.slots.give(1)

    def handle_live(self, env: Envelope, channel: str) -> None:
        """Run the handler of a broadcast received on pub/sub (no ack, no reply)."""
        if env.type not in self.handlers:
            log.debug("no handler for broadcast %r on %s", env.type, channel)
            return
        task = asyncio.create_task(self.dispatcher.live(Message(env, source=channel)))
        self._work.add(task)
        task.add_done_callback(self._work.discard)

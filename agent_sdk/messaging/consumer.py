"""Reading an agent's streams: its inbox and its role queue, both through the group ``agent``.

One reader for both streams, never reading more entries than there are free handler slots
(slots are reserved *before* a read; reservations are not reported as load; an entry's slot is
handed back once its handler returned and its reply or ack is written). It loops on one
``XREADGROUP GROUP agent <instance> COUNT <free / 2> BLOCK <ms> STREAMS <inbox> <queue> > >``:
it returns at once when either stream holds undelivered entries, else the first entry to arrive
wakes it, in one round trip. ``COUNT`` applies per stream, so with one free slot and two
streams a read may return two entries; the one beyond the free slot is parked (held, its lease
renewed) and dispatched first when a slot frees. To keep that rare, while both streams are
known to hold more (a stream is "dirty" when its last read returned ``COUNT`` entries) and fewer
slots are free than there are streams, the streams take turns with single-stream reads.

The reader also claims: every ``claim_interval`` (a blocking read times out in time for it),
``claim.lua`` = ``XAUTOCLAIM`` of entries idle longer than the TTL, with their delivery counts,
as free slots allow. Around it: a lease loop (every heartbeat, ``lease.lua`` resets the idle
time of the entries held, ``XCLAIM ... JUSTID``), an ack loop (finished entries
are ``XACK``ed in batches; replies ack inside the reply script) and, on start, the takeover of
the inbox entries the agent's previous instance left pending. Entries that do not decode, have
expired, name no handler, or exhausted ``max_deliveries`` go to the dead-letter stream (a request
that does not decode is answered with the error first, when its raw fields allow: see
``Dispatcher.handle_entry``). A broadcast of a type without a handler is counted (usage stats,
``unhandled_broadcasts``), not run.

Fencing (``agent_sdk.fence``): nothing is dispatched while the instance's lease has lapsed.
Entries a read or claim returns meanwhile stay pending, unrenewed, so the name's holder (this
instance once the registry holds it again, or the instance that took the name) claims them
once idle for a TTL; leases are not renewed; broadcasts are dropped. When the name is lost for
good the reader ends and the entries still pending for this instance are made claimable at once
(``XCLAIM ... IDLE``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import deque
from collections.abc import Callable, Coroutine
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from agent_sdk.fence import Fence
from agent_sdk.lane import Lane
from agent_sdk.messaging.dispatch import (
    MAX_DELIVERIES_CODE,
    Dispatcher,
    Fields,
    StreamState,
    text,
)
from agent_sdk.messaging.handlers import HandlerRegistry, Message
from agent_sdk.messaging.scripts import Scripts
from agent_sdk.messaging.slots import Slots
from agent_sdk.messaging.workers import BROADCAST_QUEUE_MAX, BROADCAST_WORKERS, WorkerPool
from agent_sdk.settings import Settings
from agent_sdk.tasks import cancel_all
from schemas.envelope import Envelope
from schemas.keys import AGENT_GROUP

#: Broadcast types without a handler logged at INFO (once each); any others at DEBUG.
_UNHANDLED_TYPES_LOGGED = 100

__all__ = ["MAX_DELIVERIES_CODE", "Consumer"]

log = logging.getLogger("agentbus.messaging")

_BLOCK_MS = 2000
_LEASE_CHUNK = 500
_PRUNE_EVERY = 50  # claim rounds


def _nogroup(e: BaseException) -> bool:
    """The group is gone: ``NOGROUP`` (Redis lost the stream), or Redis 7's ``UNBLOCKED`` (the
    stream was deleted while a read was blocked on it)."""
    if isinstance(e, BaseExceptionGroup):
        return any(_nogroup(x) for x in e.exceptions)
    return isinstance(e, ResponseError) and ("NOGROUP" in str(e) or "UNBLOCKED" in str(e))


def _by_stream(reply: Any) -> dict[str, Any]:
    """A raw ``XREADGROUP`` reply by stream key: a map (RESP3) or pairs (RESP2), or nil."""
    if not reply:
        return {}
    pairs = reply.items() if isinstance(reply, dict) else reply
    return {text(key): entries for key, entries in pairs}


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
        fence: Fence | None = None,
    ) -> None:
        self.client = client
        self.fence = fence
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
            self.streams.append(StreamState(keys.role_queue(role), AGENT_GROUP))
        self._by_key = {s.key: s for s in self.streams}
        #: Entries read beyond the free slots (see the module docstring), dispatched first.
        self._parked: deque[tuple[StreamState, str, Fields]] = deque()
        self.dispatcher = Dispatcher(
            client, settings, scripts, name=name, handlers=handlers, ack=self._ack
        )
        self._tasks: list[asyncio.Task[None]] = []
        #: Handlers of stream entries, no task per entry. A slot is handed back when its
        #: handler returns, before the reply or ack round trip: up to ``max_concurrency``
        #: handlers run while as many entries may still be settling, hence twice the workers.
        self.entries: WorkerPool[tuple[StreamState, str, Fields, int]] = WorkerPool(
            self._process_item, workers=2 * max_concurrency, what="entry handler"
        )
        #: Handlers of broadcasts (pub/sub): a bounded queue and a few workers.
        self.live: WorkerPool[Message] = WorkerPool(
            self.dispatcher.live, queue_max=BROADCAST_QUEUE_MAX, workers=BROADCAST_WORKERS,
            what="broadcast handler",
        )  # fmt: skip
        self._ack_event: asyncio.Event | None = None
        self._started = False
        self._reader: Lane | None = None  # the connection of the (blocking) reads
        self._acker: Lane | None = None  # the connection of the batched acks
        #: True while the blocking read waits (for tests and stats).
        self.blocking = False
        #: Entries handled (any outcome) and claim rounds done: for tests and stats.
        self.handled = 0
        self.claim_rounds = 0
        #: Entries and broadcasts left alone because the lease had lapsed (fencing).
        self.fenced = 0
        #: Broadcasts of types this agent has no handler for (counted, not run).
        self.unhandled_broadcasts = 0
        self._unhandled_types: set[str] = set()

    # -- lifecycle -----------------------------------------------------------------------------
    async def start(self) -> None:
        if self._started:
            return
        self._started = True
        self._ack_event = asyncio.Event()
        self._reader = Lane(self.client)
        self._acker = Lane(self.client)
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
        readers, others = self._tasks[:1], self._tasks[1:]
        await cancel_all(readers)
        await asyncio.gather(self.entries.stop(grace), self.live.stop(grace))
        await cancel_all(others)  # the lease and ack loops (an ack in flight puts its ids back)
        with contextlib.suppress(Exception):
            await self._flush_acks()
        self._tasks = []
        for lane in (self._reader, self._acker):
            if lane is not None:
                await lane.aclose()
        await self.dispatcher.replier.batcher.aclose()
        self._reader = self._acker = None

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
        """Read (and, every ``claim_interval``, claim) until cancelled or the name is lost."""
        if self.fence is not None and self.fence.lost is not None:
            return
        await self._takeover(self.inbox)
        for s in self.streams:
            s.dirty = True  # read what is already there first
        interval = self.settings.claim_interval
        next_claim = time.monotonic() + interval
        turn = 0
        while True:
            if self.fence is not None and not self.fence.valid:
                if not await self._wait_fence():
                    return  # the name is lost: read nothing more
                next_claim = time.monotonic() + interval
            left = next_claim - time.monotonic()
            if left <= 0:
                await self._claim_round()
                next_claim = time.monotonic() + interval
                continue
            free = await self.slots.wait_free(timeout=left)
            if free == 0:
                continue  # busy until the next claim round
            if self._parked:
                self._dispatch_parked(free)
                continue
            k = len(self.streams)
            if free < k and all(s.dirty for s in self.streams):
                turn += 1  # one slot, both streams with work: they take turns, without blocking
                await self._read([self.streams[turn % k]], free, None)
            else:  # wake for new entries, or in time for the next claim round
                block = min(_BLOCK_MS, math.ceil(left * 1000))
                await self._read(self.streams, max(1, free // k), block)

    async def _read(self, streams: list[StreamState], count: int, block_ms: int | None) -> None:
        """One ``XREADGROUP COUNT <count> [BLOCK <ms>]`` over ``streams`` (``COUNT`` is per
        stream): a stream that returns ``count`` entries may hold more (dirty), fewer: clean.
        Entries beyond the free slots are parked."""
        reader = self._reader
        assert reader is not None
        n = min(self.slots.free, count * len(streams))
        self.slots.reserve(n)
        used = 0
        self.blocking = block_ms is not None
        command: list[Any] = ["XREADGROUP", "GROUP", AGENT_GROUP, self.instance_id, "COUNT", count]
        if block_ms is not None:
            command += ("BLOCK", max(1, block_ms))
        command += ("STREAMS", *[s.key for s in streams], *[">"] * len(streams))
        try:
            res: Any = await reader.call(*command)
            self.blocking = False
            got = _by_stream(res)
            for s in streams:
                entries = got.get(s.key, [])
                s.dirty = len(entries) >= count
                used += self._take_entries(s, entries, n - used)
        finally:
            self.blocking = False
            self.slots.settle(n, used)

    @property
    def _fenced_now(self) -> bool:
        return self.fence is not None and not self.fence.valid

    async def _wait_fence(self) -> bool:
        """The lease lapsed: drop what is parked (it stays pending, for whoever holds the name
        once it idles a TTL), wait for the lease (True) or the loss of the name (False)."""
        assert self.fence is not None
        for s, eid, _ in self._parked:
            s.held.discard(eid)
            self.fenced += 1
        self._parked.clear()
        log.info("agent %s: lease lapsed; handling nothing until the registry holds this "
                 "instance again", self.name)  # fmt: skip
        if await self.fence.wait_valid():
            log.info("agent %s: lease renewed; handling again", self.name)
            return True
        try:
            await self.release_pending()
        except Exception as e:  # they are claimed after a TTL instead
            log.warning("agent %s: could not hand back pending entries: %s", self.name, e)
        return False

    async def release_pending(self) -> int:
        """Make every entry pending for this instance that no handler holds claimable by
        others at once (``XCLAIM <ids> IDLE``): the instance lost its name."""
        released = 0
        idle = 10 * self.settings.ttl_ms
        for s in self.streams:
            rows: Any = await self.client.xpending_range(
                s.key, s.group, min="-", max="+", count=10_000, consumername=self.instance_id
            )
            ids: list[Any] = [i for i in (text(r["message_id"]) for r in rows) if i not in s.held]
            if ids:
                await self.client.xclaim(
                    s.key, s.group, self.instance_id, 0, ids, idle=idle, justid=True
                )
                released += len(ids)
        if released:
            log.info("agent %s: %d pending entries handed back", self.name, released)
        return released

    def _take_entries(self, s: StreamState, entries: list[Any], room: int) -> int:
        """Dispatch up to ``room`` entries; park the rest. Returns the slots used."""
        if self._fenced_now:  # read while the lease lapsed: left pending, unrenewed
            self.fenced += len(entries)
            return 0
        used = 0
        for entry_id, flat in entries:
            if flat is None:  # deleted while pending: nothing to do
                continue
            eid = text(entry_id)
            fields = dict(zip(flat[::2], flat[1::2], strict=True))
            if used < room:
                used += 1
                self._dispatch(s, eid, fields, 1)
            else:
                s.held.add(eid)
                self._parked.append((s, eid, fields))
        return used

    def _dispatch_parked(self, free: int) -> None:
        while self._parked and free > 0:
            s, eid, fields = self._parked.popleft()
            free -= 1
            if eid not in s.held:  # its lease was lost meanwhile: another consumer has it
                continue
            self.slots.take(1)
            self._dispatch(s, eid, fields, 1)

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
            if self._fenced_now:  # claimed while the lease lapsed: left pending, unrenewed
                self.fenced += len(entries)
                entries = counts = []
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

    async def _claim_round(self) -> None:
        """Claim entries idle past the TTL (a dead or stalled consumer's), as slots allow."""
        for s in self.streams:
            if self.slots.free > 0:
                s.cursor = await self._claim(s, min_idle_ms=self.settings.ttl_ms, cursor=s.cursor)
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
        if self._fenced_now:  # the name's holder must be able to claim them
            return
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
        """One round trip: an ``XACK`` per stream with finished entries."""
        batch = [(s, s.acks) for s in self.streams if s.acks]
        if not batch or self._acker is None:  # nothing to do, or not started
            return
        for s, _ in batch:
            s.acks = []
        try:
            replies = await self._acker.execute(
                [("XACK", s.key, s.group, *ids) for s, ids in batch]
            )
            for reply in replies:
                if isinstance(reply, BaseException):
                    raise reply
        except BaseException:
            for s, ids in batch:
                s.acks[:0] = ids
            raise
        for s, ids in batch:
            s.held.difference_update(ids)

    # -- handling ------------------------------------------------------------------------------
    def _dispatch(self, s: StreamState, entry_id: str, fields: Fields, count: int) -> None:
        s.held.add(entry_id)
        self.entries.put((s, entry_id, fields, count))

    async def _process_item(self, item: tuple[StreamState, str, Fields, int]) -> None:
        await self._process(*item)

    async def _process(self, s: StreamState, entry_id: str, fields: Fields, count: int) -> None:
        slot = _Slot(self.slots)
        try:
            await self.dispatcher.handle_entry(s, entry_id, fields, count, slot.give)
        except asyncio.CancelledError:
            s.held.discard(entry_id)  # stays pending: redelivered to whoever claims it
            raise
        except Exception:
            s.held.discard(entry_id)
            log.exception("agent %s failed on entry %s of %s; it will be redelivered",
                          self.name, entry_id, s.key)  # fmt: skip
        finally:
            self.handled += 1
            slot.give()

    def handle_live(self, env: Envelope, channel: str) -> None:
        """Queue the handler of a broadcast received on pub/sub (no ack, no reply)."""
        if env.type not in self.handlers:
            # not an error (a broadcast reaches every agent, handler or not), but never silent:
            # counted in the usage stats (as UNKNOWN_TYPE), logged once per type
            self.unhandled_broadcasts += 1
            self.handlers.observe(env.type, 0.0, failed=False)
            level = logging.DEBUG
            seen = self._unhandled_types
            if env.type not in seen and len(seen) < _UNHANDLED_TYPES_LOGGED:
                seen.add(env.type)
                level = logging.INFO
            log.log(level, "%s has no handler for broadcast %r on %s: counted, not handled",
                    self.name, env.type, channel)  # fmt: skip
            return
        if self._fenced_now:
            self.fenced += 1
            return
        self.live.put(Message(env, source=channel))


class _Slot:
    """The handler slot of one entry: handed back once, when its handler has returned (so the
    reader reads again while the reply or ack is on its way) or, failing that, when the entry
    is done with."""

    __slots__ = ("slots",)

    def __init__(self, slots: Slots) -> None:
        self.slots: Slots | None = slots

    def give(self) -> None:
        slots, self.slots = self.slots, None
        if slots is not None:
            slots.give(1)

"""Reading an agent's streams: its inbox (group ``agent``) and its role queue (group ``members``).

One read loop serves both streams without ever holding more entries than there are free
handler slots:

1. wait for a free slot; ``XREADGROUP ... COUNT <free>`` (non-blocking, the slots reserved first)
   on each stream that may hold undelivered entries, until it returns fewer than asked;
2. then block on ``XREAD BLOCK`` over both streams from the last ids seen: it wakes as soon as
   either stream grows, without taking anything, and marks that stream for step 1.

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
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from agent_sdk import telemetry
from agent_sdk.messaging.deadletter import dead_letter
from agent_sdk.messaging.handlers import HandlerRegistry, Message, Outcome
from agent_sdk.messaging.replier import Replier
from agent_sdk.messaging.scripts import Scripts
from agent_sdk.messaging.slots import Slots
from agent_sdk.settings import Settings
from schemas.envelope import Envelope, Kind, decode_fields
from schemas.errors import ErrorCode, ProtocolError
from schemas.keys import AGENT_GROUP, ROLE_GROUP

__all__ = ["MAX_DELIVERIES_CODE", "Consumer"]

log = logging.getLogger("agentbus.messaging")

#: Dead-letter code of an entry that failed ``max_deliveries`` times.
MAX_DELIVERIES_CODE = "max_deliveries"
_BLOCK_MS = 2000
_SEEN_COUNT = 64
_LEASE_CHUNK = 500
_PRUNE_EVERY = 50  # claim rounds

Fields = dict[Any, Any]


def _text(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else v


def _id_key(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


@dataclass(slots=True)
class _Stream:
    key: str
    group: str
    #: Entries this instance works on (lease renewed), by entry id.
    held: set[str] = field(default_factory=set)
    #: Finished entries waiting for the next batched XACK.
    acks: list[str] = field(default_factory=list)
    seen: str = "0-0"
    #: May hold entries not yet delivered to the group (read it before blocking).
    dirty: bool = True
    cursor: str = "0-0"


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
        self.inbox = _Stream(keys.inbox(name), AGENT_GROUP)
        self.streams = [self.inbox]
        if role is not None:
            self.streams.append(_Stream(keys.role_queue(role), ROLE_GROUP))
        self.replier = Replier(client, settings, scripts, name)
        self._tasks: list[asyncio.Task[None]] = []
        self._work: set[asyncio.Task[None]] = set()
        self._ack_event: asyncio.Event | None = None
        self._started = False
        self._turn = 0
        #: Entries handled (any outcome) and claim rounds done: for tests and stats.
        self.handled = 0
        self.claim_rounds = 0

    # -- lifecycle -----------------------------------------------------------------------------
    async def start(self) -> None:
        if self._started:
            return
        self._started = True
        self._ack_event = asyncio.Event()
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

    async def __aenter__(self) -> Consumer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def in_flight(self) -> int:
        return self.slots.used

    async def _guard(self, what: str, loop: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """Run a background loop forever: log, back off, continue."""
        backoff = 0.05
        while True:
            try:
                await loop()
                return
            except asyncio.CancelledError:
                raise
            except ResponseError as e:
                if "NOGROUP" in str(e):
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
            s.seen = _text(last[0][0]) if last else "0-0"
        for s in self.streams:
            s.dirty = True  # read what is already there first
        while True:
            await self.slots.wait_free()
            if await self._drain():
                continue
            woke: Any = await self.client.xread(
                {s.key: s.seen for s in self.streams}, count=_SEEN_COUNT, block=_BLOCK_MS
            )
            for key, entries in woke or ():
                s = self._stream(_text(key))
                s.dirty = True
                self._advance(s, _text(entries[-1][0]))

    def _stream(self, key: str) -> _Stream:
        return next(s for s in self.streams if s.key == key)

    @staticmethod
    def _advance(s: _Stream, entry_id: str) -> None:
        if _id_key(entry_id) > _id_key(s.seen):
            s.seen = entry_id

    async def _drain(self) -> bool:
        """Non-blocking ``XREADGROUP`` on the streams that may hold new entries (``dirty``), as
        many entries as free slots; a stream that returns fewer than asked is clean again."""
        dirty = [s for s in self.streams if s.dirty]
        if not dirty:
            return False
        self._turn += 1
        if self._turn % 2 and len(dirty) > 1:
            dirty.reverse()  # fairness between inbox and role queue
        for s in dirty:
            n = self.slots.free
            if n <= 0:
                break
            self.slots.take(n)
            used = 0
            try:
                res: Any = await self.client.xreadgroup(
                    s.group, self.instance_id, {s.key: ">"}, count=n
                )
                entries = res[0][1] if res else []
                if len(entries) < n:
                    s.dirty = False
                if entries:
                    self._advance(s, _text(entries[-1][0]))
                for entry_id, fields in entries:
                    if fields is None:  # deleted while pending: nothing to do
                        continue
                    used += 1
                    self._dispatch(s, _text(entry_id), fields, 1)
            finally:
                self.slots.give(n - used)
        return True

    async def _takeover(self, s: _Stream) -> None:
        """Claim every entry the agent's previous instance left pending in the inbox."""
        cursor = "0-0"
        while True:
            cursor = await self._claim(s, min_idle_ms=0, cursor=cursor)
            if cursor == "0-0":
                return

    async def _claim(self, s: _Stream, *, min_idle_ms: int, cursor: str) -> str:
        n = await self.slots.wait_free()
        self.slots.take(n)
        used = 0
        try:
            next_cursor, entries, counts = await self.scripts.claim(
                keys=[s.key], args=[s.group, self.instance_id, min_idle_ms, cursor, n]
            )
            for (entry_id, flat), count in zip(entries, counts, strict=True):
                eid = _text(entry_id)
                if eid in s.held or flat is None:
                    continue
                fields = dict(zip(flat[::2], flat[1::2], strict=True))
                used += 1
                self._dispatch(s, eid, fields, int(count))
        finally:
            self.slots.give(n - used)
        return _text(next_cursor)

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

    async def prune_consumers(self, s: _Stream) -> list[str]:
        """Delete consumers of dead instances: nothing pending, idle for 10 TTLs (a live one
        that is deleted is simply recreated by its next read)."""
        idle_limit = 10 * self.settings.ttl_ms
        consumers: Any = await self.client.xinfo_consumers(s.key, s.group)
        gone = []
        for c in consumers:
            name = _text(c["name"])
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
                    s.held.discard(_text(eid))

    def _ack(self, s: _Stream, entry_id: str) -> None:
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
    def _dispatch(self, s: _Stream, entry_id: str, fields: Fields, count: int) -> None:
        s.held.add(entry_id)
        task = asyncio.create_task(self._process(s, entry_id, fields, count))
        self._work.add(task)
        task.add_done_callback(self._work.discard)

    async def _process(self, s: _Stream, entry_id: str, fields: Fields, count: int) -> None:
        try:
            await self._handle_entry(s, entry_id, fields, count)
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

    async def _to_dead_letter(
        self, s: _Stream, entry_id: str, fields: Fields, reason: str, code: str
    ) -> None:
        log.warning("dead-lettering entry %s of %s: %s", entry_id, s.key, reason)
        mtype = fields.get(b"type", fields.get("type"))
        telemetry.record_dead_lettered(_text(mtype) if mtype is not None else None, code)
        await dead_letter(self.client, self.scripts, self.settings, source=s.key,
                          entry_id=entry_id, fields=fields, reason=reason, code=code,
                          group=s.group)  # fmt: skip
        s.held.discard(entry_id)

    async def _handle_entry(self, s: _Stream, entry_id: str, fields: Fields, count: int) -> None:
        try:
            env = decode_fields(fields, entry_id)
        except ProtocolError as e:
            await self._to_dead_letter(s, entry_id, fields, e.description, e.code)
            return
        if count > self.settings.max_deliveries:
            reason = f"not handled after {count - 1} deliveries (max_deliveries)"
            await self._to_dead_letter(s, entry_id, fields, reason, MAX_DELIVERIES_CODE)
            return
        if env.expired():
            reason = f"deadline {env.deadline} passed before it was handled"
            await self._to_dead_letter(s, entry_id, fields, reason, ErrorCode.DEADLINE_EXCEEDED)
            return
        msg = Message(env, delivery_count=count, source=s.key, entry_id=entry_id)
        telemetry.record_received(env.type)
        with telemetry.consumer_span(
            env.target or self.name, env.type, headers=env.headers, message_id=env.id,
            conversation_id=env.correlation_id or (env.id if env.kind is Kind.REQUEST else None),
        ) as span:  # fmt: skip
            outcome = await self.handlers.handle(msg)
            if outcome.error is not None:
                telemetry.mark_error(span, outcome.error.code, outcome.error.description)
                telemetry.record_failed(env.type, outcome.error.code)
            await self._settle(s, entry_id, fields, env, outcome, count)

    async def _settle(
        self, s: _Stream, entry_id: str, fields: Fields, env: Envelope, outcome: Outcome,
        count: int,
    ) -> None:  # fmt: skip
        """Reply, acknowledge, dead-letter or leave for redelivery, by outcome."""
        if env.kind is Kind.REQUEST and env.reply_to:
            ack = [entry_id, *s.acks]
            s.acks = []
            try:
                await self.replier.reply(env, outcome, stream=s.key, group=s.group, ack=ack)
            except BaseException:
                s.acks[:0] = ack[1:]
                raise
            s.held.difference_update(ack)
        elif outcome.ok:
            self._ack(s, entry_id)
        elif outcome.final:
            assert outcome.error is not None
            await self._to_dead_letter(s, entry_id, fields, outcome.error.description,
                                       outcome.error.code)  # fmt: skip
        else:
            # A failed delivery: stop renewing the lease; after the TTL a claim redelivers it.
            s.held.discard(entry_id)
            log.warning("message %s (%r) failed on delivery %d; it will be retried",
                        env.id, env.type, count)  # fmt: skip

    # -- live (pub/sub) messages ---------------------------------------------------------------
    def handle_live(self, env: Envelope, channel: str) -> None:
        """Run the handler of a broadcast received on pub/sub (no ack, no reply)."""
        if env.type not in self.handlers:
            log.debug("no handler for broadcast %r on %s", env.type, channel)
            return
        task = asyncio.create_task(self._live(Message(env, source=channel)))
        self._work.add(task)
        task.add_done_callback(self._work.discard)

    async def _live(self, msg: Message) -> None:
        telemetry.record_received(msg.type)
        with telemetry.consumer_span(
            msg.target or self.name, msg.type, headers=msg.headers, message_id=msg.id
        ) as span:
            outcome: Outcome = await self.handlers.handle(msg)
            if outcome.error is not None:
                telemetry.mark_error(span, outcome.error.code, outcome.error.description)
                telemetry.record_failed(msg.type, outcome.error.code)
        if not outcome.ok and outcome.error is not None:
            log.warning("broadcast %s (%r) failed: %s", msg.id, msg.type, outcome.error.description)

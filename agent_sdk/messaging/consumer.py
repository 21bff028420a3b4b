"""What one agent does with the entries its host reads for it (``agent_sdk.messaging.reader``).

An agent reads its inbox and its role queue through the group ``agent``, as the consumer named
by its instance id; the host's ``Reader`` does the reading and claiming for all its agents and
hands each agent what was read for it. Here: never more entries than free handler slots (slots
are reserved *before* a read; reservations are not reported as load; an entry's slot is handed
back once its handler returned and its reply or ack is written), the handlers (a worker pool,
no task per entry), acks (batched by the reader), the entries held (their leases renewed by the
reader), and on stop the hand-back of what the agent took but did not start.

Entries that do not decode, have expired, name no handler, or exhausted ``max_deliveries`` go
to the dead-letter stream (a request that does not decode is answered with the error first,
when its raw fields allow: see ``Dispatcher.handle_entry``). A broadcast of a type without a
handler is counted (usage stats, ``unhandled_broadcasts``), not run.

Fencing (``agent_sdk.fence``): nothing is dispatched while the instance's lease has lapsed.
The reader does not read for it; entries a read or claim returns meanwhile stay pending,
unrenewed, so the name's holder claims them once idle for a TTL; broadcasts are dropped. When
the lease runs again its streams are read again; when the name is lost for good the entries
still pending for this instance are made claimable at once (``XCLAIM ... IDLE``).
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import redis.asyncio as aioredis

from agent_sdk.fence import Fence
from agent_sdk.messaging.batcher import Op
from agent_sdk.messaging.dispatch import MAX_DELIVERIES_CODE, Dispatcher, Fields, StreamState, text
from agent_sdk.messaging.handlers import HandlerRegistry, Message
from agent_sdk.messaging.scripts import Scripts
from agent_sdk.messaging.slots import Slots
from agent_sdk.messaging.workers import BROADCAST_QUEUE_MAX, BROADCAST_WORKERS, WorkerPool
from agent_sdk.security import UNVERIFIED
from agent_sdk.settings import Settings
from agent_sdk.tasks import cancel_and_wait
from agent_sdk.writethrough import WriteThrough
from schemas.envelope import Envelope, Kind
from schemas.keys import AGENT_GROUP

if TYPE_CHECKING:
    from agent_sdk.messaging.batcher import Batcher
    from agent_sdk.messaging.reader import Joining, Reader
    from agent_sdk.messaging.topics import ChannelCallback

#: Broadcast types without a handler logged at INFO (once each); any others at DEBUG.
_UNHANDLED_TYPES_LOGGED = 100

__all__ = ["MAX_DELIVERIES_CODE", "Consumer"]

log = logging.getLogger("agentbus.messaging")


class Consumer:
    """Dispatches, settles and hands back the entries of one agent instance."""

    def __init__(
        self,
        client: aioredis.Redis,
        settings: Settings,
        scripts: Scripts,
        reader: Reader,
        *,
        name: str,
        instance_id: str,
        role: str | None,
        handlers: HandlerRegistry,
        max_concurrency: int = 1,
        on_load: Callable[[int], None] | None = None,
        fence: Fence | None = None,
        reply_batcher: Batcher | None = None,
        direct: WriteThrough | None = None,
    ) -> None:
        self.client = client
        self.fence = fence
        self.settings = settings
        self.scripts = scripts
        self.reader = reader
        self.name = name
        self.instance_id = instance_id
        self.role = role
        self.handlers = handlers
        self.slots = Slots(max_concurrency, on_load)
        keys = settings.keys
        self.inbox = StreamState(keys.inbox(name), AGENT_GROUP)
        #: The stream families it reads (its inbox, its role queue): their normal streams' keys.
        self.families = [self.inbox.key]
        self.streams = [self.inbox]
        if role is not None:
            self.families.append(keys.role_queue(role))
            self.streams.append(StreamState(keys.role_queue(role), AGENT_GROUP))
        self._by_key = {s.key: s for s in self.streams}
        # its dispatcher is made on first use, too (the replies it sends go out as ``name``)
        self._dispatcher: Dispatcher | None = None
        self._reply_batcher = reply_batcher
        self._direct_writer = direct
        # The handler pools are made when first needed: many agents of a host never get a
        # broadcast or a direct request (made lazily, a started hosted agent is 20.1 KB against
        # 23.6: docs/BENCHMARKS.md, run F)
        self._max_concurrency = max_concurrency
        self._entries: WorkerPool[tuple[StreamState, str, Fields, int]] | None = None
        self._live: WorkerPool[Message] | None = None
        self._direct: WorkerPool[Message] | None = None
        #: Entries read beyond the free slots (a read asks for one more than it has room for,
        #: so that it knows whether the stream holds more without reading it again).
        self.parked: deque[tuple[StreamState, str, Fields, int]] = deque()
        self.accepting = False
        #: A join under way (``prepare`` .. ``start``).
        self.joining: Joining | None = None
        self._stopping = False
        self._fence_watch: asyncio.Task[None] | None = None
        #: Entries handled (any outcome): for tests and stats.
        self.handled = 0
        #: Entries and broadcasts left alone because the lease had lapsed (fencing).
        self.fenced = 0
        #: Broadcasts of types this agent has no handler for (counted, not run).
        self.unhandled_broadcasts = 0
        self._unhandled_types: set[str] = set()

    def __repr__(self) -> str:
        return f"Consumer({self.name!r}, {self.instance_id!r})"

    # -- handler pools (made on first use) -----------------------------------------------------
    @property
    def dispatcher(self) -> Dispatcher:
        """Runs this agent's handlers and settles what they took (made on first use: a host
        starting many agents at once does not pay for it in each start)."""
        if self._dispatcher is None:
            self._dispatcher = Dispatcher(
                self.client, self.settings, self.scripts, name=self.name,
                handlers=self.handlers, ack=self._ack, batcher=self._reply_batcher,
                on_retry=self._retry_later, direct=self._direct_writer,
            )  # fmt: skip
        return self._dispatcher

    @property
    def entries(self) -> WorkerPool[tuple[StreamState, str, Fields, int]]:
        """Handlers of stream entries, no task per entry. A slot is handed back when its
        handler returns, before the reply or ack round trip: up to ``max_concurrency``
        handlers run while as many entries may still be settling, hence twice the workers."""
        if self._entries is None:
            self._entries = WorkerPool(
                self._process_item, workers=2 * self._max_concurrency, what="entry handler"
            )
        return self._entries

    @property
    def live(self) -> WorkerPool[Message]:
        """Handlers of broadcasts (pub/sub): a bounded queue and a few workers."""
        if self._live is None:
            self._live = WorkerPool(
                self.dispatcher.live, queue_max=BROADCAST_QUEUE_MAX, workers=BROADCAST_WORKERS,
                what="broadcast handler",
            )  # fmt: skip
        return self._live

    @property
    def direct(self) -> WorkerPool[Message]:
        """Requests sent with ``durable=False`` (pub/sub, at-most-once): a bounded queue,
        ``max_concurrency`` workers of their own."""
        if self._direct is None:
            self._direct = WorkerPool(
                self._direct_item, queue_max=BROADCAST_QUEUE_MAX,
                workers=self._max_concurrency, what="direct request handler",
            )  # fmt: skip
        return self._direct

    # -- lifecycle -----------------------------------------------------------------------------
    def prepare(self, channels: dict[str, ChannelCallback] | None = None) -> None:
        """Begin joining the host's reader without waiting (``Reader.prepare``; ``channels``:
        pub/sub channels of this agent to listen to alongside its doorbells). Nothing is taken
        before ``start``."""
        if self.joining is None and not self.accepting:
            self.joining = self.reader.prepare(self, channels)

    async def start(self, channels: dict[str, ChannelCallback] | None = None) -> None:
        """Take work from now on (prepared first if ``prepare`` was not called)."""
        if self.accepting:
            return
        self.prepare(channels)
        joining, self.joining = self.joining, None
        assert joining is not None
        self.accepting = True
        await self.reader.activate(joining)

    async def abandon(self) -> None:
        """Undo a ``prepare`` never followed by ``start`` (the agent did not register)."""
        joining, self.joining = self.joining, None
        if joining is not None:
            await joining.settled()
            await self.reader.remove(self)

    async def stop(self, grace: float | None = None) -> None:
        """Stop taking work, let running handlers finish for ``grace`` seconds, flush acks and
        hand back what was taken but not started (others may claim it at once)."""
        if not self.accepting or self._stopping:
            return
        self._stopping = True
        grace = self.settings.shutdown_grace if grace is None else grace
        # no new read for it, and the one in flight (if any) returns first: what it brings is
        # still accepted and handled below, not left pending for a claim that a busy role's
        # members may not get round to (their slots go to new reads first)
        await self.reader.remove(self)
        self.accepting = False
        self._stopping = False
        for st, eid, _, _ in self.parked:  # never started: handed back below (role) or left
            st.held.discard(eid)  # pending for the name's next instance (inbox)
        self.parked.clear()
        pools = (self._entries, self._live, self._direct)
        await asyncio.gather(*(pool.stop(grace) for pool in pools if pool is not None))
        if self._fence_watch is not None:
            await cancel_and_wait(self._fence_watch)
        try:
            await self.reader.flush_acks()
            if self.role is not None:
                role = self.families[1]
                await self.release_pending([s for s in self.streams if s.key.startswith(role)])
            await self.leave_groups()
        except Exception as e:  # claimed after a TTL instead
            log.warning("agent %s: could not settle its entries on stop: %s", self.name, e)

    async def leave_groups(self) -> int:
        """Delete this instance's consumer from each of its streams' groups where it holds
        nothing (a clean stop): consumers of stopped instances do not pile up in the groups
        (``prune_consumers`` catches those of crashed ones). Returns how many were deleted."""
        ops = [  # one call per family (one hash slot each), through the host's batcher: the
            # agents of a host stopping together share its round trips
            Op([AGENT_GROUP, self.instance_id], self.scripts.leave,
               [s.key for s in self.streams if s.key.startswith(family)])
            for family in self.families
        ]  # fmt: skip
        return sum(int(n) for n in await self.reader.batcher.run_many(ops))

    @property
    def in_flight(self) -> int:
        return self.slots.load

    @property
    def blocking(self) -> bool:
        """The host's reader waits for work (nothing to read for anyone)."""
        return self.reader.idle

    @property
    def claim_rounds(self) -> int:
        return self.reader.claim_rounds

    def stream(self, key: str) -> StreamState:
        """The state of stream ``key`` (one of its families' streams; made on first use)."""
        s = self._by_key.get(key)
        if s is None:
            s = self._by_key[key] = StreamState(key, AGENT_GROUP)
            self.streams.append(s)
        return s

    # -- fencing -------------------------------------------------------------------------------
    @property
    def _fenced_now(self) -> bool:
        return self.fence is not None and not self.fence.valid

    def may_take(self) -> bool:
        """Whether the reader may read for this agent now (a lapsed lease: watched until it
        runs again, then read again)."""
        if not self.accepting:
            return False
        if self._fenced_now:
            if self._fence_watch is None and self.fence is not None and self.fence.lost is None:
                self._fence_watch = asyncio.create_task(
                    self._wait_fence(), name=f"agentbus-fence:{self.name}"
                )
            return False
        return True

    @property
    def waiting_for_lease(self) -> bool:
        """The lease lapsed and the reader skips this agent until it runs again."""
        return self._fence_watch is not None

    def may_renew(self) -> bool:
        return self.accepting and not self._fenced_now

    async def _wait_fence(self) -> None:
        """The lease lapsed: wait for it (then read again) or the loss of the name (then hand
        back what is pending)."""
        assert self.fence is not None
        log.info("agent %s: lease lapsed; handling nothing until the registry holds this "
                 "instance again", self.name)  # fmt: skip
        try:
            if await self.fence.wait_valid():
                log.info("agent %s: lease renewed; handling again", self.name)
                self.reader.ring(self)
                return
            try:
                await self.release_pending()
            except Exception as e:  # they are claimed after a TTL instead
                log.warning("agent %s: could not hand back pending entries: %s", self.name, e)
        finally:
            self._fence_watch = None

    async def release_pending(self, streams: list[StreamState] | None = None) -> int:
        """Make every entry pending for this instance that no handler holds claimable by
        others at once (``XCLAIM <ids> IDLE``): the instance lost its name, or stopped."""
        released = 0
        idle = 10 * self.settings.ttl_ms
        streams = self.streams if streams is None else streams
        batcher = self.reader.batcher  # shared with the agents stopping together
        pending = await batcher.run_many(
            [Op(("XPENDING", s.key, s.group, "-", "+", 10_000, self.instance_id)) for s in streams]
        )
        claims = []
        for s, rows in zip(streams, pending, strict=True):
            ids = [i for i in (text(r[0]) for r in rows) if i not in s.held]
            if ids:
                claims.append(Op(("XCLAIM", s.key, s.group, self.instance_id, 0, *ids,
                                  "IDLE", idle, "JUSTID")))  # fmt: skip
                released += len(ids)
        if claims:
            await batcher.run_many(claims)
        if released:
            log.info("agent %s: %d pending entries handed back", self.name, released)
        return released

    # -- what the reader hands over ------------------------------------------------------------
    def take(
        self, key: str, entries: list[Any], room: int, verdicts: list[Any] | None = None
    ) -> int:
        """Dispatch entries read (delivered once), up to ``room``; park the rest (held, their
        leases renewed: dispatched first when a slot frees). Returns the slots used.
        ``verdicts`` (acl mode): 0 for an entry whose sender is not proved (it is
        dead-lettered, not handled)."""
        if self._fenced_now or not self.accepting:  # left pending, unrenewed: claimed later
            self.fenced += len(entries)
            if entries:
                self._retry_later(self.stream(key))
            return 0
        s = self.stream(key)
        used = 0
        for i, (entry_id, flat) in enumerate(entries):
            if flat is None:  # deleted while pending: nothing to do
                continue
            fields = dict(zip(flat[::2], flat[1::2], strict=True))
            count = 1 if verdicts is None or int(verdicts[i]) else UNVERIFIED
            if used < room:
                used += 1
                self._dispatch(s, text(entry_id), fields, count)
            else:
                eid = text(entry_id)
                s.held.add(eid)
                self.parked.append((s, eid, fields, count))
        return used

    def dispatch_parked(self) -> None:
        """Dispatch parked entries while slots are free (an entry whose lease was lost
        meanwhile is another consumer's now: skipped)."""
        parked = self.parked
        if self._fenced_now or not self.accepting:
            for s, eid, _, _ in parked:  # left pending, unrenewed: the name's holder claims
                s.held.discard(eid)
                self.fenced += 1
            parked.clear()
            return
        while parked and self.slots.free > 0:
            s, eid, fields, count = parked.popleft()
            if eid in s.held:
                self.slots.take(1)
                self._dispatch(s, eid, fields, count)

    def claimed(
        self, key: str, entries: list[Any], counts: list[Any], verdicts: list[Any] | None = None
    ) -> int:
        """Dispatch entries claimed, with their delivery counts; returns the slots used.

        Held already = ours: if a claim returns one, it is in our hands or was acked while
        the claim ran (a stalled loop lets its own entries idle past the TTL); running it
        again would be a duplicate without a crash behind it."""
        if self._fenced_now or not self.accepting:
            self.fenced += len(entries)
            return 0
        s = self.stream(key)
        used = 0
        for i, ((entry_id, flat), count) in enumerate(zip(entries, counts, strict=True)):
            eid = text(entry_id)
            if eid in s.held or flat is None:
                continue
            used += 1
            if verdicts is not None and not int(verdicts[i]):
                count = UNVERIFIED
            self._dispatch(s, eid, dict(zip(flat[::2], flat[1::2], strict=True)), int(count))
        return used

    async def prune_consumers(self, s: StreamState, idle_limit: int | None = None) -> list[str]:
        """Delete consumers of dead instances: nothing pending, idle for ``idle_limit`` ms
        (10 TTLs by default; a live one that is deleted is simply recreated by its next read)."""
        limit = 10 * self.settings.ttl_ms if idle_limit is None else idle_limit
        consumers: Any = await self.client.xinfo_consumers(s.key, s.group)
        gone = []
        for c in consumers:
            name = text(c["name"])
            if name != self.instance_id and int(c["pending"]) == 0 and int(c["idle"]) >= limit:
                await self.client.xgroup_delconsumer(s.key, s.group, name)
                gone.append(name)
        return gone

    async def renew_leases(self) -> None:
        """Renew the leases of the host's entries now (the reader does it every interval)."""
        await self.reader.renew_leases()

    def _retry_later(self, s: StreamState) -> None:
        """An entry of ``s`` was left pending for a redelivery: claim it once it idled a TTL."""
        self.reader.claim_later(s.key)

    def _ack(self, s: StreamState, entry_id: str) -> None:
        s.acks.append(entry_id)
        self.reader.ack_soon(self)

    # -- handling ------------------------------------------------------------------------------
    def _dispatch(self, s: StreamState, entry_id: str, fields: Fields, count: int) -> None:
        s.held.add(entry_id)
        self.entries.put((s, entry_id, fields, count))

    async def _process_item(self, item: tuple[StreamState, str, Fields, int]) -> None:
        await self._process(*item)

    async def _process(self, s: StreamState, entry_id: str, fields: Fields, count: int) -> None:
        slot = _Slot(self.slots, self.reader.wake)
        try:
            await self.dispatcher.handle_entry(s, entry_id, fields, count, slot.give)
        except asyncio.CancelledError:
            s.held.discard(entry_id)  # stays pending: redelivered to whoever claims it
            raise
        except Exception:
            s.held.discard(entry_id)
            self._retry_later(s)
            log.exception("agent %s failed on entry %s of %s; it will be redelivered",
                          self.name, entry_id, s.key)  # fmt: skip
        finally:
            self.handled += 1
            slot.give()

    def handle_direct(self, env: Envelope, channel: str) -> None:
        """Queue a request received on the agent's direct channel (``durable=False``)."""
        if self._fenced_now or not self.accepting:  # at-most-once: the caller times out
            self.fenced += 1
            return
        if env.kind is not Kind.REQUEST or not env.reply_to:
            log.warning("%s: dropping a %s %r on its direct channel (only requests go there)",
                        self.name, env.kind.value, env.type)  # fmt: skip
            return
        self.direct.put(Message(env, source=channel))

    async def _direct_item(self, msg: Message) -> None:
        env = msg.envelope
        if env.expired():  # its caller gave up already
            return
        publish = self.dispatcher.replier.publish_reply
        await self.handlers.handle(msg, functools.partial(publish, env))

    def handle_live(self, env: Envelope, channel: str) -> None:
        """Queue the handler of a broadcast received on pub/sub (no ack, no reply)."""
        if not self.accepting:  # subscribed while its announcement travels: not registered yet
            return
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

    __slots__ = ("slots", "wake")

    def __init__(self, slots: Slots, wake: Callable[[], None]) -> None:
        self.slots: Slots | None = slots
        self.wake = wake

    def give(self) -> None:
        slots, self.slots = self.slots, None
        if slots is not None:
            slots.give(1)
            self.wake()

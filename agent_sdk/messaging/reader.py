"""The read path of a host: one reader for every inbox and role queue of every agent it carries.

Blocking on the streams themselves does not scale: one ``XREADGROUP ... BLOCK`` over 10,000 keys
costs Redis O(keys) each time it is armed, and a blocked connection per agent costs a connection
per agent. So senders ring a **doorbell**: the send script ``PUBLISH``es the new entry's id on
``<stream>:bell`` (``KeySpace.bell``) in the same call as its ``XADD``. The host's one pub/sub
connection is subscribed to the doorbells of the streams its agents read; a ring marks the
stream *dirty* and wakes this reader, which then reads every dirty stream it can serve in **one
pipelined round trip** on its own connection, without blocking: per stream, one
``XREADGROUP GROUP agent <instance> COUNT <free slots> STREAMS <stream> >`` as one of the
agents that read it (an inbox: its agent; a role queue: its members on this host, in turn, each
while it has a free handler slot). A stream that returned ``COUNT`` entries stays dirty.

Nothing depends on a doorbell being heard: every stream is read when it is added, after the
pub/sub connection was re-established (rings may have been missed), when a lapsed lease runs
again, and in the **sweep**, which looks at every inbox at least every ``inbox_sweep`` (a
slice each ``claim_interval``: an entry ``XADD``ed by hand, without a ring, waits at most that
long). Role queues are swept and claimed every ``claim_interval``.

Around the reads, for all agents together: claims (``claim.lua`` = ``XAUTOCLAIM`` of entries
idle for a TTL, with their delivery counts), lease renewals of the entries held (``lease.lua``,
every heartbeat interval, pipelined) and acks (``XACK``, batched on their own connection).
What happens to an entry once read is the agent's ``Consumer``'s business.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

import redis.asyncio as aioredis
from redis.exceptions import NoScriptError, ResponseError

from agent_sdk.lane import Lane
from agent_sdk.messaging.dispatch import text
from agent_sdk.messaging.scripts import Scripts, load_script_text
from agent_sdk.messaging.topics import PubSubHub
from agent_sdk.settings import Settings
from agent_sdk.tasks import cancel_all
from schemas.keys import AGENT_GROUP

if TYPE_CHECKING:
    from agent_sdk.messaging.consumer import Consumer

__all__ = ["Reader", "nogroup"]

log = logging.getLogger("agentbus.messaging")

_READ_MAX = 256  # COUNT cap of one read of one stream
_LEASE_CHUNK = 500
_PRUNE_EVERY = 50  # claim rounds


def nogroup(e: BaseException) -> bool:
    """The group is gone: ``NOGROUP`` (Redis lost the stream), or Redis 7's ``UNBLOCKED``."""
    if isinstance(e, BaseExceptionGroup):
        return any(nogroup(x) for x in e.exceptions)
    return isinstance(e, ResponseError) and ("NOGROUP" in str(e) or "UNBLOCKED" in str(e))


def _entries(reply: Any) -> list[Any]:
    """The entries of a one-stream ``XREADGROUP`` reply: a map (RESP3), pairs (RESP2) or nil."""
    if not reply:
        return []
    pairs = list(reply.values()) if isinstance(reply, dict) else [e for _, e in reply]
    return list(pairs[0]) if pairs else []


class _Source:
    """One stream the host reads, and the agents that read it here (in turn)."""

    __slots__ = ("bell", "cursor", "key", "members", "role", "turn")

    def __init__(self, key: str, bell: str, role: bool) -> None:
        self.key = key
        self.bell = bell
        self.role = role
        self.members: list[Consumer] = []
        self.turn = 0
        self.cursor = "0-0"  # XAUTOCLAIM cursor


class Reader:
    """Reads for every agent of a host. ``start``/``stop`` are idempotent."""

    def __init__(
        self, client: aioredis.Redis, settings: Settings, scripts: Scripts, hub: PubSubHub
    ) -> None:
        self.client = client
        self.settings = settings
        self.scripts = scripts
        self.hub = hub
        self._sources: dict[str, _Source] = {}
        self._bells: dict[str, _Source] = {}
        self._inboxes: list[_Source] = []
        self._sweep_next = 0
        self._dirty: dict[_Source, None] = {}
        self._consumers: dict[Consumer, None] = {}
        self._acks: dict[Consumer, None] = {}
        #: Inboxes with an entry left for redelivery: when to claim it (monotonic seconds).
        self._claim_due: dict[_Source, float] = {}
        #: Agents whose inbox is being taken over from their previous instance: the cursor.
        self._takeovers: dict[Consumer, str] = {}
        self._wake = asyncio.Event()
        self._ack_event = asyncio.Event()
        self._round: asyncio.Event = asyncio.Event()  # set while no read is in flight
        self._round.set()
        self._lane: Lane | None = None
        self._acker: Lane | None = None
        self._tasks: list[asyncio.Task[None]] = []
        #: Read round trips, claim rounds and sweeps done (for tests and stats).
        self.reads = 0
        self.claim_rounds = 0
        #: True while the reader waits for a doorbell (nothing to read).
        self.idle = False

    # -- lifecycle -----------------------------------------------------------------------------
    async def start(self) -> None:
        if self._tasks:
            return
        self._lane = Lane(self.client)
        self._acker = Lane(self.client)
        with contextlib.suppress(Exception):  # else loaded after its first NOSCRIPT
            await self.client.script_load(load_script_text("claim"))
        self.hub.on_reconnect = self.ring_all
        self._tasks = [
            asyncio.create_task(self._guard("read", self._read_loop), name="agentbus-reader"),
            asyncio.create_task(self._guard("lease", self._lease_loop), name="agentbus-leases"),
            asyncio.create_task(self._guard("ack", self._ack_loop), name="agentbus-acks"),
        ]

    async def stop(self) -> None:
        tasks, self._tasks = self._tasks, []
        await cancel_all(tasks)
        with contextlib.suppress(Exception):
            await self.flush_acks()
        for lane in (self._lane, self._acker):
            if lane is not None:
                await lane.aclose()
        self._lane = self._acker = None

    async def _guard(self, what: str, loop: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """Run a background loop forever: log, back off, continue."""
        backoff = 0.05
        while True:
            try:
                await loop()
                return
            except asyncio.CancelledError:
                raise
            except Exception as e:
                if nogroup(e):
                    log.warning("%s: a consumer group is missing (Redis lost data?); recreating",
                                what)  # fmt: skip
                    with contextlib.suppress(Exception):
                        for key in list(self._sources):
                            await self.ensure_group(key)
                    self.ring_all()
                else:
                    log.warning("host %s loop failed (%s); retrying in %.2fs", what, e, backoff)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, self.settings.retry_max_backoff)

    # -- agents --------------------------------------------------------------------------------
    async def add(self, consumer: Consumer) -> None:
        """Read ``consumer``'s streams from now on: groups made, doorbells subscribed (and
        confirmed), entries its previous instance left in its inbox taken over, then read."""
        bells: dict[str, Callable[[str, bytes], None]] = {}
        for s in consumer.streams:
            await self.ensure_group(s.key)
            src = self._sources.get(s.key)
            if src is None:
                bell = self.settings.keys.bell(s.key)
                src = self._sources[s.key] = _Source(s.key, bell, s is not consumer.inbox)
                self._bells[bell] = src
                bells[bell] = self._on_bell
                if not src.role:
                    self._inboxes.append(src)
            src.members.append(consumer)
        if bells:
            await self.hub.listen(bells)
        self._consumers[consumer] = None
        self._takeovers[consumer] = "0-0"
        for s in consumer.streams:
            self._dirty[self._sources[s.key]] = None
        self._wake.set()

    async def remove(self, consumer: Consumer) -> None:
        """Read nothing more for ``consumer`` (returns once no read for it is in flight)."""
        self._consumers.pop(consumer, None)
        self._takeovers.pop(consumer, None)
        gone: list[str] = []
        for s in consumer.streams:
            src = self._sources.get(s.key)
            if src is None or consumer not in src.members:
                continue
            src.members.remove(consumer)
            if not src.members:
                del self._sources[s.key]
                del self._bells[src.bell]
                self._dirty.pop(src, None)
                self._claim_due.pop(src, None)
                if not src.role:
                    self._inboxes.remove(src)
                gone.append(src.bell)
        await self._round.wait()
        if gone:
            with contextlib.suppress(Exception):
                await self.hub.unlisten(gone)

    def _on_bell(self, channel: str, data: bytes) -> None:
        src = self._bells.get(channel)
        if src is not None:
            self._dirty[src] = None
            self._wake.set()

    def claim_later(self, key: str) -> None:
        """An entry of stream ``key`` was left pending for a redelivery: claim it (and whatever
        else idled a TTL there) in the first claim round after a TTL. Role queues are claimed
        every round anyway."""
        src = self._sources.get(key)
        if src is not None and not src.role and src not in self._claim_due:
            self._claim_due[src] = time.monotonic() + self.settings.ttl

    def ring(self, consumer: Consumer) -> None:
        """Read ``consumer``'s streams again (its lease runs again, say)."""
        for s in consumer.streams:
            src = self._sources.get(s.key)
            if src is not None:
                self._dirty[src] = None
        self._wake.set()

    def ring_all(self) -> None:
        """Read every stream again (doorbells may have been missed)."""
        for src in self._sources.values():
            self._dirty[src] = None
        self._wake.set()

    def wake(self) -> None:
        """A handler slot was freed: streams waiting for one may be read now."""
        if self._dirty:
            self._wake.set()

    async def ensure_group(self, key: str) -> None:
        try:
            await self.client.xgroup_create(key, AGENT_GROUP, id="0", mkstream=True)
        except ResponseError as e:
            if "BUSYGROUP" not in str(e):
                raise

    # -- reading -------------------------------------------------------------------------------
    async def _read_loop(self) -> None:
        interval = self.settings.claim_interval
        next_claim = time.monotonic() + interval
        while True:
            self._wake.clear()
            if self._takeovers:
                await self._takeover()
            batch = self._plan()
            if batch:
                await self._read(batch)
            now = time.monotonic()
            if now >= next_claim:
                await self._claim_round()
                next_claim = time.monotonic() + interval
            elif not batch:
                self.idle = True
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(next_claim - now):
                        await self._wake.wait()
                self.idle = False

    def _pick(self, src: _Source) -> Consumer | None:
        """The next member of ``src`` (in turn) that may take work now."""
        members = src.members
        k = len(members)
        for i in range(k):
            c = members[(src.turn + i) % k]
            if c.slots.free > 0 and c.may_take():
                src.turn = (src.turn + i + 1) % k
                return c
        return None

    def _plan(self) -> list[tuple[_Source, Consumer, int]]:
        batch = []
        for src in list(self._dirty):
            if not src.role and src.members[0] in self._takeovers:
                continue  # what the previous instance left first
            c = self._pick(src)
            if c is None:
                continue  # stays dirty: read when a slot frees or the lease runs again
            n = min(c.slots.free, _READ_MAX)
            c.slots.reserve(n)
            del self._dirty[src]
            batch.append((src, c, n))
        return batch

    async def _read(self, batch: list[tuple[_Source, Consumer, int]]) -> None:
        """One round trip: an ``XREADGROUP`` per stream of the batch; entries to their agents."""
        lane = self._lane
        assert lane is not None
        commands = [
            ("XREADGROUP", "GROUP", AGENT_GROUP, c.instance_id, "COUNT", n, "STREAMS", src.key, ">")
            for src, c, n in batch
        ]
        self._round.clear()
        try:
            replies = await lane.execute(commands)
        except BaseException:
            for src, c, n in batch:
                c.slots.settle(n, 0)
                self._dirty[src] = None
            raise
        finally:
            self._round.set()
        self.reads += 1
        missing = []
        for (src, c, n), reply in zip(batch, replies, strict=True):
            if isinstance(reply, Exception):
                c.slots.settle(n, 0)
                if nogroup(reply):
                    missing.append(src)
                else:
                    log.warning("reading %s for %s failed: %s", src.key, c.name, reply)
                continue
            entries = _entries(reply)
            if len(entries) >= n:
                self._dirty[src] = None  # there may be more
            c.slots.settle(n, c.take(src.key, entries))
        for src in missing:
            log.warning("the consumer group of %s is missing (Redis lost data?); recreating",
                        src.key)  # fmt: skip
            await self.ensure_group(src.key)
            self._dirty[src] = None

    # -- claims --------------------------------------------------------------------------------
    async def _takeover(self) -> None:
        """Claim every entry the previous instance of a new agent left pending in its inbox
        (whatever its idle time: the name is this instance's now), as slots allow; then delete
        that instance's (now empty) consumer. Before the agent's first read."""
        jobs: list[tuple[_Source, Consumer, int, int, str]] = []
        for c, cursor in self._takeovers.items():
            src = self._sources.get(c.inbox.key)
            if src is not None and c.slots.free > 0 and c.may_take():
                jobs.append((src, c, c.slots.free, 0, cursor))
        if not jobs:
            return
        for (_, c, _, _, _), cursor in zip(jobs, await self._claim(jobs), strict=True):
            if c not in self._takeovers:
                continue
            if cursor != "0-0":
                self._takeovers[c] = cursor
                continue
            del self._takeovers[c]
            with contextlib.suppress(Exception):
                await c.prune_consumers(c.inbox, idle_limit=0)

    async def _claim_round(self) -> None:
        """Claim what idled past the TTL on every role queue, and on a slice of the inboxes
        (each read too: the sweep); every inbox is swept once per ``inbox_sweep``."""
        ttl_ms = self.settings.ttl_ms
        jobs: list[tuple[_Source, Consumer, int, int, str]] = []
        for src in self._sources.values():
            if src.role:
                self._dirty[src] = None  # swept too: an entry XADDed without a ring
                c = self._pick(src)
                if c is not None:
                    jobs.append((src, c, c.slots.free, ttl_ms, src.cursor))
        inboxes = self._inboxes
        if inboxes:
            share = self.settings.claim_interval / self.settings.inbox_sweep
            k = min(len(inboxes), max(1, math.ceil(len(inboxes) * share)))
            start = self._sweep_next % len(inboxes)
            for src in (inboxes + inboxes)[start : start + k]:
                self._dirty[src] = None
                c = src.members[0]
                if c.slots.free > 0 and c.may_take() and c not in self._takeovers:
                    jobs.append((src, c, c.slots.free, ttl_ms, src.cursor))
            self._sweep_next = start + k
        now = time.monotonic()
        for src, due in list(self._claim_due.items()):
            c = src.members[0] if src.members else None
            if c is None or due > now or not c.slots.free or not c.may_take():
                continue
            del self._claim_due[src]
            if all(job[0] is not src for job in jobs):
                jobs.append((src, c, c.slots.free, ttl_ms, "0-0"))
        if jobs:
            for (src, _, _, _, _), cursor in zip(jobs, await self._claim(jobs), strict=True):
                src.cursor = cursor
        self.claim_rounds += 1
        if self.claim_rounds % _PRUNE_EVERY == 0:
            for src in list(self._sources.values()):
                if src.role and src.members:
                    with contextlib.suppress(Exception):
                        await src.members[0].prune_consumers(src.members[0].stream(src.key))

    async def _claim(self, jobs: list[tuple[_Source, Consumer, int, int, str]]) -> list[str]:
        """One round trip: a ``claim.lua`` per job (stream, agent, count, min idle ms, cursor);
        the entries to their agents; the next cursor of each job ("0-0": done, or failed)."""
        lane = self._lane
        assert lane is not None
        sha = self.scripts.claim.sha
        commands = []
        for src, c, n, idle, cursor in jobs:
            c.slots.reserve(n)
            commands.append(
                ("EVALSHA", sha, 1, src.key, AGENT_GROUP, c.instance_id, idle, cursor, n)
            )
        self._round.clear()
        try:
            replies = await lane.execute(commands)
        except BaseException:
            for _, c, n, _, _ in jobs:
                c.slots.settle(n, 0)
            raise
        finally:
            self._round.set()
        cursors = []
        for (src, c, n, _, cursor), reply in zip(jobs, replies, strict=True):
            if isinstance(reply, Exception):
                c.slots.settle(n, 0)
                cursors.append(cursor)  # again next time
                if isinstance(reply, NoScriptError):  # Redis restarted or SCRIPT FLUSH
                    await self.client.script_load(load_script_text("claim"))
                elif nogroup(reply):
                    await self.ensure_group(src.key)
                else:
                    log.warning("claiming on %s for %s failed: %s", src.key, c.name, reply)
                continue
            next_cursor, entries, counts = reply
            cursors.append(text(next_cursor))
            c.slots.settle(n, c.claimed(src.key, entries, counts))
        return cursors

    # -- leases and acks -----------------------------------------------------------------------
    async def _lease_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.heartbeat_interval)
            await self.renew_leases()

    async def renew_leases(self) -> None:
        """Reset the idle time of every entry a handler holds (one pipeline for the host)."""
        jobs = []
        for c in self._consumers:
            if not c.may_renew():
                continue  # the name's holder must be able to claim them
            for s in c.streams:
                ids = list(s.held)
                for i in range(0, len(ids), _LEASE_CHUNK):
                    jobs.append((c, s, ids[i : i + _LEASE_CHUNK]))
        if not jobs:
            return
        async with self.client.pipeline(transaction=False) as pipe:
            for c, s, chunk in jobs:
                await self.scripts.lease(
                    keys=[s.key], args=[AGENT_GROUP, c.instance_id, *chunk], client=pipe
                )
            results = await pipe.execute(raise_on_error=False)
        for (_, s, _), lost in zip(jobs, results, strict=True):
            if isinstance(lost, Exception):
                log.warning("renewing leases on %s failed: %s", s.key, lost)
                continue
            for eid in lost:
                s.held.discard(text(eid))

    def ack_soon(self, consumer: Consumer) -> None:
        self._acks[consumer] = None
        self._ack_event.set()

    async def _ack_loop(self) -> None:
        while True:
            await self._ack_event.wait()
            self._ack_event.clear()
            await self.flush_acks()

    async def flush_acks(self) -> None:
        """One round trip: an ``XACK`` per stream with finished entries, for every agent."""
        acker = self._acker
        if not self._acks or acker is None:
            return
        consumers, self._acks = list(self._acks), {}
        batch = [(s, s.acks) for c in consumers for s in c.streams if s.acks]
        for s, _ in batch:
            s.acks = []
        if not batch:
            return
        try:
            replies = await acker.execute([("XACK", s.key, s.group, *ids) for s, ids in batch])
            for reply in replies:
                if isinstance(reply, BaseException):
                    raise reply
        except BaseException:
            for s, ids in batch:
                s.acks[:0] = ids
            for c in consumers:
                self._acks[c] = None
            raise
        for s, ids in batch:
            s.held.difference_update(ids)

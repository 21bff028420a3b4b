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
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import redis.asyncio as aioredis
from redis.exceptions import NoScriptError, ResponseError

from agent_sdk.cluster_lane import AnyLane, open_lane
from agent_sdk.messaging.batcher import Batcher, Op
from agent_sdk.messaging.dispatch import text
from agent_sdk.messaging.losses import LossWatch
from agent_sdk.messaging.scripts import Scripts, load_script_text
from agent_sdk.messaging.sources import Family, Source, Sources
from agent_sdk.messaging.topics import ChannelCallback, PubSubHub
from agent_sdk.settings import Settings
from agent_sdk.tasks import cancel_all
from schemas.keys import AGENT_GROUP
from schemas.priority import PRIORITIES, Priority

if TYPE_CHECKING:
    from agent_sdk.messaging.consumer import Consumer

__all__ = ["Reader", "nogroup"]

log = logging.getLogger("agentbus.messaging")

_LEASE_CHUNK = 500
#: Agents looked at per turn of the event loop in a pass over all of them (``renew_leases``).
_SCAN_CHUNK = 1000
#: Bytes an envelope may add to its payload (ids, times, headers) under acl-mode byte limits.
_ENVELOPE_ALLOWANCE = 64 * 1024
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


Job = tuple[Source, "Consumer", int, int, str]  # stream, agent, count, min idle ms, cursor


@dataclass(slots=True)
class Joining:
    """A consumer's join under way (``Reader.prepare``): the round trips it waits for."""

    consumer: Consumer
    new: list[Source]
    wanted: list[tuple[Family, list[Priority]]]
    #: The replies of its commands (an error in its place), and its subscription confirmed.
    replies: asyncio.Future[list[Any]]
    listening: asyncio.Future[None] | None

    async def settled(self) -> None:
        """Once every round trip it waits for is over (errors ignored: it is being undone)."""
        with contextlib.suppress(Exception):
            await self.replies
        if self.listening is not None:
            with contextlib.suppress(Exception):
                await self.listening


class Reader:
    """Reads for every agent of a host. ``start``/``stop`` are idempotent."""

    def __init__(
        self,
        client: aioredis.Redis,
        settings: Settings,
        scripts: Scripts,
        hub: PubSubHub,
        batcher: Batcher,
    ) -> None:
        self.client = client
        self.batcher = batcher
        self.settings = settings
        self.scripts = scripts
        self.hub = hub
        self.sources = Sources(settings.keys)
        #: ``<ns>:agent:{``: the proof zset of sender S is this + S + ``}:sent`` (acl mode)
        self._proof_prefix = settings.keys.agents_prefix + "{"
        self._sweep_next = 0
        self._consumers: dict[Consumer, None] = {}
        self._acks: dict[Consumer, None] = {}
        #: Inbox streams with an entry left for redelivery: when to claim (monotonic seconds).
        self._claim_due: dict[Source, float] = {}
        #: Agents whose inbox is being taken over from their previous instance: what is left
        #: (stream, cursor).
        self._takeovers: dict[Consumer, list[tuple[Source, str]]] = {}
        #: Agents with entries parked (read beyond their free slots).
        self._parked: dict[Consumer, None] = {}
        #: Rings that named a priority stream not read here yet: (family, priority).
        self._new: set[tuple[Family, str]] = set()
        self._wake = asyncio.Event()
        self._ack_event = asyncio.Event()
        self._round: asyncio.Event = asyncio.Event()  # set while no read is in flight
        self._round.set()
        self._lane: AnyLane | None = None
        self._acker: AnyLane | None = None
        self._tasks: list[asyncio.Task[None]] = []
        #: Read round trips, claim rounds and sweeps done (for tests and stats).
        self.reads = 0
        self.claim_rounds = 0
        #: True while the reader waits for a doorbell (nothing to read).
        self.idle = False
        #: Entries trimmed before they were read: detected and reported (``losses``).
        self.losses = LossWatch(client, settings, batcher)

    # -- lifecycle -----------------------------------------------------------------------------
    async def start(self) -> None:
        if self._tasks:
            return
        self._lane = open_lane(self.client)
        self._acker = open_lane(self.client)
        with contextlib.suppress(Exception):  # else loaded after its first NOSCRIPT
            for name in ("claim_secure", "read_secure") if self.settings.secure else ("claim",):
                await self.client.script_load(load_script_text(name))
        self.hub.on_reconnect = self.ring_all
        self._tasks = [
            asyncio.create_task(self._guard("read", self._read_loop), name="agentbus-reader"),
            asyncio.create_task(self._guard("lease", self._lease_loop), name="agentbus-leases"),
            asyncio.create_task(self._guard("ack", self._ack_loop), name="agentbus-acks"),
        ]
        if self.settings.loss_check > 0:
            losses = self._guard("losses", lambda: self.losses.run(lambda: [*self.sources.by_key]))
            self._tasks.append(asyncio.create_task(losses, name="agentbus-losses"))

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
                        for key in list(self.sources.by_key):
                            await self.ensure_group(key)
                    self.ring_all()
                else:
                    log.warning("host %s loop failed (%s); retrying in %.2fs", what, e, backoff)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, self.settings.retry_max_backoff)

    # -- agents --------------------------------------------------------------------------------
    async def add(
        self, consumer: Consumer, channels: dict[str, ChannelCallback] | None = None
    ) -> None:
        """Read ``consumer``'s streams from now on: ``prepare`` then ``activate``."""
        await self.activate(self.prepare(consumer, channels))

    def prepare(
        self, consumer: Consumer, channels: dict[str, ChannelCallback] | None = None
    ) -> Joining:
        """Begin reading ``consumer``'s streams, without waiting: its groups made, its priority
        streams that hold entries already found, its limits published (acl mode), in one
        pipeline of the send batcher; its doorbells (and ``channels``, its broadcasts and direct
        requests) in one ``SUBSCRIBE``. Agents starting in the same turn of the event loop
        share both round trips. Nothing is read for it before ``activate``."""
        bells, new = self.sources.join(consumer)
        listen = dict(channels or {})
        listen.update(dict.fromkeys(bells, self._on_bell))
        families = self.sources.families
        wanted: list[tuple[Family, list[Priority]]] = []  # priority streams not read here yet
        joined = {src.family for src in new}
        for k in consumer.families:
            fam = families[k]
            if fam not in joined:
                # read here already: its priority streams were looked for when it was
                # joined, and one made since rings its doorbell (``_on_bell`` adds it)
                continue
            missing = [p for p in PRIORITIES if p not in fam.sources]
            if missing:
                wanted.append((fam, missing))
        keys, s = self.settings.keys, self.settings
        ops = [Op(("XGROUP", "CREATE", src.key, AGENT_GROUP, "0", "MKSTREAM")) for src in new]
        # one EXISTS per family (one slot): almost always 0; which ones, asked only if not
        ops += [
            Op(("EXISTS", *(keys.prioritized(fam.key, p) for p in missing)))
            for fam, missing in wanted
        ]
        if s.secure:  # the limits senders must respect (the send script enforces them)
            max_bytes = s.max_payload_bytes + _ENVELOPE_ALLOWANCE
            for family_key in consumer.families:
                role = self.sources.families[family_key].role
                maxlen = s.queue_maxlen if role else s.inbox_maxlen
                ops.append(Op(("HSET", keys.limits(family_key), "maxlen", maxlen,
                               "max_bytes", max_bytes)))  # fmt: skip
        replies = self.batcher.submit(ops)
        listening = self.hub.listen_soon(listen) if listen else None
        return Joining(consumer, new, wanted, replies, listening)

    async def activate(self, joining: Joining) -> None:
        """Finish ``prepare`` (its errors raised here): what ``consumer``'s previous instance
        left in its inbox is taken over, and its streams are read."""
        consumer, new, wanted = joining.consumer, joining.new, joining.wanted
        results = await joining.replies
        if joining.listening is not None:
            await joining.listening
        for result in results[: len(new)]:
            if isinstance(result, Exception) and "BUSYGROUP" not in str(result):
                raise result
        for result in results[len(new) + len(wanted) :]:  # the limits (acl mode)
            if isinstance(result, BaseException):
                raise result
        for (fam, missing), found in zip(wanted, results[len(new) :], strict=False):
            if isinstance(found, BaseException):
                raise found
            if found:
                keys = self.settings.keys
                each = await self.batcher.run_many(
                    [Op(("EXISTS", keys.prioritized(fam.key, p))) for p in missing]
                )
                for p, exists in zip(missing, each, strict=True):
                    if exists:
                        await self._add_source(fam, p)
        self._consumers[consumer] = None
        # a group this join created has no pending entries and no consumers: nothing to take
        # over there (a name new to Redis, the usual case, costs no claim and no prune)
        created = {src for src, result in zip(new, results, strict=False)
                   if not isinstance(result, Exception)}  # fmt: skip
        inbox = self.sources.families[consumer.inbox.key]
        left = [(src, "0-0") for src in inbox.sources.values() if src not in created]
        if left:
            self._takeovers[consumer] = left
        for family_key in consumer.families:
            self.sources.mark_family(self.sources.families[family_key])
        self._wake.set()

    async def _add_source(self, fam: Family, priority: str) -> Source:
        src = fam.sources.get(priority)
        if src is None:
            src = self.sources.add_source(fam, priority)
            await self.ensure_group(src.key)
        return src

    async def remove(self, consumer: Consumer) -> None:
        """Read nothing more for ``consumer`` (returns once no read for it is in flight)."""
        self._consumers.pop(consumer, None)
        self._takeovers.pop(consumer, None)
        self._parked.pop(consumer, None)
        for family_key in consumer.families:
            fam = self.sources.families.get(family_key)
            if fam is not None and fam.members == [consumer]:
                for src in fam.sources.values():
                    self._claim_due.pop(src, None)
        gone = self.sources.leave(consumer)
        await self._round.wait()
        if gone:
            with contextlib.suppress(Exception):
                await self.hub.unlisten(gone)

    def _on_bell(self, channel: str, data: bytes) -> None:
        fam = self.sources.bells.get(channel)
        if fam is None:
            return
        priority = data.decode(errors="replace") if data else "normal"
        src = fam.sources.get(priority)
        if src is not None:
            self.sources.mark(src)
        elif priority in PRIORITIES:
            self._new.add((fam, priority))
        else:  # an entry id or anything else: a ring of the normal stream
            self.sources.mark(fam.sources["normal"])
        self._wake.set()

    def claim_later(self, key: str) -> None:
        """An entry of stream ``key`` was left pending for a redelivery: claim it (and whatever
        else idled a TTL there) in the first claim round after a TTL. Role queues are claimed
        every round anyway."""
        src = self.sources.by_key.get(key)
        if src is not None and not src.family.role and src not in self._claim_due:
            self._claim_due[src] = time.monotonic() + self.settings.ttl

    def ring(self, consumer: Consumer) -> None:
        """Read ``consumer``'s streams again (its lease runs again, say)."""
        for family_key in consumer.families:
            fam = self.sources.families.get(family_key)
            if fam is not None:
                self.sources.mark_family(fam)
        self._wake.set()

    def ring_all(self) -> None:
        """Read every stream again (doorbells may have been missed)."""
        self.sources.mark_all()
        self._wake.set()

    def wake(self) -> None:
        """A handler slot was freed: parked entries and streams waiting for one may go now."""
        if self._parked or self.sources.any_dirty:
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
            while self._new:
                fam, priority = self._new.pop()
                if fam.members:  # still read here
                    self.sources.mark(await self._add_source(fam, priority))
            for c in list(self._parked):
                c.dispatch_parked()
                if not c.parked:
                    del self._parked[c]
            if self._takeovers:
                await self._takeover()
            batch = self.sources.plan(set(self._takeovers) | set(self._parked))
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

    async def _read(self, batch: list[tuple[Source, Consumer, int]]) -> None:
        """One round trip: an ``XREADGROUP`` per stream of the batch; entries to their agents."""
        lane = self._lane
        assert lane is not None
        # An inbox is read for one more than there is room for: had it more, that one says so
        # (it is parked: only this agent reads its inbox anyway) and no read is spent finding
        # it empty. A role queue is read for the room only: what one member cannot start now
        # stays for the others.
        secure = self.settings.secure
        counts = [n if src.family.role else n + 1 for src, _, n in batch]
        commands: list[tuple[Any, ...]]
        if secure:  # read_secure.lua: the same read, and a verdict on each entry's sender
            sha, prefix = self.scripts.read_secure.sha, self._proof_prefix
            commands = [
                ("EVALSHA", sha, 1, src.key, AGENT_GROUP, c.instance_id, k, prefix)
                for (src, c, _), k in zip(batch, counts, strict=True)
            ]
        else:
            commands = [
                ("XREADGROUP", "GROUP", AGENT_GROUP, c.instance_id, "COUNT", k, "STREAMS",
                 src.key, ">")
                for (src, c, _), k in zip(batch, counts, strict=True)
            ]  # fmt: skip
        self._round.clear()
        try:
            replies = await lane.execute(commands)
        except BaseException:
            for src, c, n in batch:
                c.slots.settle(n, 0)
                self.sources.mark(src)
            raise
        finally:
            self._round.set()
        self.reads += 1
        k_of = {src: k for (src, _, _), k in zip(batch, counts, strict=True)}
        missing = []
        for (src, c, n), reply in zip(batch, replies, strict=True):
            if isinstance(reply, Exception):
                c.slots.settle(n, 0)
                if nogroup(reply):
                    missing.append(src)
                elif isinstance(reply, NoScriptError):  # Redis restarted or SCRIPT FLUSH
                    await self.client.script_load(load_script_text("read_secure"))
                    self.sources.mark(src)
                else:
                    log.warning("reading %s for %s failed: %s", src.key, c.name, reply)
                continue
            verdicts = None
            if secure:
                entries, verdicts = list(reply[0]), list(reply[1])
            else:
                entries = _entries(reply)
            if len(entries) >= k_of[src]:
                self.sources.mark(src)  # there may be more
            if len(entries) > n:
                self._parked[c] = None
            c.slots.settle(n, c.take(src.key, entries, n, verdicts))
        for src in missing:
            log.warning("the consumer group of %s is missing (Redis lost data?); recreating",
                        src.key)  # fmt: skip
            await self.ensure_group(src.key)
            self.sources.mark(src)

    # -- claims --------------------------------------------------------------------------------
    async def _takeover(self) -> None:
        """Claim every entry the previous instance of a new agent left pending in its inbox
        (whatever its idle time: the name is this instance's now), as slots allow; then delete
        that instance's (now empty) consumer. Before the agent's first read of its inbox."""
        jobs: list[Job] = []
        for c, left in self._takeovers.items():
            if left and c.slots.free > 0 and c.may_take():
                src, cursor = left[0]
                jobs.append((src, c, c.slots.free, 0, cursor))
        for (src, c, _, _, _), cursor in zip(jobs, await self._claim(jobs), strict=True):
            todo = self._takeovers.get(c)
            if todo is None:
                continue
            if cursor != "0-0":
                todo[0] = (src, cursor)
            else:
                todo.pop(0)
        for c, left in list(self._takeovers.items()):
            # an agent removed meanwhile (during the await below) is not ours to prune
            if not left and self._takeovers.pop(c, None) is not None:
                with contextlib.suppress(Exception):
                    await c.prune_consumers(c.inbox, idle_limit=0)

    async def _claim_round(self) -> None:
        """Sweep and claim what idled past the TTL on every role queue, and on a slice of the
        inboxes; every inbox is swept once per ``inbox_sweep``. An agent's free slots are shared
        by its claims of the round: redeliveries first, then inboxes, then role queues."""
        ttl_ms = self.settings.ttl_ms
        sources = self.sources
        jobs: list[Job] = []
        now = time.monotonic()
        for src, due in list(self._claim_due.items()):
            c = src.family.members[0] if src.family.members else None
            if c is not None and due <= now and c.slots.free and c.may_take():
                del self._claim_due[src]
                jobs.append((src, c, 0, ttl_ms, "0-0"))
        inboxes = sources.inboxes
        if inboxes:
            share = self.settings.claim_interval / self.settings.inbox_sweep
            k = min(len(inboxes), max(1, math.ceil(len(inboxes) * share)))
            start = self._sweep_next % len(inboxes)
            for fam in (inboxes + inboxes)[start : start + k]:
                sources.mark_family(fam)
                c = fam.members[0]
                if c.slots.free > 0 and c.may_take() and c not in self._takeovers:
                    jobs.extend((src, c, 0, ttl_ms, src.cursor) for src in fam.sources.values())
            self._sweep_next = start + k
        for fam in sources.families.values():
            if fam.role:
                for src in fam.sources.values():
                    sources.mark(src)  # swept too: an entry XADDed without a ring
                    if src.backlog:  # the last claim came back full: every member with room
                        members = [c for c in fam.members if c.slots.free and c.may_take()]
                    else:  # one member in turn: idle, a claim round costs one call per stream
                        picked = fam.pick()
                        members = [picked] if picked is not None else []
                    jobs.extend((src, c, 0, ttl_ms, src.cursor) for c in members)
        jobs = self._share_slots(jobs)
        if jobs:
            for (src, _, _, _, _), cursor in zip(jobs, await self._claim(jobs), strict=True):
                src.cursor = cursor
        self.claim_rounds += 1
        if self.claim_rounds % _PRUNE_EVERY == 0:
            for fam in list(sources.families.values()):
                if fam.role and fam.members:
                    c = fam.members[0]
                    for src in list(fam.sources.values()):
                        with contextlib.suppress(Exception):
                            await c.prune_consumers(c.stream(src.key))

    def _share_slots(self, jobs: list[Job]) -> list[Job]:
        """Each agent's free slots shared among its jobs (a claim reserves what it may take);
        with fewer slots than jobs, the jobs that get one take turns round by round."""
        by_agent: dict[Consumer, list[int]] = {}
        for i, job in enumerate(jobs):
            by_agent.setdefault(job[1], []).append(i)
        counts = [0] * len(jobs)
        for c, mine in by_agent.items():
            share, extra = divmod(c.slots.free, len(mine))
            turn = self.claim_rounds % len(mine)
            for k, i in enumerate(mine):
                counts[i] = share + (1 if (k - turn) % len(mine) < extra else 0)
        return [
            (src, c, n, idle, cursor)
            for (src, c, _, idle, cursor), n in zip(jobs, counts, strict=True)
            if n > 0
        ]

    async def _claim(self, jobs: list[Job]) -> list[str]:
        """One round trip: a ``claim.lua`` per job (stream, agent, count, min idle ms, cursor);
        the entries to their agents; the next cursor of each job ("0-0": done, or failed)."""
        if not jobs:
            return []
        lane = self._lane
        assert lane is not None
        secure = self.settings.secure
        script = "claim_secure" if secure else "claim"
        sha = getattr(self.scripts, script).sha
        extra = (self._proof_prefix,) if secure else ()
        commands = []
        for src, c, n, idle, cursor in jobs:
            c.slots.reserve(n)
            commands.append(
                ("EVALSHA", sha, 1, src.key, AGENT_GROUP, c.instance_id, idle, cursor, n, *extra)
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
        for src, _, _, _, _ in jobs:
            src.backlog = False
        for (src, c, n, _, cursor), reply in zip(jobs, replies, strict=True):
            if isinstance(reply, Exception):
                c.slots.settle(n, 0)
                cursors.append(cursor)  # again next time
                if isinstance(reply, NoScriptError):  # Redis restarted or SCRIPT FLUSH
                    await self.client.script_load(load_script_text(script))
                elif nogroup(reply):
                    await self.ensure_group(src.key)
                else:  # pragma: no cover - logged, tried again next round
                    log.warning("claiming on %s for %s failed: %s", src.key, c.name, reply)
                continue
            next_cursor, entries, counts = reply[0], reply[1], reply[2]
            verdicts = list(reply[3]) if secure else None
            cursors.append(text(next_cursor))
            if len(entries) >= n:
                src.backlog = True  # there may be more idle entries: more members next round
            c.slots.settle(n, c.claimed(src.key, entries, counts, verdicts))
        return cursors

    # -- leases and acks -----------------------------------------------------------------------
    async def _lease_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.heartbeat_interval)
            await self.renew_leases()

    async def renew_leases(self) -> None:
        """Reset the idle time of every entry a handler holds (one pipeline for the host)."""
        jobs = []
        consumers = self._consumers
        for i, c in enumerate(list(consumers)):
            if i and not i % _SCAN_CHUNK:
                await asyncio.sleep(0)  # a host of 10,000: not one long hold of the loop
            for s in c.streams:  # most agents hold nothing: that is checked first, cheaply
                if s.held:
                    break
            else:
                continue
            if c not in consumers or not c.may_renew():
                continue  # the name's holder must be able to claim them
            for s in c.streams:
                if not s.held:
                    continue
                ids = list(s.held)
                for i in range(0, len(ids), _LEASE_CHUNK):
                    jobs.append((c, s, ids[i : i + _LEASE_CHUNK]))
        if not jobs:
            return
        results = await self._lease_round(jobs)
        if any(isinstance(r, NoScriptError) for r in results):
            # a cluster's pipeline does not load scripts (a node that never ran it, or a
            # promoted replica): load it everywhere, then again those that were refused
            await self.client.script_load(self.scripts.lease.script)
            again = [i for i, r in enumerate(results) if isinstance(r, NoScriptError)]
            for i, r in zip(again, await self._lease_round([jobs[i] for i in again]), strict=True):
                results[i] = r
        for (_, s, _), lost in zip(jobs, results, strict=True):
            if isinstance(lost, Exception):
                log.warning("renewing leases on %s failed: %s", s.key, lost)
                continue
            for eid in lost:
                s.held.discard(text(eid))

    async def _lease_round(self, jobs: list[tuple[Consumer, Any, list[str]]]) -> list[Any]:
        async with self.client.pipeline(transaction=False) as pipe:
            for c, s, chunk in jobs:
                await self.scripts.lease(
                    keys=[s.key], args=[AGENT_GROUP, c.instance_id, *chunk], client=pipe
                )
            results: list[Any] = await pipe.execute(raise_on_error=False)
        return results

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

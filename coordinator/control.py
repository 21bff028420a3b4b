"""The control-stream consumer: announce, heartbeat and leave, read through a consumer group.

Coordinators share the group ``coordinators`` on ``R:control``; each reads batches with
``XREADGROUP ... >``. The entries of a batch are checked in Python (announces fully validated,
plain heartbeats parsed without pydantic), then applied in stream order by ONE Lua call
(``coordinator/lua/control.lua``, at most ``MAX_SCRIPT_ENTRIES`` entries per call) that also
answers accepted announces and leaves on their reply lists and ``XACK``s what it applied. What is
left (refusals, ``reannounce`` requests, dead letters and their acks) goes out in one pipeline,
usually empty. Entries that cannot be decoded or validated are dead-lettered and acknowledged (and
answered with the error when their fields name the agent: ``outbox.queue_error_answer``): a
bad entry never stalls the stream; if Redis refuses a whole script call, its entries are retried
one by one so only the one at fault is dead-lettered.

``NOGROUP`` (Redis restarted empty) recreates the group. Entries left pending by a dead
coordinator are taken over by ``coordinator.recovery``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from pydantic import ValidationError
from redis.asyncio.client import Pipeline
from redis.exceptions import ResponseError

from agent_sdk.connection import CONNECTION_ERRORS
from agent_sdk.retry import keep_running
from coordinator.authn import Screen, Verdicts, queue_unproved
from coordinator.loops import RETRYABLE
from coordinator.outbox import (
    queue_dead_letter,
    queue_error_answer,
    queue_reannounce,
    queue_reply,
)
from coordinator.registry import ControlBatch, ControlResult, Registry, name_taken
from coordinator.settings import CoordinatorSettings
from coordinator.stats import CoordinatorStats
from coordinator.validation import (
    AnnounceEntry,
    FastHeartbeat,
    FastLease,
    PreparedAnnounce,
    fast_announce,
    fast_heartbeat,
    fast_lease,
    is_identifier,
    prepare_announce,
    validation_error_info,
)
from schemas.agent import ControlType, Heartbeat, Lease, Leave
from schemas.envelope import Envelope, decode_fields
from schemas.errors import ErrorCode, ErrorInfo, ProtocolError
from schemas.keys import COORDINATOR_GROUP
from schemas.names import lease_host

__all__ = ["MAX_SCRIPT_ENTRIES", "ControlConsumer", "Entry"]

log = logging.getLogger("agentbus.coordinator.control")

Entry = tuple[bytes, dict[bytes, bytes] | None]

#: Most control entries applied by one script call (Redis runs nothing else meanwhile: about
#: 20 ms for 500 announces, less for heartbeats).
MAX_SCRIPT_ENTRIES = 500
#: Announcements answered per script call when many come in one read (``answer_slices``).
ANSWER_CHUNK = 16
#: While a script is under way, the read loop checks the next batch in slices of this many
#: entries, giving the event loop a turn between slices (to send the script).
_OVERLAP_EVERY = 32
#: Past this many (name, instance) pairs remembered as asked to re-announce, expired ones go.
_REANNOUNCED_MAX = 100_000


def _internal(e: Exception) -> ErrorInfo:
    return ErrorInfo(
        code=ErrorCode.INTERNAL,
        description=f"the coordinator failed on this entry: {type(e).__name__}: {e}",
        details={"exception": type(e).__name__},
    )


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def stale_announce(op: _Announce) -> ErrorInfo:
    return ErrorInfo(
        code=ErrorCode.STALE,
        description=(
            f"announcement of {op.ann.name!r} (instance {op.ann.instance_id}) was applied after "
            "that instance left or expired, or too late: not applied; announce again"
        ),
        details={"name": op.ann.name, "instance_id": op.ann.instance_id},
    )


class _Outbox:
    """What goes out after the script call: one pipeline, and the ids it acknowledges."""

    __slots__ = ("acks", "pipe")

    def __init__(self, pipe: Pipeline) -> None:
        self.pipe = pipe
        self.acks: list[str] = []


@dataclass(frozen=True, slots=True)
class _Announce:
    ann: PreparedAnnounce
    reply_to: str
    correlation_id: str


@dataclass(frozen=True, slots=True)
class _Leave:
    name: str
    instance_id: str
    reply_to: str
    correlation_id: str


@dataclass(frozen=True, slots=True)
class _Lease:
    lease: FastLease
    reply_to: str | None  # where the host reads: reannounce requests for its agents go there


#: An entry of a batch: (entry id, its fields, what to apply: a heartbeat, the heartbeats of a
#: lease, an announce or a leave).
_Item = tuple[str, dict[bytes, bytes], FastHeartbeat | _Lease | _Announce | _Leave]


class _Batch:
    """Entries for one script call, remembered so their outcome can be answered and counted
    (and so they can be re-applied one by one)."""

    __slots__ = ("announces", "items", "leaves", "script", "weight")

    def __init__(self) -> None:
        self.script = ControlBatch()
        self.items: list[_Item] = []
        self.announces: dict[str, _Announce] = {}
        self.leaves = 0
        #: entries, counting each heartbeat of a lease (what the script will apply)
        self.weight = 0

    @property
    def size(self) -> int:
        return len(self.items)

    def heartbeat(self, eid: str, fields: dict[bytes, bytes], hb: FastHeartbeat) -> None:
        self.script.heartbeat(hb)  # the hot path: nothing else
        self.items.append((eid, fields, hb))
        self.weight += 1

    def lease(
        self, eid: str, fields: dict[bytes, bytes], lease: FastLease, reply_to: str | None
    ) -> None:
        self.add((eid, fields, _Lease(lease, reply_to)))

    def lease_reply_to(self, eid: str) -> str | None:
        for item_eid, _, op in self.items:
            if item_eid == eid and isinstance(op, _Lease):
                return op.reply_to
        return None

    def announce(
        self,
        eid: str,
        fields: dict[bytes, bytes],
        ann: PreparedAnnounce,
        reply_to: str,
        correlation_id: str,
    ) -> None:
        self.add((eid, fields, _Announce(ann, reply_to, correlation_id)))

    def leave(
        self,
        eid: str,
        fields: dict[bytes, bytes],
        name: str,
        instance_id: str,
        reply_to: str | None,
        correlation_id: str,
    ) -> None:
        self.add((eid, fields, _Leave(name, instance_id, reply_to or "", correlation_id)))

    def add(self, item: _Item) -> None:
        eid, _, op = item
        if isinstance(op, _Announce):
            self.script.announce(eid, op.ann, op.reply_to, op.correlation_id)
            self.announces[eid] = op
            self.weight += 1
        elif isinstance(op, _Leave):
            self.script.leave(eid, op.name, op.instance_id, op.reply_to, op.correlation_id)
            self.leaves += 1
            self.weight += 1
        elif isinstance(op, _Lease):
            lease = op.lease
            for hb in lease.beats:
                self.script.heartbeat(hb)
            if lease.lease is not None and (lease.renew or lease.ttl_ms):
                members = lease.members
                if members is None:  # a 2.1 host: one entry per interval, all its agents
                    members = len(lease.beats) + len(lease.renew)
                self.script.renew(eid, lease.lease, lease.ttl_ms, lease.renew, members)
            elif not lease.beats:  # nothing to apply: acknowledged by the script all the same
                self.script.renew(eid, "", 0, [], 0)
            # a renewal costs the script one command for the lease (names checked only when
            # the lease does not hold as many as the entry carries)
            self.weight += len(lease.beats) + len(lease.renew) // 64
        else:
            self.script.heartbeat(op)
            self.weight += 1
        self.items.append(item)

    def heartbeats(self, failed: dict[str, str]) -> int:
        """How many heartbeats were applied (those of entries Redis refused are not)."""
        n = 0
        for eid, _, op in self.items:
            if eid in failed:
                continue
            if isinstance(op, tuple):
                n += 1
            elif isinstance(op, _Lease):
                n += len(op.lease.beats) + len(op.lease.renew)
        return n


@dataclass(slots=True)
class _Prepared:
    """A read batch, checked: its ids, the script batches, the outbox."""

    ids: list[str]
    batches: list[_Batch]
    out: _Outbox


def answer_slices(entries: list[Entry]) -> list[list[Entry]]:
    """``entries`` cut after every ``ANSWER_CHUNK`` announcements: a burst of agents starting
    together is answered a slice at a time (the first answers leave while the next slice is
    checked) instead of all at once at the end. Heartbeats and leases are not counted: a
    backlog of them stays one script call."""
    slices: list[list[Entry]] = []
    start = announces = 0
    for i, (_, fields) in enumerate(entries):
        if fields is not None and fields.get(b"type") == b"announce":
            announces += 1
            if announces == ANSWER_CHUNK:
                slices.append(entries[start : i + 1])
                start, announces = i + 1, 0
    if start < len(entries):
        slices.append(entries[start:])
    return slices


class ControlConsumer:
    """Reads and applies the control stream for one coordinator."""

    def __init__(
        self,
        client: aioredis.Redis,
        registry: Registry,
        settings: CoordinatorSettings,
        stats: CoordinatorStats,
    ) -> None:
        self._client = client
        self._registry = registry
        self.settings = settings
        self.stats = stats
        self._control = settings.keys.control()
        self._reply_prefix = settings.keys.agents_prefix
        self._group_ready = False
        #: ids of the entries being applied now (by the read loop or a claim)
        self.in_hand: set[str] = set()
        #: (name, instance) asked to re-announce -> until when not to ask again (monotonic):
        #: one ``reannounce`` per instance per TTL, however many heartbeats or leases it sends
        #: meanwhile (a busy host would otherwise get one per lease, and fall further behind).
        self._reannounced: dict[tuple[str, str], float] = {}
        #: acl mode: proofs and policy checked before anything is applied (coordinator.authn)
        self.screen: Screen | None = Screen(client, settings) if settings.secure else None
        self._verdicts: Verdicts | None = None

    @property
    def registry(self) -> Registry:
        return self._registry

    # -- the group ----------------------------------------------------------------------------
    async def ensure_group(self) -> None:
        """Create the consumer group (from the start of the stream) unless it exists."""
        try:
            await self._client.xgroup_create(
                self._control, COORDINATOR_GROUP, id="0", mkstream=True
            )
            log.info("created consumer group %s on %s", COORDINATOR_GROUP, self._control)
        except ResponseError as e:
            if "BUSYGROUP" not in str(e):
                raise
        self._group_ready = True

    # -- the read loop ------------------------------------------------------------------------
    async def run(self, stopping: asyncio.Event) -> None:
        """Read and apply batches until ``stopping``; the batches in hand are finished first.

        Under a backlog (a full batch was read) the next batch is read before this one's script
        is sent and checked in Python while Redis runs the script: the coordinator's Python and
        Redis work overlap. Scripts still run one after the other, in stream order.
        """
        pending: _Prepared | None = None
        #: Entries read but not prepared yet, in stream order (a read cut into slices).
        queued: deque[list[Entry]] = deque()
        backlog = False  # the last read was full: read again before waiting

        async def step() -> None:
            nonlocal pending, backlog
            try:
                if not self._group_ready:
                    await self.ensure_group()
                if pending is None:
                    if not queued:
                        entries = await self._read(stopping)
                        if not entries:  # None: asked to stop while waiting (nothing in hand)
                            return
                        backlog = len(entries) >= self.settings.batch_size
                        queued.extend(answer_slices(entries))
                    pending = await self._prepare(queued.popleft())
                current, pending = pending, None
                if not queued and backlog:
                    try:
                        more = await self._read_now()
                    except BaseException:
                        pending = current
                        raise
                    backlog = len(more) >= self.settings.batch_size
                    queued.extend(answer_slices(more))
                ahead = queued.popleft() if queued else []
                applying = asyncio.ensure_future(self._finish(current))
                try:
                    if ahead:  # turns the loop now and then: the script goes out meanwhile
                        pending = await self._prepare(ahead, overlap=True)
                finally:
                    await applying
            except ResponseError as e:
                if "NOGROUP" not in str(e):
                    raise
                log.warning("control group is gone (Redis restarted?); recreating it")
                self._group_ready = False
                self._release(pending)  # those entries went with the stream
                pending = None
                queued.clear()
            except RETRYABLE:
                raise
            except Exception:  # a bug: logged whole by keep_running; consuming goes on
                self._release(pending)  # left pending in the group: claimed back (recovery)
                pending = None
                queued.clear()
                raise

        def failed(error: BaseException) -> None:
            self.stats.errors += 1

        await keep_running(
            "reading the control stream",
            step,
            log=log,
            cap=self.settings.retry_max_backoff,
            stopping=stopping,
            expected=RETRYABLE,
            on_error=failed,
        )
        if pending is not None:  # read ahead before the stop: finish it too
            await self._finish(pending)
        while queued:
            await self.process(queued.popleft())

    def _release(self, prepared: _Prepared | None) -> None:
        if prepared is not None:
            self.in_hand.difference_update(prepared.ids)

    async def _read(self, stopping: asyncio.Event) -> list[Entry] | None:
        """One ``XREADGROUP``; ``None`` when asked to stop while waiting (nothing in hand)."""
        s = self.settings
        read = asyncio.ensure_future(
            self._client.xreadgroup(
                COORDINATOR_GROUP,
                s.coordinator_id,
                {self._control: ">"},
                count=s.batch_size,
                block=max(1, round(s.read_block * 1000)),
            )
        )
        stop = asyncio.ensure_future(stopping.wait())
        try:
            await asyncio.wait({read, stop}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
            if not read.done():  # asked to stop, or cancelled ourselves: abandon the read
                read.cancel()
                await asyncio.gather(read, return_exceptions=True)
        if read.cancelled():
            return None
        return self._entries(read.result())

    async def _read_now(self) -> list[Entry]:
        """One ``XREADGROUP`` that does not wait."""
        s = self.settings
        response = await self._client.xreadgroup(
            COORDINATOR_GROUP, s.coordinator_id, {self._control: ">"}, count=s.batch_size
        )
        return self._entries(response)

    @staticmethod
    def _entries(response: Any) -> list[Entry]:
        if not response:
            return []
        return list(response[0][1])

    # -- applying a batch ---------------------------------------------------------------------
    async def process(self, entries: list[Entry]) -> None:
        """Apply entries in stream order; every entry ends acknowledged.

        While they are being applied their ids are in ``in_hand`` (``coordinator.recovery``
        never claims them from us)."""
        await self._finish(await self._prepare(entries))

    async def _prepare(self, entries: list[Entry], *, overlap: bool = False) -> _Prepared:
        """Check every entry and sort it into script batches (or answer it): no I/O. The ids
        are in hand from here until ``_finish`` is done. With ``overlap`` the event loop gets
        a turn before the first entry and every ``_OVERLAP_EVERY`` entries, so the script of
        the batch in hand (hundreds of KB) goes out while we work and Redis runs it meanwhile."""
        ids = [_text(raw_id) for raw_id, _ in entries]
        self.in_hand.update(ids)
        try:
            verdicts = None if self.screen is None else await self.screen.screen(entries)
            self._verdicts = verdicts
            out = _Outbox(self._client.pipeline(transaction=False))
            batches = [_Batch()]
            unproved: list[tuple[str, dict[bytes, bytes]]] = []  # refused in bulk (authn)
            for i, (eid, (_, fields)) in enumerate(zip(ids, entries, strict=True)):
                if overlap and i % _OVERLAP_EVERY == 0:
                    # first before any work: the script call of the batch in hand was only
                    # scheduled; it goes out now, and Redis runs it while we check these
                    await asyncio.sleep(0)
                if fields is None:  # deleted while pending: nothing to apply
                    out.acks.append(eid)
                    continue
                if verdicts is not None and eid in verdicts.refused:
                    info, answer = verdicts.refused[eid]
                    if answer:
                        self._dead(out, eid, fields, info)
                    else:
                        unproved.append((eid, fields))
                        out.acks.append(eid)
                    continue
                batch = batches[-1]
                hb = fast_heartbeat(eid, fields)
                if hb is not None:
                    batch.heartbeat(eid, fields, hb)
                elif (lease := fast_lease(eid, fields)) is not None:
                    if verdicts is not None:
                        lease = verdicts.lease(eid, lease)
                    batch.lease(eid, fields, lease, self._raw_reply_address(fields))
                else:
                    self._entry(eid, fields, batch, out)
                if batch.weight >= MAX_SCRIPT_ENTRIES:
                    batches.append(_Batch())
            if unproved:
                self.stats.dead_letters += queue_unproved(out.pipe, self.settings, unproved)
        except BaseException:
            self.in_hand.difference_update(ids)
            raise
        if verdicts is not None and self.screen is not None:
            self.screen.dropped_beats += verdicts.dropped_beats
        return _Prepared(ids, batches, out)

    async def _finish(self, prepared: _Prepared) -> None:
        """Apply the prepared batches (one script call each), then send what is left."""
        try:
            out = prepared.out
            for batch in prepared.batches:
                await self._apply(batch, out)
            if out.acks:
                out.pipe.xack(self._control, COORDINATOR_GROUP, *out.acks)
            if len(out.pipe):
                await out.pipe.execute()
        finally:
            self.in_hand.difference_update(prepared.ids)

    def _entry(self, eid: str, fields: dict[bytes, bytes], batch: _Batch, out: _Outbox) -> None:
        """Sort one entry that is not a plain heartbeat into the batch, or answer it here."""
        try:
            plain = fast_announce(eid, fields)
            if plain is not None:  # an SDK's announce: no envelope to build
                self._announce(eid, plain, fields, batch, out)
                return
            env = decode_fields(fields, eid)
        except ProtocolError as e:
            self._dead(out, eid, fields, e.info)
            return
        except Exception as e:  # a decoder bug must not stop the stream
            log.exception("decoding control entry %s failed", eid)
            self._dead(out, eid, fields, _internal(e))
            return
        try:
            if env.type == ControlType.HEARTBEAT:
                slow = self._slow_heartbeat(env)
                if isinstance(slow, ErrorInfo):
                    self._dead(out, eid, fields, slow)
                else:
                    batch.heartbeat(eid, fields, (eid, *slow))
            elif env.type == ControlType.ANNOUNCE:
                self._announce(eid, AnnounceEntry.of(env), fields, batch, out)
            elif env.type == ControlType.LEAVE:
                self._leave(eid, env, fields, batch, out)
            elif env.type == ControlType.LEASE:
                self._lease(eid, env, fields, batch, out)
            else:
                info = ErrorInfo(
                    code=ErrorCode.UNKNOWN_TYPE,
                    description=f"unknown control message type {env.type!r}",
                    details={"type": env.type},
                )
                self._dead(out, eid, fields, info)
        except Exception as e:  # a bug: never stall the stream on it
            log.exception("preparing control entry %s failed", eid)
            self._dead(out, eid, fields, _internal(e))

    def _dead(
        self,
        out: _Outbox,
        eid: str,
        fields: dict[bytes, bytes],
        info: ErrorInfo,
        *,
        answer: bool = True,
    ) -> None:
        """Dead-letter and acknowledge an entry; answer it unless ``answer`` is False (an
        unauthenticated entry: its reply address is whatever the forger wrote)."""
        log.warning("dead-lettering control entry %s: [%s] %s", eid, info.code, info.description)
        queue_dead_letter(out.pipe, self.settings, eid, fields, info)
        if answer:
            queue_error_answer(out.pipe, self.settings, eid, fields, info)  # tell the agent why
        out.acks.append(eid)
        self.stats.dead_letters += 1

    def _slow_heartbeat(self, env: Envelope) -> tuple[str, str, str, str, str] | ErrorInfo:
        try:
            hb = Heartbeat.model_validate(env.payload)
        except ValidationError as e:
            return validation_error_info(e, "heartbeat")
        for field, value in (("sender", env.sender), ("payload.instance_id", hb.instance_id)):
            if not is_identifier(value):
                return ErrorInfo(
                    code=ErrorCode.INVALID_NAME,
                    description=f"invalid heartbeat: {field} {value!r} is not a valid name",
                    details={"field": field},
                )
        return (env.sender, hb.instance_id, str(hb.load), hb.status.value, str(hb.epoch or 0))

    def _lease(
        self, eid: str, env: Envelope, fields: dict[bytes, bytes], batch: _Batch, out: _Outbox
    ) -> None:
        try:
            lease = Lease.model_validate(env.payload)
        except ValidationError as e:
            self._dead(out, eid, fields, validation_error_info(e, "lease"))
            return
        beats = [
            (eid, name, inst, str(load), status.value, str(epoch or 0))
            for name, inst, load, status, epoch in lease.beats
        ]
        fast = FastLease(beats, lease.lease, lease.ttl_ms or 0, list(lease.renew), lease.members)
        if self._verdicts is not None:
            fast = self._verdicts.lease(eid, fast)
        batch.lease(eid, fields, fast, self._reply_address(env.reply_to))

    def _reply_address(self, to: str | None) -> str | None:
        if to and to.startswith(self._reply_prefix):
            return to
        return None

    def _raw_reply_address(self, fields: dict[bytes, bytes]) -> str | None:
        raw = fields.get(b"reply_to")
        if raw is None:
            return None
        try:
            to = raw.decode()
        except UnicodeDecodeError:
            return None
        return to if to.startswith(self._reply_prefix) else None

    def _announce(
        self,
        eid: str,
        env: AnnounceEntry,
        fields: dict[bytes, bytes],
        batch: _Batch,
        out: _Outbox,
    ) -> None:
        if env.expired:  # the agent gave up waiting (NoCoordinator): do not register it
            log.info("dropping announcement %s of %s: its deadline passed", eid, env.sender)
            self.stats.stale += 1
            out.acks.append(eid)
            return
        reply_to = self._reply_address(env.reply_to)
        if reply_to is None:
            info = ErrorInfo(
                code=ErrorCode.INVALID_RECORD,
                description=f"announce needs reply_to under {self._reply_prefix!r}",
                details={"reply_to": env.reply_to},
            )
            self._dead(out, eid, fields, info)
            return
        prepared = prepare_announce(env.payload, int(eid.split("-", 1)[0]))
        if isinstance(prepared, ErrorInfo):
            target = env.sender if is_identifier(env.sender) else None
            self._refuse(out, eid, reply_to, target, env.id, prepared)
            return
        if env.sender != prepared.name:  # heartbeats and leaves are matched on the sender
            info = ErrorInfo(
                code=ErrorCode.INVALID_RECORD,
                description=f"announce sender {env.sender!r} is not the card's name "
                f"{prepared.name!r}: an agent announces under its own name",
                details={"field": "sender", "sender": env.sender, "name": prepared.name},
            )
            self._refuse(out, eid, reply_to, prepared.name, env.id, info)
            return
        if self._verdicts is not None and eid in self._verdicts.lessee_of:  # acl mode
            lessee = prepared.fields["lessee"] = self._verdicts.lessee_of[eid]
            lease = prepared.fields.get("lease")
            if lease is not None and lease_host(lease) != lessee:
                info = ErrorInfo(
                    code=ErrorCode.FORBIDDEN,
                    description=f"announce names lease {lease!r}, which is not a lease of "
                    f"host {lessee!r} (the host reading its reply_to)",
                    details={"lease": lease, "lessee": lessee},
                )
                self._refuse(out, eid, reply_to, prepared.name, env.id, info)
                return
        batch.announce(eid, fields, prepared, reply_to, env.id)

    def _leave(
        self, eid: str, env: Envelope, fields: dict[bytes, bytes], batch: _Batch, out: _Outbox
    ) -> None:
        try:
            leave = Leave.model_validate(env.payload)
        except ValidationError as e:
            self._dead(out, eid, fields, validation_error_info(e, "leave"))
            return
        batch.leave(
            eid, fields, env.sender, leave.instance_id, self._reply_address(env.reply_to), env.id
        )

    def _refuse(
        self,
        out: _Outbox,
        eid: str,
        reply_to: str,
        target: str | None,
        correlation_id: str,
        error: ErrorInfo,
    ) -> None:
        self.stats.refused += 1
        log.info("refused announcement %s: [%s] %s", eid, error.code, error.description)
        queue_reply(
            out.pipe,
            self.settings,
            reply_to,
            type=ControlType.ANNOUNCE_RESULT,
            target=target,
            correlation_id=correlation_id,
            error=error,
        )
        out.acks.append(eid)

    # -- the script call ----------------------------------------------------------------------
    async def _apply(self, batch: _Batch, out: _Outbox) -> None:
        """One script call for the batch; on a refusal by Redis, one call per entry."""
        if not batch.size:
            return
        try:
            result = await self._registry.apply(batch.script)
        except CONNECTION_ERRORS:
            raise  # entries stay pending: claimed back after claim_idle (recovery)
        except ResponseError as e:
            if "NOGROUP" in str(e):
                raise  # Redis lost the stream: the read loop recreates the group
            log.exception("applying a batch of %d control entries failed", batch.size)
            await self._apply_one_by_one(batch, out)
            return
        except Exception:
            # The script failed as a whole (an entry Redis refuses fails alone, in the script:
            # see ControlResult.failed), e.g. a bug. What it applied before failing stays
            # applied; applying it again is harmless (replies may be pushed twice). Retry
            # entry by entry so only the entry at fault is dead-lettered.
            log.exception("applying a batch of %d control entries failed", batch.size)
            await self._apply_one_by_one(batch, out)
            return
        self._account(batch, result, out)

    async def _apply_one_by_one(self, batch: _Batch, out: _Outbox) -> None:
        for item in batch.items:
            single = _Batch()
            single.add(item)
            try:
                result = await self._registry.apply(single.script)
            except CONNECTION_ERRORS:
                raise
            except Exception as e:
                eid, fields, _ = item
                log.exception("applying control entry %s failed", eid)
                self._dead(out, eid, fields, _internal(e))
                continue
            self._account(single, result, out)

    def _account(self, batch: _Batch, result: ControlResult, out: _Outbox) -> None:
        """Count what the script did; answer what it left to us (refusals, unknown agents)."""
        failed = dict(result.failed)
        if failed:
            for eid, fields, _ in batch.items:
                if eid in failed:
                    log.error("Redis refused control entry %s: %s", eid, failed[eid])
                    info = ErrorInfo(
                        code=ErrorCode.INTERNAL,
                        description=f"Redis refused applying this entry: {failed[eid]}",
                        details={"exception": "ResponseError"},
                    )
                    self._dead(out, eid, fields, info)
        for reply_to, data in result.replies:  # a cluster's: the script could not push them
            out.pipe.lpush(reply_to, data)
            out.pipe.pexpire(reply_to, self.settings.reply_ttl_ms)
        self.stats.heartbeats += batch.heartbeats(failed)
        self.stats.leaves += result.removed
        announces_failed = sum(1 for eid in failed if eid in batch.announces)
        self.stats.announces += (
            len(batch.announces) - len(result.refused) - len(result.stale) - announces_failed
        )
        for eid, holder in result.refused.items():
            op = batch.announces[eid]
            name = op.ann.name
            self._refuse(out, eid, op.reply_to, name, op.correlation_id, name_taken(name, holder))
        for eid in result.stale:
            op = batch.announces[eid]
            self.stats.stale += 1
            self._refuse(out, eid, op.reply_to, op.ann.name, op.correlation_id, stale_announce(op))
        told: set[tuple[str, str]] = set()
        now = time.monotonic()
        for eid, name, inst, other in result.unknown:
            if (name, inst) in told or now < self._reannounced.get((name, inst), 0.0):
                continue  # asked already: its answer (an announce) is on its way
            told.add((name, inst))
            self._reannounced[(name, inst)] = now + self.settings.ttl
            to = batch.lease_reply_to(eid)
            queue_reannounce(out.pipe, self.settings, name, inst, other or None, reply_to=to)
        self.stats.reannounces += len(told)
        if len(self._reannounced) > _REANNOUNCED_MAX:
            self._reannounced = {k: t for k, t in self._reannounced.items() if t > now}

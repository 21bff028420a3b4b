"""The control-stream consumer: announce, heartbeat and leave, read through a consumer group.

Coordinators share the group ``coordinators`` on ``R:control``; each reads batches with
``XREADGROUP ... >``. In a batch, runs of consecutive heartbeats become ONE Lua call that applies
them and ``XACK``s them; announces and leaves are applied one script call each, in stream order,
and their replies, dead letters and acks go out in one pipeline. Entries that cannot be decoded
or validated are dead-lettered and acknowledged: a bad entry never stalls the stream.

``NOGROUP`` (Redis restarted empty) recreates the group. Entries left pending by a dead
coordinator are taken over by ``coordinator.recovery``.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import redis.asyncio as aioredis
from pydantic import ValidationError
from redis.asyncio.client import Pipeline
from redis.exceptions import ResponseError

from agent_sdk.connection import CONNECTION_ERRORS
from coordinator.loops import RETRYABLE, Backoff, wait_or_stop
from coordinator.outbox import LEAVE_RESULT, queue_dead_letter, queue_reannounce, queue_reply
from coordinator.registry import Registry
from coordinator.settings import CoordinatorSettings
from coordinator.stats import CoordinatorStats
from coordinator.validation import (
    FastHeartbeat,
    fast_heartbeat,
    is_identifier,
    prepare_announce,
    validation_error_info,
)
from schemas.agent import ControlType, Heartbeat, Leave
from schemas.envelope import Envelope, decode_fields
from schemas.errors import ErrorCode, ErrorInfo, ProtocolError
from schemas.keys import COORDINATOR_GROUP

__all__ = ["ControlConsumer", "Entry"]

log = logging.getLogger("agentbus.coordinator.control")

Entry = tuple[bytes, dict[bytes, bytes] | None]


def _internal(e: Exception) -> ErrorInfo:
    return ErrorInfo(
        code=ErrorCode.INTERNAL,
        description=f"the coordinator failed on this entry: {type(e).__name__}: {e}",
        details={"exception": type(e).__name__},
    )


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


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
        """Read and apply batches until ``stopping``; the batch in hand is finished first."""
        backoff = Backoff(cap=self.settings.retry_max_backoff)
        while not stopping.is_set():
            try:
                if not self._group_ready:
                    await self.ensure_group()
                entries = await self._read(stopping)
                if entries is None:
                    return
                await self.process(entries)
                backoff.reset()
            except ResponseError as e:
                if "NOGROUP" in str(e):
                    log.warning("control group is gone (Redis restarted?); recreating it")
                    self._group_ready = False
                    continue
                await self._failed("reading the control stream", e, backoff, stopping)
            except RETRYABLE as e:
                await self._failed("reading the control stream", e, backoff, stopping)
            except Exception as e:  # a bug: log it whole, keep consuming
                log.exception("control loop failed unexpectedly")
                await self._failed("reading the control stream", e, backoff, stopping)

    async def _failed(
        self, doing: str, e: BaseException, backoff: Backoff, stopping: asyncio.Event
    ) -> None:
        self.stats.errors += 1
        delay = backoff.next()
        log.warning("%s failed (%s: %s); retrying in %.2fs", doing, type(e).__name__, e, delay)
        await wait_or_stop(stopping, delay)

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
        response: Any = read.result()
        if not response:
            return []
        return list(response[0][1])

    # -- applying a batch ---------------------------------------------------------------------
    async def process(self, entries: list[Entry]) -> None:
        """Apply entries in stream order; every entry ends acknowledged."""
        pipe = self._client.pipeline(transaction=False)
        acks: list[str] = []
        run: list[FastHeartbeat] = []
        for raw_id, fields in entries:
            eid = _text(raw_id)
            if fields is None:
                acks.append(eid)
                continue
            hb = fast_heartbeat(eid, fields)
            if hb is not None:
                run.append(hb)
                continue
            try:
                env = decode_fields(fields, eid)
            except ProtocolError as e:
                self._dead(pipe, eid, fields, e.info, acks)
                continue
            except Exception as e:  # a decoder bug must not stop the stream
                log.exception("decoding control entry %s failed", eid)
                self._dead(pipe, eid, fields, _internal(e), acks)
                continue
            if env.type == ControlType.HEARTBEAT:
                slow = self._slow_heartbeat(env)
                if isinstance(slow, ErrorInfo):
                    self._dead(pipe, eid, fields, slow, acks)
                else:
                    run.append((eid, *slow))
                continue
            await self._heartbeats(run, pipe)
            run = []
            try:
                await self._apply(eid, env, fields, pipe, acks)
            except CONNECTION_ERRORS:
                raise
            except Exception as e:  # Redis refused it, or a bug: never stall the stream on it
                log.exception("applying control entry %s failed", eid)
                self._dead(pipe, eid, fields, _internal(e), acks)
        await self._heartbeats(run, pipe)
        if acks:
            pipe.xack(self._control, COORDINATOR_GROUP, *acks)
        if len(pipe):
            await pipe.execute()

    def _dead(
        self,
        pipe: Pipeline,
        eid: str,
        fields: dict[bytes, bytes],
        info: ErrorInfo,
        acks: list[str],
    ) -> None:
        log.warning("dead-lettering control entry %s: [%s] %s", eid, info.code, info.description)
        queue_dead_letter(pipe, self.settings, eid, fields, info)
        acks.append(eid)
        self.stats.dead_letters += 1

    def _slow_heartbeat(self, env: Envelope) -> tuple[str, str, str, str] | ErrorInfo:
        try:
            hb = Heartbeat.model_validate(env.payload)
        except ValidationError as e:
            return validation_error_info(e, "heartbeat")
        if not is_identifier(env.sender) or not is_identifier(hb.instance_id):
            return ErrorInfo(
                code=ErrorCode.INVALID_NAME,
                description="heartbeat sender and instance_id must be valid names",
            )
        return (env.sender, hb.instance_id, str(hb.load), hb.status.value)

    async def _heartbeats(self, run: list[FastHeartbeat], pipe: Pipeline) -> None:
        if not run:
            return
        unknown = await self._registry.heartbeats(run)
        self.stats.heartbeats += len(run)
        told: set[tuple[str, str]] = set()
        for i in unknown:
            _, name, inst, _, _ = run[i]
            if (name, inst) not in told:
                told.add((name, inst))
                queue_reannounce(pipe, self.settings, name, inst)
        self.stats.reannounces += len(told)

    def _reply_address(self, env: Envelope) -> str | None:
        to = env.reply_to
        if to and to.startswith(self._reply_prefix):
            return to
        return None

    async def _apply(
        self,
        eid: str,
        env: Envelope,
        fields: dict[bytes, bytes],
        pipe: Pipeline,
        acks: list[str],
    ) -> None:
        if env.type == ControlType.ANNOUNCE:
            if env.expired():  # the agent gave up waiting (NoCoordinator): do not register it
                log.info("dropping announcement %s of %s: its deadline passed", eid, env.sender)
                self.stats.stale += 1
                acks.append(eid)
                return
            reply_to = self._reply_address(env)
            if reply_to is None:
                info = ErrorInfo(
                    code=ErrorCode.INVALID_RECORD,
                    description=f"announce needs reply_to under {self._reply_prefix!r}",
                    details={"reply_to": env.reply_to},
                )
                self._dead(pipe, eid, fields, info, acks)
                return
            await self._announce(eid, env, reply_to, pipe)
        elif env.type == ControlType.LEAVE:
            try:
                leave = Leave.model_validate(env.payload)
            except ValidationError as e:
                self._dead(pipe, eid, fields, validation_error_info(e, "leave"), acks)
                return
            removed = await self._registry.leave(env.sender, leave.instance_id)
            self.stats.leaves += int(removed)
            reply_to = self._reply_address(env)
            if reply_to:
                queue_reply(
                    pipe,
                    self.settings,
                    reply_to,
                    type=LEAVE_RESULT,
                    target=env.sender,
                    correlation_id=env.id,
                    payload={"removed": removed},
                )
        else:
            info = ErrorInfo(
                code=ErrorCode.UNKNOWN_TYPE,
                description=f"unknown control message type {env.type!r}",
                details={"type": env.type},
            )
            self._dead(pipe, eid, fields, info, acks)
            return
        acks.append(eid)

    async def _announce(self, eid: str, env: Envelope, reply_to: str, pipe: Pipeline) -> None:
        prepared = prepare_announce(env.payload, int(eid.split("-", 1)[0]))
        if isinstance(prepared, ErrorInfo):
            error: ErrorInfo | None = prepared
            record = None
            target: str | None = env.sender if is_identifier(env.sender) else None
        else:
            outcome = await self._registry.announce(eid, prepared)
            error, record, target = outcome.error, outcome.record, prepared.name
        if error is None:
            self.stats.announces += 1
        else:
            self.stats.refused += 1
            log.info("refused announcement %s: [%s] %s", eid, error.code, error.description)
        queue_reply(
            pipe,
            self.settings,
            reply_to,
            type=ControlType.ANNOUNCE_RESULT,
            target=target,
            correlation_id=env.id,
            payload=record,
            error=error,
        )

"""Membership: announce, heartbeat, re-announce and leave for one agent instance.

The protocol (docs/PROTOCOL.md, "Control plane"):

* ``announce`` goes to the control stream with ``reply_to`` = the instance's reply list; the
  coordinator answers ``announce_result`` (the stored record, or an error). No answer within
  ``announce_timeout`` raises ``NoCoordinator``; a ``name_taken`` refusal is retried until
  ``name_wait`` has passed (the holder may be a dead instance about to expire).
* a heartbeat (current ``load`` and ``status``) every ``heartbeat_interval``, sent by the host's
  loop (``agent_sdk.heartbeats``: one entry for all the agents of a process); ``wake()`` sends
  one at once (a status change should be visible now, not in a second).
* the instance re-announces (same instance id) when the coordinator says ``reannounce`` (the
  registry no longer holds it) or when the loop notices that its last successful heartbeat is
  older than its TTL (it was stalled, or Redis was unreachable, and may have been expired).
* fencing (``agent_sdk.fence``): every accepted announcement and every heartbeat that reached
  Redis renews the instance's lease; a ``name_taken`` answer to a *re*-announcement, or a
  ``reannounce`` saying another instance holds the name, loses the name for good
  (``NameLost``): the fence closes and ``on_lost`` is called; the instance never announces
  again. An announcement refused as ``stale`` (applied after the instance was expired) is sent
  again at once.
* a heartbeat the coordinator cannot apply (it failed validation) is answered with a
  ``heartbeat_result`` carrying the ``error``: logged at WARNING (and counted).
* ``leave`` on stop, then a short bounded wait until the record is gone (or a leave ack comes).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import orjson
import redis.asyncio as aioredis
from redis.exceptions import NoScriptError

from agent_sdk.connection import redis_errors
from agent_sdk.fence import Fence
from agent_sdk.messaging.batcher import Batcher, Op
from agent_sdk.messaging.codec import Outgoing
from agent_sdk.messaging.scripts import registered, script_text
from agent_sdk.replies import ReplyRouter
from agent_sdk.settings import Settings
from agent_sdk.writethrough import WriteThrough
from schemas.agent import (
    AgentCard,
    AgentRecord,
    AgentStatus,
    ControlType,
    Leave,
)
from schemas.envelope import Envelope, Kind
from schemas.errors import (
    ErrorCode,
    NameLost,
    NameTaken,
    NoCoordinator,
    ProtocolError,
    Refused,
    error_from_info,
)

if TYPE_CHECKING:
    from agent_sdk.heartbeats import Heartbeats

__all__ = ["CONTROL_MAXLEN", "Membership"]

log = logging.getLogger("agentbus.membership")

#: Approximate cap agents apply when they XADD to the control stream: the coordinator's default
#: ``control_maxlen`` (30 s of heartbeats at 10,000 agents). Coordinators also trim what they
#: have processed every claim round, so the stream normally holds only the backlog.
CONTROL_MAXLEN = 300_000
#: Longest wait (seconds) for the record to go after ``leave``.
_LEAVE_WAIT_MAX = 2.0
#: Seconds a leave waits for its answer before it also polls the record (an answer is lost
#: only with a coordinator stopped mid-way, or one older than leave answers).
_ACK_FIRST = 1.0
#: Announcements refused as ``stale`` sent again at once, at most this many times in a row.
_STALE_RETRIES = 3


class Membership:
    """Keeps one agent instance registered. Owned by ``Agent``; usable on its own."""

    def __init__(
        self,
        client: aioredis.Redis,
        settings: Settings,
        card: AgentCard,
        instance_id: str,
        router: ReplyRouter,
        fence: Fence | None = None,
        on_lost: Callable[[NameLost], None] | None = None,
        batcher: Batcher | None = None,
        lease: str | None = None,
        writer: WriteThrough | None = None,
    ) -> None:
        self.client = client
        self.settings = settings
        self.card = card
        #: Control entries of agents starting together leave in one pipeline (the host's), or
        #: each at once on the host's control connection (``writer``).
        self.batcher = batcher
        self.writer = writer
        self.instance_id = instance_id
        self.router = router
        #: The instance's lease (read by its consumer before it handles anything).
        self.fence = fence if fence is not None else Fence(settings.ttl)
        self._on_lost = on_lost
        self.status = AgentStatus.READY
        self.load = 0
        #: The host lease this instance announces under (its renewals keep it alive).
        self.lease = lease
        #: (status, load) as the registry last heard them: a lease renews a member whose values
        #: are unchanged, and carries a full beat only for a changed one.
        self.reported: tuple[str, int] | None = None
        self.record: AgentRecord | None = None
        #: An announcement went unanswered before any was accepted: the registry may still
        #: apply it (answered just after we gave up), so ``leave`` takes it back.
        self._unanswered = False
        self.reannounces = 0
        #: Heartbeats the coordinator answered with an error (``heartbeat_result``).
        self.refused_heartbeats = 0
        #: Set when the registry must hear an announcement again (the heartbeat loop sends it).
        self.needs_announce = False
        #: When the last heartbeat (or accepted announce) that reached Redis was sent.
        self.last_ok = time.monotonic()
        self._keys = settings.keys
        self._beats: Heartbeats | None = None
        self._announced_at = time.monotonic()
        self._card_json: tuple[AgentCard | None, dict[str, Any]] = (None, {})

    @property
    def registered(self) -> bool:
        return self.record is not None

    # -- control envelopes -------------------------------------------------------------------
    def _control(
        self, ctype: ControlType, payload: Any, *, reply: bool, timeout: float
    ) -> Outgoing:
        """A control envelope from this instance (built by the send path's encoder: its
        values are ours, validated already)."""
        return Outgoing(
            ctype.value,
            self.card.name,
            orjson.dumps(payload),
            kind=Kind.CONTROL,
            reply_to=self.router.key if reply else None,
            timeout=timeout if reply else None,
        )

    async def _xadd(self, env: Outgoing, doing: str) -> None:
        await xadd_control(
            self.client, self.settings, env, doing, batcher=self.batcher, writer=self.writer
        )

    # -- announce ----------------------------------------------------------------------------
    def announce_payload(self) -> dict[str, Any]:
        """``Announce(...).model_dump(mode="json", exclude_none=True)``, from values already
        validated (the card, the settings): built, not validated again (a start's hot path)."""
        card = self.card
        if self._card_json[0] is not card:  # the card is immutable; a new one replaces it
            self._card_json = (card, card.model_dump(mode="json", exclude_none=True))
        s = self.settings
        payload = {
            "card": self._card_json[1],
            "instance_id": self.instance_id,
            "status": self.status.value,
            "load": self.load,
            "heartbeat_ms": s.heartbeat_ms,
            "ttl_ms": s.ttl_ms,
        }
        if self.lease is not None:
            payload["lease"] = self.lease
        return payload

    async def announce(self, *, wait: bool = True) -> AgentRecord:
        """Join the registry (retrying ``name_taken`` for up to ``name_wait``, or raising it at
        once if not ``wait``); the record."""
        give_up = time.monotonic() + self.settings.name_wait
        while True:
            try:
                record = await self._announce_once()
            except NameTaken as e:
                if not wait:
                    raise
                remaining = give_up - time.monotonic()
                if remaining <= 0:
                    waited = self.settings.name_wait
                    raise NameTaken(
                        f"{e.description}; waited {waited:g}s for it (name_wait): if that "
                        "instance is dead, set AGENTBUS_NAME_WAIT to a few seconds (its TTL) "
                        "to wait until it expires",
                        details=e.details,
                    ) from e
                log.info("name %r is taken (%s); retrying for %.1fs", self.card.name, e, remaining)
                await asyncio.sleep(min(remaining, self.settings.heartbeat_interval))
                continue
            self.record = record
            return record

    async def _announce_once(self) -> AgentRecord:
        """One announcement; one refused as ``stale`` (written before the registry expired
        this instance, applied after) is sent again at once."""
        for _ in range(_STALE_RETRIES):
            try:
                return await self._announce_attempt()
            except Refused as e:
                if e.code != ErrorCode.STALE:
                    raise
                log.info("%s: announcement applied too late (%s); again", self.card.name, e)
        return await self._announce_attempt()

    async def _announce_attempt(self) -> AgentRecord:
        timeout = self.settings.announce_timeout
        env = self._control(
            ControlType.ANNOUNCE, self.announce_payload(), reply=True, timeout=timeout
        )
        answer = self.router.expect(env.id)
        sent = time.monotonic()
        doing = f"announcing {self.card.name!r}"
        try:
            if self.writer is not None and not self.settings.secure:
                # written at once, not awaited: a failure to write fails ``answer`` (one wakeup
                # of this task per announcement, not two: a host starting 100 agents at once)
                written = self.writer.submit(control_xadd(self.settings, env))
                written.add_done_callback(
                    functools.partial(_fail_with, answer, self.settings, doing)
                )
            else:
                await self._xadd(env, doing)
            # the answer fails with TimeoutError when it is late (cheaper than a Timeout scope)
            timer = asyncio.get_running_loop().call_later(timeout, _time_out, answer)
            try:
                reply = await answer
            except TimeoutError:
                if self.record is None:
                    self._unanswered = True
                raise self._no_coordinator(timeout) from None
            finally:
                timer.cancel()
        finally:
            self.router.discard(env.id)
        if reply.error is not None:
            raise error_from_info(reply.error, registration=True)
        try:
            record = AgentRecord.model_validate(reply.payload)
        except ValueError as e:
            raise ProtocolError(f"the coordinator answered with an invalid record: {e}") from e
        self._announced_at = sent
        self.reported = (record.status.value, record.load)
        self.fence.renew(sent, record.epoch)
        return record

    def _no_coordinator(self, timeout: float) -> NoCoordinator:
        s = self.settings
        return NoCoordinator(
            f"no coordinator answered the announcement of {self.card.name!r} within {timeout:g}s "
            f"on {s.display_url} (namespace {s.namespace!r}). Is a coordinator running? Start "
            f"one with: agentbus --redis-url {s.display_url} --namespace {s.namespace} "
            "coordinator",
            details={"url": s.display_url, "namespace": s.namespace, "timeout": timeout},
        )

    # -- heartbeats (sent by the host's loop: agent_sdk.heartbeats) -------------------------
    @property
    def beating(self) -> bool:
        """Whether the host's heartbeat loop carries this instance (``start`` .. ``stop``)."""
        return self._beats is not None

    def wake(self) -> None:
        """Send a heartbeat now (e.g. the status changed)."""
        if self._beats is not None:
            self._beats.wake(self)

    def request_reannounce(self) -> None:
        self.needs_announce = True
        self.wake()

    async def on_control(self, env: Envelope) -> None:
        """Handler for control envelopes nobody waited for (routed by the host's reply list)."""
        if env.type == ControlType.HEARTBEAT_RESULT:
            self.refused_heartbeats += 1
            error = env.error
            log.warning(
                "%s: the coordinator refused a heartbeat: [%s] %s",
                self.card.name,
                error.code if error is not None else "?",
                error.description if error is not None else "no reason given",
            )
            return
        if env.type != ControlType.REANNOUNCE:
            log.debug("%s: ignoring control envelope %s", self.card.name, env.type)
            return
        payload = env.payload if isinstance(env.payload, dict) else {}
        if payload.get("instance_id", self.instance_id) != self.instance_id:
            return  # meant for another run
        if payload.get("reason") == ErrorCode.NAME_LOST:
            holder = str(payload.get("holder") or "?")
            self.lose(
                NameLost(
                    f"{self.card.name!r}: instance {self.instance_id} lost its name to instance "
                    f"{holder} while it was not heartbeating (stalled, frozen or cut off)",
                    details={"name": self.card.name, "instance_id": holder},
                )
            )
            return
        log.info("%s: the coordinator asks for a re-announce", self.card.name)
        self.fence.lapse()  # the registry does not hold us: handle nothing until it does again
        self.request_reannounce()

    def lose(self, error: NameLost) -> None:
        """The name is lost for good: close the fence, stop heartbeating, tell the owner."""
        if self.fence.lost is not None:
            return
        log.error("%s: %s; stopping to serve it", self.card.name, error)
        self.fence.lose(error)
        self.record = None  # nothing to leave
        if self._beats is not None:
            self._beats.remove(self)
            self._beats = None
        if self._on_lost is not None:
            self._on_lost(error)

    def beat(self) -> tuple[str, str, int, str, int | None]:
        """This instance's line of a heartbeat: name, instance id, load, status, epoch."""
        return (self.card.name, self.instance_id, self.load, self.status.value, self.fence.epoch)

    def heartbeat_envelope(self) -> Outgoing:
        """A ``heartbeat`` of this instance alone (what a host of one sends):
        ``schemas.agent.Heartbeat``, built from our own values."""
        payload: dict[str, Any] = {
            "instance_id": self.instance_id, "load": self.load, "status": self.status.value,
        }  # fmt: skip
        if self.fence.epoch is not None:
            payload["epoch"] = self.fence.epoch
        return self._control(ControlType.HEARTBEAT, payload, reply=False, timeout=0)

    def beat_sent(self, sent_at: float) -> None:
        """A heartbeat carrying this instance, sent at ``sent_at``, reached Redis."""
        self.last_ok = sent_at
        self.fence.renew(sent_at)

    async def reannounce(self) -> None:
        """Announce again (same instance id): asked by the coordinator, or after a stall. A
        ``name_taken`` answer means another instance registered the name meanwhile: lost."""
        self.needs_announce = False
        try:
            self.record = await self._announce_once()
        except NameTaken as e:
            self.lose(
                NameLost(
                    f"{self.card.name!r}: this instance ({self.instance_id}) was expired "
                    f"while it was not heartbeating, and another took the name: {e}",
                    details=dict(e.details),
                )
            )
            return
        except BaseException:
            self.needs_announce = True  # the loop tries again
            raise
        self.last_ok = time.monotonic()  # answered: no stall (its fence runs from the send)
        self.reannounces += 1
        if self._beats is not None:
            self._beats.wake(self)  # a heartbeat at once renews the fence

    async def start(self, beats: Heartbeats) -> None:
        """Be carried by the host's heartbeat loop (after ``announce`` succeeded). Its fence
        runs from when the announce was sent; the stall check from now: behind a backlog (a
        fleet starting at once) the answer may come more than a TTL after the announce left,
        which is no stall. A heartbeat goes out at once only if the answer took longer than an
        interval (the fence would lapse before the loop's next round) or the status or load
        changed meanwhile; else the loop's next round carries it (the registry's deadline runs
        a TTL from when it applied the announce)."""
        if self._beats is None and self.fence.lost is None:
            now = time.monotonic()
            self.last_ok = now
            self._beats = beats
            late = now - self._announced_at > self.settings.heartbeat_interval
            beats.add(self, urgent=late or self.reported != (self.status.value, self.load))

    async def stop(self) -> None:
        """Stop heartbeating (before ``leave``)."""
        beats, self._beats = self._beats, None
        if beats is not None:
            await beats.discard(self)

    # -- leave -------------------------------------------------------------------------------
    async def leave(self, reason: str = "shutdown") -> None:
        """Deregister, then wait (bounded) until the record is gone or no longer ours. Never
        registered: nothing, unless an announcement went unanswered (then a leave follows it on
        the control stream, unanswered: if the registry applied it after all, the leave, applied
        after it, removes it; a name under a host's lease would otherwise live as long as the
        host)."""
        if self.record is None:
            if self._unanswered:
                self._unanswered = False
                payload = Leave(instance_id=self.instance_id, reason=reason).model_dump(mode="json")
                env = self._control(ControlType.LEAVE, payload, reply=False, timeout=0)
                await self._xadd(env, f"taking back the announcement of {self.card.name!r}")
            return
        self.record = None
        payload = Leave(instance_id=self.instance_id, reason=reason).model_dump(mode="json")
        wait = min(self.settings.announce_timeout, _LEAVE_WAIT_MAX)
        env = self._control(ControlType.LEAVE, payload, reply=True, timeout=wait)
        ack = self.router.expect(env.id) if self.router.running else None
        try:
            await self._xadd(env, f"leaving as {self.card.name!r}")
            await self._wait_gone(ack, wait)
        finally:
            self.router.discard(env.id)

    async def _wait_gone(self, ack: asyncio.Future[Envelope] | None, wait: float) -> None:
        """Until the leave's answer comes (``ack``) or the record is gone. With an answer on
        its way the record is not polled for the first ``_ACK_FIRST`` seconds: a host of 10,000
        stopping would otherwise poll 10,000 records every few ms while its leaves queue."""
        key = self._keys.record(self.card.name)
        give_up = time.monotonic() + wait
        if ack is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(ack), min(_ACK_FIRST, wait))
            if ack.done():
                return
        pause = 0.002
        while time.monotonic() < give_up:
            with redis_errors(self.settings, "checking the leave"):
                holder = await self.client.hget(key, "instance_id")
            if holder is None or _text(holder) != self.instance_id:
                return
            if ack is not None:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(ack), pause)
                if ack.done():
                    return
            else:
                await asyncio.sleep(pause)
            pause = min(pause * 2, 0.05)
        log.warning(
            "%s: the registry still holds the record %.1fs after leave", self.card.name, wait
        )


async def xadd_control(
    client: aioredis.Redis,
    settings: Settings,
    env: Outgoing,
    doing: str,
    *,
    batcher: Batcher | None = None,
    writer: WriteThrough | None = None,
) -> None:
    """Append a control envelope to the control stream (capped like the coordinators cap it):
    written at once on ``writer`` when given (a host's control connection), else through
    ``batcher`` when given (concurrent entries share a round trip); in acl mode through
    ``xadd_proved.lua``, proved under the envelope's sender (a host has no ``writer`` then)."""
    if settings.secure:
        flat = env.stream_args()
        keys = settings.keys
        script = registered(client, script_text("xadd_proved"))
        script_keys = [keys.control(), keys.proofs(env.sender)]
        args = [CONTROL_MAXLEN, settings.proof_keep * 1000, "", *flat]
        with redis_errors(settings, doing):
            if batcher is not None:
                await batcher.run(Op(args, script, script_keys))
                return
            try:  # EVALSHA itself: redis-py's Script call adds tens of µs of Python per call
                await client.evalsha(script.sha, 2, *script_keys, *args)
            except NoScriptError:  # Redis restarted, or SCRIPT FLUSH
                await script(keys=script_keys, args=args)
        return
    command = control_xadd(settings, env)
    with redis_errors(settings, doing):
        if writer is not None:
            await writer.run(command)
            return
        if batcher is None:
            await client.xadd(
                settings.keys.control(),
                env.stream_fields(),
                maxlen=CONTROL_MAXLEN,
                approximate=True,
            )
            return
        await batcher.run(Op(command))


def control_xadd(settings: Settings, env: Outgoing) -> tuple[Any, ...]:
    """The ``XADD`` of ``env`` to the control stream, capped like the coordinators cap it."""
    return ("XADD", settings.keys.control(), "MAXLEN", "~", CONTROL_MAXLEN, "*", *env.stream_args())


def _time_out(answer: asyncio.Future[Any]) -> None:
    """The announcement's deadline passed: its answer fails with ``TimeoutError``."""
    if not answer.done():
        answer.set_exception(TimeoutError())


def _fail_with(
    answer: asyncio.Future[Any], settings: Settings, doing: str, written: asyncio.Future[Any]
) -> None:
    """A done callback of a control write nobody awaits: its failure (as ``redis_errors`` says
    it) fails ``answer``, the future the announcing task waits on."""
    if written.cancelled():
        return
    error = written.exception()
    if error is None or answer.done():
        return
    try:
        with redis_errors(settings, doing):
            raise error
    except Exception as mapped:
        answer.set_exception(mapped)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value

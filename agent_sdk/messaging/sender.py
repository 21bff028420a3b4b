"""Sending: to an agent's inbox, to a role queue, broadcast, and topics.

* ``send(to, type, payload)``: one ``EVALSHA`` checks the agent's registry record exists and
  ``XADD``s to its inbox (``AgentNotFound`` at once when it does not; ``queue_if_absent=True``
  skips the check and leaves the message in the bounded inbox).
* ``send(role=..., type=..., payload=...)``: the same script checks ``SCARD`` of the role index
  and appends to the role queue (``NoResponders`` when the role is empty).
* ``broadcast``: ``PUBLISH`` (at-most-once, live subscribers only) or, with ``durable=True``, one
  ``XADD`` per live member's inbox in one pipeline.
* ``publish``: ``PUBLISH`` on the topic's channel.

The ``EVALSHA`` of a send and the ``PUBLISH`` of a broadcast or publish go through one
``Batcher``: a call made while nothing is in flight goes out at once; calls made while a round
trip is in flight leave together in the next pipeline, in call order, each with its own result.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Iterable
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import NoPermissionError, RedisError, ResponseError

from agent_sdk import telemetry
from agent_sdk.connection import CONNECTION_ERRORS, publish_command, queue_ring, redis_errors
from agent_sdk.discovery import Discovery
from agent_sdk.messaging.batcher import Batcher, Op
from agent_sdk.messaging.codec import Outgoing, encode_payload
from agent_sdk.messaging.scripts import Scripts
from agent_sdk.messaging.versions import ATTEMPTS, VersionRouter, check_range
from agent_sdk.security import refusal_of, secure_id
from agent_sdk.settings import Settings
from agent_sdk.writethrough import WriteThrough, direct_writer
from schemas.envelope import Kind
from schemas.errors import AgentNotFound, InvalidInput, NoResponders
from schemas.keys import AGENT_GROUP
from schemas.names import check_identifier, check_topic
from schemas.priority import Priority, check_priority

__all__ = ["Sender", "Target"]

_REDIS_ERRORS: tuple[type[BaseException], ...] = (*CONNECTION_ERRORS, RedisError)
_BROADCAST = Kind.BROADCAST.value  # an enum member's .value is a descriptor call each time


def _text(v: bytes | str) -> str:
    return v.decode() if isinstance(v, bytes) else v


class Target:
    """Where a message goes: one agent (``to``), or one member of a role (``role``), optionally
    one whose version is in the SemVer range ``version`` (``agent_sdk.messaging.versions``)."""

    __slots__ = ("name", "role", "version")

    def __init__(self, to: str | None, role: str | None, version: str | None = None) -> None:
        if (to is None) == (role is None):
            raise InvalidInput("give exactly one of an agent name (to=...) or role=...")
        try:
            if to is not None:
                check_identifier(to, "agent name")
            if role is not None:
                check_identifier(role, "role")
        except ValueError as e:
            raise InvalidInput(str(e)) from e
        if version is not None:
            if role is None:
                raise InvalidInput("version=... selects among the members of a role: give role=")
            check_range(version)
        self.name = to
        self.role = role
        self.version = version

    @property
    def label(self) -> str:
        """The envelope's ``target`` field: the agent name, ``role:<role>``, or
        ``role:<role>@<range>``."""
        if self.name is not None:
            return self.name
        return f"role:{self.role}" if self.version is None else f"role:{self.role}@{self.version}"


class Sender:
    """Everything that puts a message on the bus for one sender identity."""

    def __init__(
        self,
        client: aioredis.Redis,
        settings: Settings,
        scripts: Scripts,
        sender: str,
        *,
        batcher: Batcher | None = None,
        direct: WriteThrough | None = None,
    ) -> None:
        self.client = client
        self.settings = settings
        self.scripts = scripts
        self.sender = sender
        self.keys = settings.keys
        #: ``durable=False`` requests (``direct``): the host's writer, or one of its own; None
        #: on a cluster (``direct_writer``).
        self.direct_writer = direct or direct_writer(client)
        #: Sends of every agent of a host share one batcher (one connection).
        self.batcher = batcher or Batcher(
            client,
            replica_acks=settings.replica_acks,
            replica_timeout=settings.replica_ack_timeout,
        )
        self._router: VersionRouter | None = None

    @property
    def router(self) -> VersionRouter:
        """Routing by version (made on first use: most senders never need it)."""
        if self._router is None:
            self._router = VersionRouter(Discovery(self.client, self.settings))
        return self._router

    def payload(self, payload: Any) -> bytes:
        return encode_payload(payload, self.settings.max_payload_bytes)

    async def _run(self, op: Op | list[Op], doing: str, *what: str) -> Any:
        """``op`` (or a list of ops, together: their replies) through the batcher; redis-py
        errors become ``ConnectionFailed`` as with ``redis_errors`` (applied only on failure: it
        costs ≈ 3 µs a call as a context manager)."""
        try:
            if isinstance(op, Op):
                return await self.batcher.run(op)
            return await self.batcher.run_many(op)
        except ResponseError as e:
            refused = None if isinstance(e, NoPermissionError) else refusal_of(e)
            if refused is not None:
                raise refused from None
            with redis_errors(self.settings, doing % what):
                raise
        except _REDIS_ERRORS:
            with redis_errors(self.settings, doing % what):
                raise

    def new_id(self) -> str:
        """An id for a message that will be answered: unguessable in acl mode."""
        return secure_id() if self.settings.secure else ""

    def proved_op(self, stream: str, family: str, check_key: str, mode: str, ring: str,
                  out: Outgoing) -> Op:  # fmt: skip
        """acl mode: the ``send_secure.lua`` call (receiver's limits, proof of the sender)."""
        keys = self.keys
        args = [mode, AGENT_GROUP, keys.bell(family), ring, self.settings.proof_keep * 1000,
                *out.stream_args()]  # fmt: skip
        script_keys = (check_key, stream, keys.proofs(self.sender), keys.limits(family))
        return Op(args, self.scripts.send_secure, script_keys)

    async def deliver(
        self, target: Target, out: Outgoing, *, queue_if_absent: bool, priority: str = "normal"
    ) -> Target:
        """Append ``out`` to the target's stream of ``priority`` after the liveness check, and
        ring the family's doorbell. Returns where it went: ``target``, or the member of its role
        it was routed to by version (a ``version`` range, or the role's default version)."""
        try:
            check_priority(priority)
        except ValueError as e:
            raise InvalidInput(str(e)) from None
        out.headers = dict(out.headers or {})
        with telemetry.producer_span(
            target.label, out.type, message_id=out.id, headers=out.headers,
            conversation_id=out.correlation_id,
        ) as span:  # fmt: skip
            try:
                if target.version is not None:
                    where = await self._to_version(target, target.version, out, priority)
                else:
                    where = await self._deliver(target, out, queue_if_absent, priority)
            except (AgentNotFound, NoResponders) as e:
                telemetry.mark_error(span, e.code)
                raise
            telemetry.record_sent(out.type, out.kind.value)
        return where

    async def _deliver(
        self, target: Target, out: Outgoing, queue_if_absent: bool, priority: str,
        *, use_default: bool = True,
    ) -> Target:  # fmt: skip
        """One ``send.lua`` to an agent's inbox or a role queue (a role's default version, when
        set, is answered by the script instead: then routed to a member of it)."""
        keys = self.keys
        if target.name is not None:
            check_key, family, mode = keys.record(target.name), keys.inbox(target.name), "record"
            maxlen = self.settings.inbox_maxlen
        else:
            assert target.role is not None
            check_key, family, mode = (
                keys.role_index(target.role),
                keys.role_queue(target.role),
                "role",
            )
            maxlen = self.settings.queue_maxlen
        if queue_if_absent:
            mode = "none"
        stream = keys.prioritized(family, priority)
        # the stream, then the role's default version key (same slot) when it is to be looked at
        tail: tuple[str, ...] = (stream,)
        if target.role is not None and use_default:
            tail += (keys.role_default(target.role),)
        ring = "" if priority == "normal" else priority
        if self.settings.secure:  # one server; the role's default version is not looked at
            op = self.proved_op(stream, family, check_key, mode, ring, out)
            entry_id = await self._run(op, "sending %r to %s", out.type, target.label)
        elif self.scripts.cluster:  # the registry is in another slot: checked first
            entry_id = await self._deliver_on_cluster(
                mode, check_key, tail, out, [maxlen, keys.bell(family), ring]
            )
        else:
            script_keys = tail if mode == "none" else (check_key, *tail)
            args = [mode, maxlen, keys.bell(family), ring, *out.stream_args()]
            op = Op(args, self.scripts.send, script_keys)
            entry_id = await self._run(op, "sending %r to %s", out.type, target.label)
        if isinstance(entry_id, list):  # the role's default version: to one of its members
            assert target.role is not None
            default = _text(entry_id[0])
            try:
                return await self._to_version(target, f"=={default}", out, priority)
            except NoResponders:  # no live member of the default version: any member
                return await self._deliver(
                    target, out, queue_if_absent, priority, use_default=False
                )
        if entry_id is None:
            if target.name is not None:
                ns = self.settings.namespace
                raise AgentNotFound(
                    f"agent {target.name!r} is not registered (not alive) in namespace {ns!r}",
                    details={"agent": target.name},
                )
            raise NoResponders(
                f"no live member of role {target.role!r} in namespace {self.settings.namespace!r}",
                details={"role": target.role},
            )
        return target

    async def _to_version(
        self, target: Target, version: str, out: Outgoing, priority: str
    ) -> Target:
        """To the inbox of the member of ``target.role`` that ``version`` routes to; picked
        again (at most ``ATTEMPTS`` times) if that member left before the send landed."""
        assert target.role is not None
        gone: frozenset[str] = frozenset()
        for attempt in range(ATTEMPTS):
            member = Target(await self.router.pick(target.role, version, exclude=gone), None)
            try:
                return await self._deliver(member, out, False, priority)
            except AgentNotFound:
                if attempt == ATTEMPTS - 1:
                    raise await self.router.no_member(target.role, version) from None
                gone |= {member.name or ""}
        raise AssertionError("unreachable")

    async def _deliver_on_cluster(
        self, mode: str, check_key: str, tail: tuple[str, ...], out: Outgoing, args: list[Any]
    ) -> Any:
        """The send script split in two calls of one slot each: the registry check (``EXISTS``
        of the record, ``SCARD`` of the role), then the append and ring. An agent that expires
        between the two gets the message in its inbox, as one that expires just after a send."""
        what = (out.type, out.target or "")
        if mode != "none":
            check = Op(("EXISTS" if mode == "record" else "SCARD", check_key))
            if not int(await self._run(check, "sending %r to %s", *what)):
                return None
        op = Op(["none", *args, *out.stream_args()], self.scripts.send, tail)
        return await self._run(op, "sending %r to %s", *what)

    async def send(
        self,
        to: str | None,
        type: str,
        payload: Any = None,
        *,
        role: str | None = None,
        version: str | None = None,
        headers: dict[str, str] | None = None,
        queue_if_absent: bool = False,
        ttl: float | None = None,
        priority: Priority = "normal",
    ) -> str:
        """Fire-and-forget to an agent or a role member (of a version in the range
        ``version``); returns the message id."""
        target = Target(to, role, version)
        body = self.payload(payload)
        out = Outgoing(
            type=type,
            sender=self.sender,
            payload=body,
            target=target.label,
            headers=headers,
            timeout=ttl,
        )
        try:
            await self.deliver(target, out, queue_if_absent=queue_if_absent, priority=priority)
        except AgentNotFound as e:  # only a send can queue for an absent agent: say how
            raise AgentNotFound(
                f"{e.description}; pass queue_if_absent=True to queue anyway", details=e.details
            ) from None
        return out.id

    async def direct(self, name: str, out: Outgoing) -> asyncio.Future[Any]:
        """``PUBLISH`` ``out`` on agent ``name``'s direct channel (a ``durable=False``
        request), written at once; a future of how many hosts received it (0: nobody listens).
        On one server through the direct writer, whose own task reads that count: the caller
        waits for the answer only. On a cluster ``SPUBLISH`` (the channel has the agent's hash
        tag, a sharded channel like a doorbell) through the batcher."""
        channel, data = self.keys.direct_channel(name), out.json()
        if self.direct_writer is not None:
            await self.direct_writer.start()
            return self.direct_writer.submit(("PUBLISH", channel, data))
        op = Op((publish_command(self.client), channel, data))
        return asyncio.ensure_future(self._run(op, "sending %r to %s", out.type, name))

    async def members(self, role: str | None) -> list[str]:
        """Live agents of a role (every live agent when ``role`` is None), from the registry."""
        key = self.keys.agents() if role is None else self.keys.role_index(role)
        with redis_errors(self.settings, "reading the registry"):
            names = await self.client.smembers(key)
        return sorted(_text(n) for n in names)

    def _broadcast_op(self, type: str, body: bytes, role: str | None, headers: dict[str, str],
                      label: str) -> Op:  # fmt: skip
        """The ``PUBLISH`` of one live broadcast envelope."""
        out = Outgoing(type=type, sender=self.sender, payload=body, kind=Kind.BROADCAST,
                       target=label, headers=headers)  # fmt: skip
        return self.publish_op(self.keys.broadcast_channel(role), out.json())

    def publish_op(self, channel: str, data: bytes) -> Op:
        """A ``PUBLISH`` (acl mode: ``publish_proved.lua``, proved under the sender's name)."""
        if self.settings.secure:
            args = (channel, data, self.settings.proof_keep * 1000)
            return Op(args, self.scripts.publish_proved, (self.keys.proofs(self.sender),))
        return Op(("PUBLISH", channel, data))

    def _broadcast_label(self, role: str | None) -> str:
        """The envelope's ``target`` of a broadcast (``*`` or ``role:<role>``); checks ``role``."""
        if role is None:
            return "*"
        try:
            check_identifier(role, "role")
        except ValueError as e:
            raise InvalidInput(str(e)) from e
        return f"role:{role}"

    async def broadcast(
        self,
        type: str,
        payload: Any = None,
        *,
        role: str | None = None,
        durable: bool = False,
        headers: dict[str, str] | None = None,
    ) -> int:
        """Send to every live agent (or every member of ``role``).

        Without ``durable``: one ``PUBLISH``, at-most-once, to whoever is subscribed right now;
        returns how many received it. With ``durable=True``: one copy in each live member's inbox
        (at-least-once, handled like ``send``); returns how many copies were queued.
        """
        label = self._broadcast_label(role)
        body = self.payload(payload)
        headers = dict(headers or {})
        with telemetry.producer_span(label, type, headers=headers, operation="broadcast"):
            telemetry.record_sent(type, _BROADCAST)
            if durable:
                (count,) = await self._broadcast_durably(type, [body], role, headers)
                return count
            op = self._broadcast_op(type, body, role, headers, label)
            return int(await self._run(op, "broadcasting %r", type))

    async def broadcast_many(
        self,
        type: str,
        payloads: Iterable[Any],
        *,
        role: str | None = None,
        durable: bool = False,
        headers: dict[str, str] | None = None,
    ) -> list[int]:
        """One broadcast per payload, in order, in one round trip (one pipeline); returns each
        one's count as ``broadcast`` does. Every payload is checked before anything is sent."""
        label = self._broadcast_label(role)
        bodies = [self.payload(p) for p in payloads]
        if not bodies:
            return []
        headers = dict(headers or {})
        with telemetry.producer_span(label, type, headers=headers, operation="broadcast") as span:
            telemetry.set_batch_size(span, len(bodies))
            telemetry.record_sent(type, _BROADCAST, len(bodies))
            if durable:
                return await self._broadcast_durably(type, bodies, role, headers)
            ops = [self._broadcast_op(type, body, role, headers, label) for body in bodies]
            return [int(n) for n in await self._run(ops, "broadcasting %r", type)]

    async def _broadcast_durably(
        self, type: str, bodies: list[bytes], role: str | None, headers: dict[str, str]
    ) -> list[int]:
        names = await self.members(role)
        if not names:
            return [0] * len(bodies)
        if self.settings.secure:  # each copy proved, within each receiver's limits
            ops = []
            for body, name in itertools.product(bodies, names):
                out = Outgoing(type=type, sender=self.sender, payload=body, kind=Kind.BROADCAST,
                               target=name, headers=headers)  # fmt: skip
                inbox = self.keys.inbox(name)
                ops.append(self.proved_op(inbox, inbox, self.keys.record(name), "none", "", out))
            await self._run(ops, "broadcasting %r durably", type)
            return [len(names)] * len(bodies)
        maxlen = self.settings.inbox_maxlen
        with redis_errors(self.settings, f"broadcasting {type!r} durably"):
            async with self.client.pipeline(transaction=False) as pipe:
                for body, name in itertools.product(bodies, names):
                    out = Outgoing(type=type, sender=self.sender, payload=body,
                                   kind=Kind.BROADCAST, target=name, headers=headers)  # fmt: skip
                    inbox = self.keys.inbox(name)
                    pipe.xadd(inbox, out.stream_fields(), maxlen=maxlen, approximate=True)
                    queue_ring(pipe, self.keys.bell(inbox))
                await pipe.execute()
        return [len(names)] * len(bodies)

    async def publish(
        self, topic: str, payload: Any = None, *, headers: dict[str, str] | None = None,
        type: str | None = None,
    ) -> int:  # fmt: skip
        """``PUBLISH`` on a topic (at-most-once); returns how many subscribers received it."""
        try:
            check_topic(topic)
        except ValueError as e:
            raise InvalidInput(str(e)) from e
        headers = dict(headers or {})
        with telemetry.producer_span(topic, type or topic, headers=headers, operation="publish"):
            out = Outgoing(type=type or topic, sender=self.sender, payload=self.payload(payload),
                           kind=Kind.PUBLISH, target=topic, headers=headers)  # fmt: skip
            telemetry.record_sent(out.type, Kind.PUBLISH.value)
            op = self.publish_op(self.keys.topic_channel(topic), out.json())
            return int(await self._run(op, "publishing on %r", topic))

"""Request-reply and scatter-gather, on top of the ``Sender`` and the ``ReplyRouter``.

``request``: a fresh correlation id (the request's message id), the reply future registered with
the router *before* the request leaves, a deadline in the envelope (default
``settings.request_timeout``), ``AgentNotFound``/``NoResponders`` at once when nobody alive can
answer, ``RemoteError`` when the handler failed, ``RequestTimeout`` otherwise; the future is
discarded in ``finally``. While waiting, the target's liveness is re-checked every heartbeat
interval, so a request to an agent that dies fails as soon as the registry drops it rather than
at the timeout.

``request_many``: one request per live member of a role, straight into each member's inbox (one
pipeline); replies are collected until all answered, ``max_replies`` arrived, or the timeout.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from agent_sdk import telemetry
from agent_sdk.connection import queue_ring, redis_errors
from agent_sdk.messaging.codec import Outgoing
from agent_sdk.messaging.sender import Sender, Target
from agent_sdk.messaging.topics import PubSubHub
from agent_sdk.tasks import cancel_and_wait
from schemas.envelope import Envelope, Kind
from schemas.errors import (
    AgentbusError,
    AgentNotFound,
    InvalidInput,
    NoResponders,
    RemoteError,
    RequestTimeout,
    error_from_info,
)
from schemas.priority import Priority

__all__ = ["GatherResult", "ReplyPort", "Requester"]


class ReplyPort(Protocol):
    """What requests need of a reply router (``agent_sdk.replies.ReplyRouter``)."""

    key: str

    def expect(
        self, correlation_id: str, *, sender: str | None = None
    ) -> asyncio.Future[Envelope]: ...

    def discard(self, correlation_id: str) -> None: ...

    async def listen_pushed(self, hub: PubSubHub) -> None: ...


@dataclass(slots=True)
class GatherResult:
    """What ``request_many`` collected.

    ``replies``: member name → reply payload (successful answers); ``errors``: member name →
    ``RemoteError`` (the member's handler failed); ``missing``: members that did not answer in
    time. Iterating yields ``(name, payload)`` pairs of the successful replies.
    """

    replies: dict[str, Any] = field(default_factory=dict)
    errors: dict[str, RemoteError] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)

    def __iter__(self) -> Iterator[tuple[str, Any]]:
        return iter(self.replies.items())

    def __len__(self) -> int:
        return len(self.replies)

    @property
    def complete(self) -> bool:
        return not self.missing


def _raise_if_error(env: Envelope) -> Any:
    if env.error is not None:
        raise error_from_info(env.error)
    return env.payload


class _Watch:
    """Fails a request's reply future at the deadline (``RequestTimeout``), or as soon as the
    target is found gone (checked every heartbeat interval while no reply came).

    The requester awaits the reply future itself: a reply wakes it directly, with no
    ``asyncio.wait`` (its waiter future, callbacks and timer) per request.
    """

    __slots__ = ("check", "fut", "give_up", "handle", "loop", "out", "requester", "target",
                 "timeout")  # fmt: skip

    def __init__(
        self,
        requester: Requester,
        fut: asyncio.Future[Envelope],
        target: Target,
        timeout: float,
        out: Outgoing,
    ) -> None:
        self.requester, self.fut, self.target, self.timeout, self.out = (
            requester, fut, target, timeout, out,
        )  # fmt: skip
        self.loop = asyncio.get_running_loop()
        self.give_up = self.loop.time() + timeout
        self.check: asyncio.Task[None] | None = None
        self.handle = self.loop.call_later(self._next_wait(timeout), self._tick)

    def _next_wait(self, left: float) -> float:
        return min(left, self.requester.settings.heartbeat_interval)

    def _tick(self) -> None:
        if self.fut.done():
            return
        left = self.give_up - self.loop.time()
        if left <= 0:
            out, label = self.out, self.target.label
            details = {"target": label, "type": out.type, "timeout": self.timeout, "id": out.id}
            message = f"no reply to {out.type!r} from {label} within {self.timeout}s"
            self.fut.set_exception(RequestTimeout(message, details=details))
            return
        self.check = self.loop.create_task(self._check(left))

    async def _check(self, left: float) -> None:
        try:
            await self.requester._check_alive(self.target, self.out)
        except Exception as e:  # gone, Redis unreachable (or a bug): the request fails with it
            if not self.fut.done():
                self.fut.set_exception(e)
            return
        if not self.fut.done():
            self.handle = self.loop.call_later(self._next_wait(left), self._tick)

    def close(self) -> None:
        """No more ticks (a liveness check in flight is the caller's to end)."""
        self.handle.cancel()


class Requester:
    def __init__(self, sender: Sender, replies: ReplyPort, hub: PubSubHub) -> None:
        self.sender = sender
        self.replies = replies
        self.hub = hub
        self.settings = sender.settings

    async def request(
        self,
        to: str | None,
        type: str,
        payload: Any = None,
        *,
        role: str | None = None,
        version: str | None = None,
        timeout: float | None = None,
        headers: dict[str, str] | None = None,
        priority: Priority = "normal",
        durable: bool = True,
    ) -> Any:
        """Send a request and return the reply's payload (``durable=False``: ``_direct``)."""
        target = Target(to, role, version)
        timeout = self.settings.request_timeout if timeout is None else timeout
        out = Outgoing(
            type=type, sender=self.sender.sender, kind=Kind.REQUEST,
            payload=self.sender.payload(payload), target=target.label,
            reply_to=self.replies.key, headers=headers, id=self.sender.new_id(), timeout=timeout,
        )  # fmt: skip
        fut = self.replies.expect(out.id, sender=target.name if self.settings.secure else None)
        started, outcome = time.perf_counter(), "ok"
        try:
            with telemetry.producer_span(target.label, type, message_id=out.id, request=True):
                if durable:  # routed by version: the member it went to is the one to watch
                    where = await self.sender.deliver(
                        target, out, queue_if_absent=False, priority=priority
                    )
                else:
                    where = await self._direct(target, out, fut)
                watch = _Watch(self, fut, where, timeout, out)
                try:
                    env = await fut
                finally:
                    watch.close()
                    if watch.check is not None:  # a liveness check ran: let it end first
                        await cancel_and_wait(watch.check)
                return _raise_if_error(env)
        except AgentbusError as e:
            outcome = e.code
            raise
        finally:
            self.replies.discard(out.id)
            telemetry.record_request_duration(type, time.perf_counter() - started, outcome)

    async def _direct(
        self, target: Target, out: Outgoing, answer: asyncio.Future[Envelope]
    ) -> Target:
        """A request that skips the streams: ``PUBLISH`` on the agent's direct channel (for a
        role, on that of one live member picked at random), answered by ``PUBLISH`` on the
        channel named like our reply list. At-most-once: nothing is stored,
        so a request that reaches nobody fails at once (``AgentNotFound``, ``NoResponders``:
        ``answer`` fails when the ``PUBLISH`` count says so) and one its agent could not take
        is answered with an error or lost to the timeout."""
        if self.settings.secure:
            raise InvalidInput(
                "request(..., durable=False) is not available with AGENTBUS_SECURITY=acl: a "
                "direct request carries no proof of its sender (docs/SECURITY.md)"
            )
        await self.replies.listen_pushed(self.hub)  # answered by PUBLISH on our reply key
        name = target.name
        if name is None and target.version is not None:
            assert target.role is not None
            name = await self.sender.router.pick(target.role, target.version)
        elif name is None:
            assert target.role is not None
            with redis_errors(self.settings, f"picking a member of role {target.role!r}"):
                picked: Any = await self.sender.client.srandmember(
                    self.sender.keys.role_index(target.role)
                )
            if picked is None:
                raise NoResponders(
                    f"no live member of role {target.role!r} in namespace "
                    f"{self.settings.namespace!r}",
                    details={"role": target.role},
                )
            name = picked.decode() if isinstance(picked, bytes) else str(picked)
        count = await self.sender.direct(name, out)
        count.add_done_callback(functools.partial(self._delivered, answer, target, name, out))
        return Target(name, None)

    def _delivered(self, answer: asyncio.Future[Envelope], target: Target, name: str,
                   out: Outgoing, count: asyncio.Future[Any]) -> None:  # fmt: skip
        """The count of a direct request's ``PUBLISH``: ``answer`` fails at once when nobody
        received it, or when it could not be written."""
        if answer.done() or count.cancelled():
            return
        error = count.exception()
        if error is None:
            if int(count.result()) > 0:
                return
            if target.name is not None:
                error = AgentNotFound(
                    f"agent {name!r} does not listen for direct requests (not alive, or its SDK "
                    "predates protocol 2); send it durably instead",
                    details={"agent": name},
                )
            else:
                error = NoResponders(
                    f"member {name!r} of role {target.role!r} does not listen for direct requests",
                    details={"role": target.role, "agent": name},
                )
        elif not isinstance(error, AgentbusError):
            try:  # a Redis error: as every verb reports it
                with redis_errors(self.settings, f"sending {out.type!r} to {name}"):
                    raise error
            except Exception as e:
                error = e
        answer.set_exception(error)

    async def _check_alive(self, target: Target, out: Outgoing) -> None:
        client, keys = self.sender.client, self.sender.keys
        with redis_errors(self.settings, "checking the target of a request"):
            if target.name is not None:
                alive = bool(await client.exists(keys.record(target.name)))
            else:
                assert target.role is not None
                alive = bool(await client.scard(keys.role_index(target.role)))
        if alive:
            return
        if target.name is not None:
            raise AgentNotFound(
                f"agent {target.name!r} left or expired before answering {out.type!r}",
                details={"agent": target.name, "id": out.id},
            )
        raise NoResponders(
            f"every member of role {target.role!r} left before answering {out.type!r}",
            details={"role": target.role, "id": out.id},
        )

    async def _ask_all(
        self, role: str, members: list[str], type: str, body: bytes, timeout: float,
        headers: dict[str, str], pending: dict[asyncio.Future[Envelope], str], ids: list[str],
    ) -> None:  # fmt: skip
        """One request per member, registered in ``pending`` before it leaves: one pipeline
        of ``XADD``s, or in acl mode one proved send each (within each receiver's limits)."""
        keys, maxlen = self.sender.keys, self.settings.inbox_maxlen
        outs = []
        for name in members:
            out = Outgoing(
                type=type, sender=self.sender.sender, kind=Kind.REQUEST,
                payload=body, target=name, reply_to=self.replies.key, headers=headers,
                id=self.sender.new_id(), timeout=timeout,
            )  # fmt: skip
            ids.append(out.id)
            secure_from = name if self.settings.secure else None
            pending[self.replies.expect(out.id, sender=secure_from)] = name
            outs.append((name, out))
        if self.settings.secure:
            await asyncio.gather(*(
                self.sender.deliver(Target(name, None), out, queue_if_absent=True)
                for name, out in outs
            ))  # fmt: skip
            return
        async with self.sender.client.pipeline(transaction=False) as pipe:
            for name, out in outs:
                inbox = keys.inbox(name)
                pipe.xadd(inbox, out.stream_fields(), maxlen=maxlen, approximate=True)
                queue_ring(pipe, keys.bell(inbox))
            with redis_errors(self.settings, f"sending {type!r} to role {role!r}"):
                await pipe.execute()

    async def request_many(
        self,
        role: str,
        type: str,
        payload: Any = None,
        *,
        version: str | None = None,
        timeout: float | None = None,
        max_replies: int | None = None,
        headers: dict[str, str] | None = None,
    ) -> GatherResult:
        """Ask every live member of ``role`` (whose version is in the range ``version``, when
        given); collect until all, ``max_replies`` or timeout."""
        Target(None, role, version)  # validates the role name and the range
        timeout = self.settings.request_timeout if timeout is None else timeout
        if version is None:
            members = await self.sender.members(role)
        else:
            members = [r.name for r in await self.sender.router.members(role, version)]
            if not members:
                raise await self.sender.router.no_member(role, version)
        if not members:
            raise NoResponders(
                f"no live member of role {role!r} in namespace {self.settings.namespace!r}",
                details={"role": role},
            )
        body = self.sender.payload(payload)
        headers = dict(headers or {})
        label = Target(None, role, version).label
        with telemetry.producer_span(label, type, headers=headers, request=True):
            telemetry.record_sent(type, Kind.REQUEST.value)
            pending: dict[asyncio.Future[Envelope], str] = {}
            ids: list[str] = []
            result = GatherResult()
            try:
                await self._ask_all(role, members, type, body, timeout, headers, pending, ids)
                give_up = time.monotonic() + timeout
                wanted = len(members) if max_replies is None else min(max_replies, len(members))
                while pending and len(result.replies) + len(result.errors) < wanted:
                    left = give_up - time.monotonic()
                    if left <= 0:
                        break
                    done, _ = await asyncio.wait(
                        set(pending), timeout=left, return_when=asyncio.FIRST_COMPLETED
                    )
                    for fut in done:  # several may settle at once (replies come in batches)
                        if len(result.replies) + len(result.errors) >= wanted:
                            break  # max_replies reached: the rest count as missing
                        name = pending.pop(fut)
                        env = fut.result()
                        if env.error is not None:
                            result.errors[name] = RemoteError(
                                env.error.description, code=env.error.code,
                                details=dict(env.error.details),
                            )  # fmt: skip
                        else:
                            result.replies[name] = env.payload
                result.missing = sorted(pending.values())
                return result
            finally:
                for cid in ids:
                    self.replies.discard(cid)

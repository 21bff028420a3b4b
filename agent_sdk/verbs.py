"""The messaging verbs, defined once with typed parameters: ``Messaging``, ``Agent`` and ``Bus``
expose them.

Each owner says which ``Messaging`` carries its verbs (``_data_plane``: an agent's own, a bus's
client one) and which answers its requests (``_request_plane``: the same, or one whose reply
list is being read). A typo such as ``timeuot=5`` is a type error, and an IDE shows every
parameter.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from agent_sdk.discovery import StatusFilter
from agent_sdk.selection import STRATEGIES, Strategy, no_responders
from schemas.agent import AgentRecord, AgentStatus
from schemas.errors import InvalidInput
from schemas.priority import Priority

if TYPE_CHECKING:
    from agent_sdk.bus import Bus
    from agent_sdk.messaging import GatherResult, Messaging, Subscription

__all__ = ["SELECTABLE", "Lookups", "Verbs"]

#: Statuses ``select`` considers when not told otherwise.
SELECTABLE = (AgentStatus.READY, AgentStatus.BUSY)


def _need_type(type: str | None) -> str:
    if not type:
        raise InvalidInput("a message type is required (type=...)")
    return type


class Verbs:
    """``send``, ``request``, ``request_many``, ``broadcast``, ``broadcast_many``, ``publish``
    and ``subscribe`` (docs/PROTOCOL.md, "Data plane")."""

    def _data_plane(self) -> Messaging:
        raise NotImplementedError

    async def _request_plane(self) -> Messaging:
        return self._data_plane()

    async def send(
        self,
        to: str | None = None,
        type: str | None = None,
        payload: Any = None,
        *,
        role: str | None = None,
        version: str | None = None,
        headers: dict[str, str] | None = None,
        queue_if_absent: bool = False,
        ttl: float | None = None,
        priority: Priority = "normal",
    ) -> str:
        """Fire-and-forget to agent ``to`` or one member of ``role``; returns the message id.
        ``version``: a SemVer range (``^2``): to a member whose version is in it, the newest
        such version first (without it, to the role's default version when one is set).
        ``AgentNotFound`` / ``NoResponders`` at once when nobody can receive it (unless
        ``queue_if_absent``); ``ttl`` seconds bound how long it may wait unhandled; ``priority``
        (``critical``, ``important``, ``normal``, ``low``): readers take higher ones first."""
        return await self._data_plane().sender.send(
            to, _need_type(type), payload, role=role, version=version, headers=headers,
            queue_if_absent=queue_if_absent, ttl=ttl, priority=priority,
        )  # fmt: skip

    async def request(
        self,
        to: str | None = None,
        type: str | None = None,
        payload: Any = None,
        *,
        role: str | None = None,
        version: str | None = None,
        timeout: float | None = None,
        headers: dict[str, str] | None = None,
        priority: Priority = "normal",
        durable: bool = True,
    ) -> Any:
        """Send a request to ``to`` or one member of ``role``; return the reply payload
        (``RemoteError`` for an error reply, ``RequestTimeout`` after ``timeout`` seconds, by
        default ``request_timeout``). ``version`` and ``priority`` as for ``send``.
        ``durable=False`` skips the streams: straight to the agent over pub/sub, faster,
        at-most-once (nothing is kept if the agent cannot take it; ``priority`` does not
        apply)."""
        requester = (await self._request_plane())._requester()
        return await requester.request(
            to, _need_type(type), payload, role=role, version=version, timeout=timeout,
            headers=headers, priority=priority, durable=durable,
        )  # fmt: skip

    async def request_many(
        self,
        role: str | None = None,
        type: str | None = None,
        payload: Any = None,
        *,
        version: str | None = None,
        timeout: float | None = None,
        max_replies: int | None = None,
        headers: dict[str, str] | None = None,
    ) -> GatherResult:
        """Ask every live member of ``role`` (scatter-gather), or those whose version is in the
        SemVer range ``version``; see ``GatherResult``."""
        if role is None:
            raise InvalidInput("request_many needs role=...")
        requester = (await self._request_plane())._requester()
        return await requester.request_many(
            role, _need_type(type), payload, version=version, timeout=timeout,
            max_replies=max_replies,
            headers=headers,
        )  # fmt: skip

    async def broadcast(
        self,
        type: str,
        payload: Any = None,
        *,
        role: str | None = None,
        durable: bool = False,
        headers: dict[str, str] | None = None,
    ) -> int:
        """To every live agent, or every member of ``role``: pub/sub (at-most-once; returns
        the receivers), or ``durable`` (one inbox copy per member; returns the copies)."""
        return await self._data_plane().sender.broadcast(
            type, payload, role=role, durable=durable, headers=headers
        )

    async def broadcast_many(
        self,
        type: str,
        payloads: Iterable[Any],
        *,
        role: str | None = None,
        durable: bool = False,
        headers: dict[str, str] | None = None,
    ) -> list[int]:
        """One broadcast per payload in one round trip; each one's receiver (or copy) count."""
        return await self._data_plane().sender.broadcast_many(
            type, payloads, role=role, durable=durable, headers=headers
        )

    async def publish(
        self, topic: str, payload: Any = None, *, headers: dict[str, str] | None = None
    ) -> int:
        """Publish to ``topic`` (pub/sub, at-most-once); returns the receivers."""
        return await self._data_plane().sender.publish(topic, payload, headers=headers)

    def subscribe(self, pattern: str) -> Subscription:
        """``async with x.subscribe("news.*") as sub: async for msg in sub: ...``"""
        return self._data_plane().hub.subscribe(pattern)


class Lookups:
    """``discover``, ``select`` and ``get`` (registry reads, one round trip): ``Bus``, ``Agent``
    and ``Host`` expose them, each over its ``Bus`` (``_bus``)."""

    def _bus(self) -> Bus:
        raise NotImplementedError

    async def discover(
        self,
        role: str | None = None,
        capabilities: str | Iterable[str] | None = (),
        tags: str | Iterable[str] | None = (),
        status: StatusFilter = None,
        max_load: int | None = None,
        version: str | None = None,
        limit: int | None = None,
    ) -> list[AgentRecord]:
        """Live agents matching every filter (see ``Discovery.discover``), sorted by name."""
        return await self._bus().discovery.discover(
            role=role,
            capabilities=capabilities,
            tags=tags,
            status=status,
            max_load=max_load,
            version=version,
            limit=limit,
        )

    async def select(
        self,
        role: str | None = None,
        capabilities: str | Iterable[str] | None = (),
        tags: str | Iterable[str] | None = (),
        status: StatusFilter = None,
        max_load: int | None = None,
        version: str | None = None,
        *,
        strategy: Strategy = "least_loaded",
    ) -> AgentRecord:
        """One live agent matching the filters, chosen by ``strategy``; ``NoResponders`` if none.

        Without ``status``, only agents that take work are considered (``ready`` or ``busy``:
        not ``starting`` nor ``draining``).
        """
        if strategy not in STRATEGIES:
            raise InvalidInput(
                f"unknown selection strategy {strategy!r}: use one of {', '.join(STRATEGIES)}"
            )
        query: dict[str, object] = {
            "role": role,
            "capabilities": _key_part(capabilities),
            "tags": _key_part(tags),
            "status": _key_part(status),
            "max_load": max_load,
            "version": version,
        }
        if status is None:
            status = SELECTABLE
        records = await self.discover(role, capabilities, tags, status, max_load, version)
        if not records:
            raise no_responders(self._bus().settings, query)
        return self._bus().selector.pick(records, strategy, key=tuple(query.values()))

    async def get(self, name: str) -> AgentRecord | None:
        """The live agent called ``name``, or ``None``."""
        return await self._bus().discovery.get(name)


def _key_part(value: object) -> object:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, Iterable):
        return tuple(str(v) for v in value)
    return value

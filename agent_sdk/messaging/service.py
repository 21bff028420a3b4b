"""``Messaging``: the data plane of one agent (or client), as one component.

It bundles the handler registry, the sender, requests, the stream consumer and the pub/sub hub
behind the verbs users call (``on``, ``send``, ``request``, ``request_many``, ``broadcast``,
``publish``, ``subscribe``). ``Agent`` and ``Bus`` delegate to it. It is a component: ``start``
(after the agent's announce is accepted) and ``stop(grace)`` (before it leaves) are idempotent.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from types import TracebackType
from typing import Any

import redis.asyncio as aioredis

from agent_sdk.fence import Fence
from agent_sdk.messaging.consumer import Consumer
from agent_sdk.messaging.handlers import Handler, HandlerRegistry
from agent_sdk.messaging.requests import GatherResult, ReplyPort, Requester
from agent_sdk.messaging.scripts import Scripts
from agent_sdk.messaging.sender import Sender
from agent_sdk.messaging.topics import PubSubHub, Subscription
from agent_sdk.settings import Settings
from schemas.errors import InvalidInput

__all__ = ["Messaging"]


def _need_type(type: str | None) -> str:
    if not type:
        raise InvalidInput("a message type is required (type=...)")
    return type


class Messaging:
    """The data plane for one identity.

    ``consume=False`` (a client that is not a registered agent): no inbox or role queue is read
    and no broadcast is received; sending, requests (with ``replies``), publishing and topic
    subscriptions work.
    """

    def __init__(
        self,
        client: aioredis.Redis,
        settings: Settings,
        *,
        name: str,
        instance_id: str,
        role: str | None = None,
        replies: ReplyPort | None = None,
        max_concurrency: int = 1,
        on_load: Callable[[int], None] | None = None,
        consume: bool = True,
        handlers: HandlerRegistry | None = None,
        fence: Fence | None = None,
    ) -> None:
        self.client = client
        self.settings = settings
        self.name = name
        self.instance_id = instance_id
        self.scripts = Scripts.register(client)
        self.handlers = handlers if handlers is not None else HandlerRegistry()
        self.sender = Sender(client, settings, self.scripts, name)
        self._replies = replies
        self.consumer: Consumer | None = None
        channels: tuple[str, ...] = ()
        if consume:
            self.consumer = Consumer(
                client, settings, self.scripts, name=name, instance_id=instance_id, role=role,
                handlers=self.handlers, max_concurrency=max_concurrency, on_load=on_load,
                fence=fence,
            )  # fmt: skip
            channels = (settings.keys.broadcast_channel(),)
            if role is not None:
                channels += (settings.keys.broadcast_channel(role),)
        self.hub = PubSubHub(
            client, settings, channels=channels,
            on_broadcast=self.consumer.handle_live if self.consumer else None,
        )  # fmt: skip
        self._started = False

    # -- lifecycle (a component of Agent) ---------------------------------------------------
    async def start(self) -> None:
        if self._started:
            return
        self._started = True
        if self.consumer is not None:
            await self.hub.start()
            await self.consumer.start()

    async def stop(self, grace: float | None = None) -> None:
        """Idempotent. Also stops the pub/sub hub a ``subscribe`` started without ``start``."""
        if self._started:
            self._started = False
            if self.consumer is not None:
                await self.consumer.stop(grace)
        await self.hub.stop()
        await self.sender.batcher.aclose()

    async def __aenter__(self) -> Messaging:
        await self.start()
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    # -- handlers ---------------------------------------------------------------------------
    @property
    def replies(self) -> ReplyPort | None:
        return self._replies

    @replies.setter
    def replies(self, port: ReplyPort | None) -> None:
        self._replies = port

    def on(self, type: str) -> Callable[[Handler], Handler]:
        """Decorator: ``@messaging.on("summarize")`` registers an async handler."""
        return self.handlers.on(type)

    # -- verbs ------------------------------------------------------------------------------
    async def send(
        self,
        to: str | None = None,
        type: str | None = None,
        payload: Any = None,
        *,
        role: str | None = None,
        headers: dict[str, str] | None = None,
        queue_if_absent: bool = False,
        ttl: float | None = None,
    ) -> str:
        """Fire-and-forget to agent ``to`` or one member of ``role``; returns the message id."""
        return await self.sender.send(
            to, _need_type(type), payload, role=role, headers=headers,
            queue_if_absent=queue_if_absent, ttl=ttl,
        )  # fmt: skip

    def _requester(self) -> Requester:
        if self._replies is None:
            raise InvalidInput("requests need a reply list: use an Agent or a started Bus")
        return Requester(self.sender, self._replies)

    async def request(
        self,
        to: str | None = None,
        type: str | None = None,
        payload: Any = None,
        *,
        role: str | None = None,
        timeout: float | None = None,
        headers: dict[str, str] | None = None,
    ) -> Any:
        """Send a request to ``to`` or one member of ``role``; return the reply payload."""
        return await self._requester().request(
            to, _need_type(type), payload, role=role, timeout=timeout, headers=headers
        )

    async def request_many(
        self,
        role: str | None = None,
        type: str | None = None,
        payload: Any = None,
        *,
        timeout: float | None = None,
        max_replies: int | None = None,
        headers: dict[str, str] | None = None,
    ) -> GatherResult:
        """Ask every live member of ``role``; see ``GatherResult``."""
        if role is None:
            raise InvalidInput("request_many needs role=...")
        return await self._requester().request_many(
            role, _need_type(type), payload, timeout=timeout, max_replies=max_replies,
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
        return await self.sender.broadcast(
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
        return await self.sender.broadcast_many(
            type, payloads, role=role, durable=durable, headers=headers
        )

    async def publish(
        self, topic: str, payload: Any = None, *, headers: dict[str, str] | None = None
    ) -> int:
        return await self.sender.publish(topic, payload, headers=headers)

    def subscribe(self, pattern: str) -> Subscription:
        """``async with messaging.subscribe("news.*") as sub: async for msg in sub: ...``"""
        return self.hub.subscribe(pattern)

"""``Messaging``: the data plane of one agent (or client), as one component.

It bundles the handler registry, the sender, requests, the agent's consumer and the pub/sub hub
(shared through its host's ``Plane``) behind the verbs users call (``on``, ``send``,
``request``, ``request_many``, ``broadcast``, ``publish``, ``subscribe``). ``Agent`` and
``Bus`` delegate to it. It is a component: ``start`` (after the agent's announce is accepted)
and ``stop(grace)`` (before it leaves) are idempotent.
"""

from __future__ import annotations

from collections.abc import Callable
from types import TracebackType

import redis.asyncio as aioredis

from agent_sdk.fence import Fence
from agent_sdk.messaging.consumer import Consumer
from agent_sdk.messaging.handlers import Handler, HandlerRegistry
from agent_sdk.messaging.plane import Plane
from agent_sdk.messaging.requests import ReplyPort, Requester
from agent_sdk.messaging.scripts import Scripts
from agent_sdk.messaging.sender import Sender
from agent_sdk.messaging.topics import PubSubHub
from agent_sdk.settings import Settings
from agent_sdk.verbs import Verbs
from schemas.errors import InvalidInput

__all__ = ["Messaging"]


class Messaging(Verbs):
    """The data plane for one identity.

    An agent's reads, replies, sends and pub/sub go through its host's shared ``Plane``
    (``plane=``; without one it makes its own, a host of one). ``consume=False`` (a client that
    is not a registered agent): no inbox or role queue is read and no broadcast is received;
    sending, requests (with ``replies``), publishing and topic subscriptions work.
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
        plane: Plane | None = None,
    ) -> None:
        self.client = client
        self.settings = settings
        self.name = name
        self.instance_id = instance_id
        self._owns_plane = plane is None and consume
        if plane is None and consume:
            plane = Plane(client, settings)
        self.plane = plane
        self.scripts = plane.scripts if plane is not None else Scripts.register(client)
        self.handlers = handlers if handlers is not None else HandlerRegistry()
        self.sender = Sender(
            client, settings, self.scripts, name,
            batcher=plane.send_batcher if plane is not None else None,
            direct=plane.direct if plane is not None else None,
        )  # fmt: skip
        self._replies = replies
        self.consumer: Consumer | None = None
        if consume:
            assert plane is not None
            self.consumer = Consumer(
                client, settings, self.scripts, plane.reader, name=name,
                instance_id=instance_id, role=role, handlers=self.handlers,
                max_concurrency=max_concurrency, on_load=on_load, fence=fence,
                reply_batcher=plane.reply_batcher, direct=plane.direct,
            )  # fmt: skip
        self.hub = plane.hub if plane is not None else PubSubHub(client, settings)
        self._started = False

    # -- lifecycle (a component of Agent) ---------------------------------------------------
    def prepare(self) -> None:
        """Begin the consumer's join without waiting (``Plane.prepare``): called while the
        agent's announcement travels, so ``start`` has no round trip left to make."""
        if not self._started and self.consumer is not None and self.plane is not None:
            self.plane.prepare(self.consumer)

    async def abandon(self) -> None:
        """Undo a ``prepare`` not followed by ``start`` (the announcement was refused)."""
        if not self._started and self.consumer is not None and self.plane is not None:
            await self.plane.leave(self.consumer, 0)

    async def start(self) -> None:
        if self._started:
            return
        self._started = True
        if self.consumer is not None:
            assert self.plane is not None
            await self.plane.join(self.consumer)

    async def stop(self, grace: float | None = None) -> None:
        """Idempotent. Also stops the pub/sub hub a ``subscribe`` started without ``start``
        (unless it is the host's)."""
        if self._started:
            self._started = False
            if self.consumer is not None:
                assert self.plane is not None
                await self.plane.leave(self.consumer, grace)
        if self.plane is None:
            await self.hub.stop()
            await self.sender.batcher.aclose()
            if self.sender.direct_writer is not None:
                await self.sender.direct_writer.aclose()
        elif self._owns_plane:
            await self.plane.stop()

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

    # -- the verbs are agent_sdk.verbs.Verbs's ---------------------------------------------
    def _data_plane(self) -> Messaging:
        return self

    def _requester(self) -> Requester:
        if self._replies is None:
            raise InvalidInput("requests need a reply list: use an Agent or a started Bus")
        return Requester(self.sender, self._replies, self.hub)

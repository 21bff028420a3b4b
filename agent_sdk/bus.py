"""``Bus``: a connection to one agentbus (Redis URL + namespace) for clients and agents.

A ``Bus`` holds the Redis client and the key space, and answers registry questions
(``discover``, ``select``, ``get``). It is what a program that is *not* an agent uses (the CLI, a
script that sends requests); every ``Agent`` owns one too (or shares one passed in)::

    async with Bus(redis_url="redis://127.0.0.1:6379/0") as bus:
        workers = await bus.discover(role="summarizer", capabilities=["pdf"], version="^1.2")
        one = await bus.select(role="summarizer", strategy="least_loaded")

``client_id`` identifies this bus as a sender (``sender`` = ``client-<client_id>``) and names its
reply list ``reply_key`` for request replies.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Collection
from types import TracebackType
from typing import Any

import redis.asyncio as aioredis

from agent_sdk.activity import ActivityLog
from agent_sdk.connection import make_client, redis_errors
from agent_sdk.discovery import Discovery
from agent_sdk.messaging import Messaging
from agent_sdk.replies import ReplyRouter
from agent_sdk.selection import Selector
from agent_sdk.settings import Settings
from agent_sdk.verbs import SELECTABLE, Lookups, Verbs
from agent_sdk.watch import watch_registry
from schemas.envelope import new_id
from schemas.errors import InvalidInput
from schemas.events import ActivityEvent, RegistryEvent, RegistryEventType
from schemas.keys import KeySpace

__all__ = ["SELECTABLE", "Bus", "resolve_settings"]

_NOT_STARTED = "the Bus is not started: use `async with Bus(...)` or `await bus.start()`"


def resolve_settings(settings: Settings | None, overrides: dict[str, Any]) -> Settings:
    """``settings`` (or the environment and defaults) with keyword ``overrides`` applied."""
    if settings is None:
        return Settings.load(**overrides)
    if not isinstance(settings, Settings):
        hint = " (a function or method: call it, as in `env.settings()`)"
        hint = hint if callable(settings) else ""
        raise InvalidInput(
            f"settings must be an agent_sdk.Settings, got {type(settings).__name__}{hint}"
        )
    if not overrides:
        return settings
    return type(settings).load(**{**settings.model_dump(), **overrides})


class Bus(Lookups, Verbs):
    """Redis client + key space + registry reads. An async context manager.

    ``start``/``stop`` are idempotent; ``stopped`` is set once stopped. Nothing connects before
    ``start``. ``Bus(settings)`` or ``Bus(**overrides)`` (``Settings.load`` keyword names).
    """

    def __init__(self, settings: Settings | None = None, **overrides: Any) -> None:
        settings = resolve_settings(settings, overrides)
        self.settings = settings
        self.keys: KeySpace = settings.keys
        self.client_id = new_id()
        self.stopped = asyncio.Event()
        self._client: aioredis.Redis | None = None
        self._discovery: Discovery | None = None
        #: How ``select`` picks (round-robin state lives here).
        self.selector = Selector()
        self._activity: ActivityLog | None = None
        self._messaging: Messaging | None = None
        self._router: ReplyRouter | None = None

    # -- identity ----------------------------------------------------------------------------
    @property
    def sender(self) -> str:
        """The name this bus uses as ``sender`` when it is not an agent."""
        return f"client-{self.client_id}"

    @property
    def reply_key(self) -> str:
        """The reply list of this client (for request replies)."""
        return self.keys.replies(self.sender, self.client_id)

    @property
    def started(self) -> bool:
        return self._client is not None

    @property
    def client(self) -> aioredis.Redis:
        """The Redis client (raises if the bus is not started)."""
        if self._client is None:
            raise RuntimeError(
                "the Bus is not started: use `async with Bus(...)` or `await start()`"
            )
        return self._client

    # -- lifecycle ---------------------------------------------------------------------------
    async def start(self) -> Bus:
        if self._client is not None:
            return self
        client = make_client(self.settings)
        try:
            with redis_errors(self.settings, "connecting"):
                await client.ping()
        except BaseException:
            await client.aclose()
            raise
        self._client = client
        self._discovery = Discovery(client, self.settings)
        self.stopped.clear()
        return self

    async def stop(self) -> None:
        messaging, self._messaging = self._messaging, None
        if messaging is not None:
            await messaging.stop()
        router, self._router = self._router, None
        if router is not None:
            await router.stop()
        client, self._client = self._client, None
        self._discovery = None
        if client is not None:
            await client.aclose()
        self.stopped.set()

    async def wait_stopped(self) -> None:
        """Return once stopped (``stopped`` is the underlying event)."""
        await self.stopped.wait()

    async def __aenter__(self) -> Bus:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    # -- registry reads ----------------------------------------------------------------------
    @property
    def discovery(self) -> Discovery:
        if self._discovery is None:
            raise RuntimeError(
                "the Bus is not started: use `async with Bus(...)` or `await start()`"
            )
        return self._discovery

    def _bus(self) -> Bus:
        return self

    # -- messaging as a client (agent_sdk.messaging; an Agent has its own) -------------------
    @property
    def messaging(self) -> Messaging:
        """Send, request, publish and subscribe as ``sender`` (no inbox is read)."""
        client = self.client
        if self._messaging is None or self._messaging.client is not client:
            self._messaging = Messaging(
                client, self.settings, name=self.sender, instance_id=self.client_id,
                consume=False,
            )  # fmt: skip
        return self._messaging

    async def _requests(self) -> Messaging:
        messaging = self.messaging
        if self._router is None:
            self._router = ReplyRouter(self.settings, self.reply_key, owner=self.sender)
            await self._router.start()
        messaging.replies = self._router
        return messaging

    def _data_plane(self) -> Messaging:
        return self.messaging

    async def _request_plane(self) -> Messaging:
        return await self._requests()

    def watch(
        self,
        since: str | None = None,
        *,
        roles: Collection[str] | None = None,
        types: Collection[RegistryEventType | str] | None = None,
        names: Collection[str] | None = None,
    ) -> AsyncIterator[RegistryEvent]:
        """Registry changes after ``since`` (``None``: all held, ``"now"``, or a revision):
        ``async for event in bus.watch(since=last.revision, roles=["search"])``."""
        return watch_registry(self.client, self.keys, since, roles=roles, types=types, names=names)

    @property
    def activity_log(self) -> ActivityLog:
        """Writes and reads session activity (``agent.activity(session)`` uses it)."""
        client = self.client
        if self._activity is None or self._activity.client is not client:
            self._activity = ActivityLog(client, self.settings)
        return self._activity

    def watch_session(
        self, session_id: str, since: str | None = None, *, tenant: str | None = None
    ) -> AsyncIterator[ActivityEvent]:
        """A session's activity events in order, from ``since`` (``None``: all held, ``"now"``,
        or the ``id`` of the last event handled); ``tenant``: the tenant it belongs to."""
        return self.activity_log.watch(session_id, since, tenant=tenant)

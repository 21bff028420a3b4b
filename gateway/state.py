"""``Gateway``: what one gateway process holds (a ``Bus``, a client for the streams, the
shared stream readers, the token store). Everything else comes from Redis: several gateways can
run behind one load balancer."""

from __future__ import annotations

import logging
from typing import Any

import orjson
import redis.asyncio as aioredis

from agent_sdk.bus import Bus
from agent_sdk.connection import make_client
from gateway.errors import TooManyStreams
from gateway.fanout import Frame, StreamHub
from gateway.lanes import LanePool
from gateway.settings import GatewaySettings
from gateway.tokens import TokenStore
from schemas.events import ActivityEvent, RegistryEvent

__all__ = ["Gateway", "activity_frame", "registry_frame"]

log = logging.getLogger("agentbus.gateway")

#: Reconnect attempts per Redis call on the request path: a request fails with 503 after about
#: a second when Redis is down, instead of after the SDK's eight attempts.
_REQUEST_RETRIES = 2


def registry_frame(entry_id: str, fields: dict[Any, Any]) -> Frame | None:
    try:
        event = RegistryEvent.from_fields(entry_id, fields)
    except ValueError as e:
        log.warning("skipping undecodable change-feed entry %s: %s", entry_id, e)
        return None
    attrs: dict[str, str | None] = {
        "type": event.type.value,
        "name": event.name,
        "role": event.role,
    }
    return Frame(event.type.value, orjson.dumps(event.model_dump(mode="json")), entry_id, attrs)


def activity_frame(entry_id: str, fields: dict[Any, Any]) -> Frame | None:
    try:
        event = ActivityEvent.from_fields(entry_id, fields)
    except ValueError as e:
        log.warning("skipping undecodable activity entry %s: %s", entry_id, e)
        return None
    attrs: dict[str, str | None] = {"type": event.type.value, "name": event.agent}
    return Frame(event.type.value, orjson.dumps(event.model_dump(mode="json")), entry_id, attrs)


class Gateway:
    """The gateway's resources. ``start``/``stop`` are idempotent.

    ``loopback``: whether the server listens on a loopback address only; the gateway is open
    (no token needed) only then, and only while no token was issued.
    """

    def __init__(self, settings: GatewaySettings, *, loopback: bool = True) -> None:
        self.settings = settings
        self.loopback = loopback
        request_settings = settings.model_copy(
            update={"retry_attempts": min(settings.retry_attempts, _REQUEST_RETRIES)}
        )
        self.bus = Bus(request_settings)
        self._streams_client: aioredis.Redis | None = None
        self._tokens: TokenStore | None = None
        self._registry: StreamHub | None = None
        self._lanes: LanePool | None = None
        self.sessions: dict[str, StreamHub] = {}
        self._holders: dict[str, int] = {}
        self.session_cutoffs = 0

    @property
    def started(self) -> bool:
        return self._streams_client is not None

    @property
    def streams_client(self) -> aioredis.Redis:
        if self._streams_client is None:
            raise RuntimeError("the gateway is not started")
        return self._streams_client

    @property
    def tokens(self) -> TokenStore:
        if self._tokens is None:
            raise RuntimeError("the gateway is not started")
        return self._tokens

    @property
    def lanes(self) -> LanePool:
        """Raw lanes on the bus's client, for wide reads (``gateway.lanes``)."""
        if self._lanes is None:
            raise RuntimeError("the gateway is not started")
        return self._lanes

    @property
    def registry(self) -> StreamHub:
        if self._registry is None:
            raise RuntimeError("the gateway is not started")
        return self._registry

    async def start(self) -> Gateway:
        if self.started:
            return self
        await self.bus.start()
        # blocking reads hold a connection each: one for the change feed, one per session
        self._streams_client = make_client(
            self.settings, max_connections=self.settings.gateway_max_sessions + 4
        )
        self._lanes = LanePool(self.bus.client)
        self._tokens = TokenStore(self.bus.client, self.settings, self._lanes)
        self._registry = StreamHub(
            self._streams_client, self.settings, self.settings.keys.events(), registry_frame
        )
        return self

    async def stop(self) -> None:
        for hub in list(self.sessions.values()):
            await hub.stop()
        self.sessions.clear()
        self._holders.clear()
        registry, self._registry = self._registry, None
        if registry is not None:
            await registry.stop()
        lanes, self._lanes = self._lanes, None
        if lanes is not None:
            await lanes.aclose()
        client, self._streams_client = self._streams_client, None
        if client is not None:
            await client.aclose()
        await self.bus.stop()

    def session_hub(self, session: str, tenant: str | None = None) -> StreamHub:
        """The shared reader of ``session``'s activity (of ``tenant``; created on first use);
        each call must be paired with a ``release_session`` of the same session and tenant.
        ``sessions`` is keyed by the activity stream's key."""
        key = self.settings.keys.session_activity(session, tenant)
        hub = self.sessions.get(key)
        if hub is None:
            if len(self.sessions) >= self.settings.gateway_max_sessions:
                raise TooManyStreams(
                    f"this gateway already follows {len(self.sessions)} sessions "
                    "(AGENTBUS_GATEWAY_MAX_SESSIONS); try again later or another gateway"
                )
            hub = StreamHub(self.streams_client, self.settings, key, activity_frame)
            self.sessions[key] = hub
        self._holders[key] = self._holders.get(key, 0) + 1
        return hub

    async def release_session(self, session: str, tenant: str | None = None) -> None:
        """Stop following ``session`` (of ``tenant``) once its last client has gone."""
        key = self.settings.keys.session_activity(session, tenant)
        held = self._holders.get(key, 0) - 1
        if held > 0:
            self._holders[key] = held
            return
        self._holders.pop(key, None)
        hub = self.sessions.pop(key, None)
        if hub is not None:
            self.session_cutoffs += hub.cutoffs
            await hub.stop()

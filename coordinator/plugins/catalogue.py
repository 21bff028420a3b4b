"""The plugin catalogue in Redis, and the ``plugin_*`` events on the change feed.

A plugin host writes one flat hash per plugin it loads, ``<ns>:plugin:<name>``, and adds the name
to the index set ``<ns>:plugins`` (``schemas.keys``). ``redis-cli HGETALL`` shows it::

    name          summarizer          version      1.2.0
    role          summarizer          status       running   (starting, running, failed, stopped)
    description   Summarises ...      path         /srv/plugins/summarizer
    tags          en,text             capabilities summarize
    agents        summarizer.a0       replicas     1-1
    host          build-7:4242        updated_at   2026-12-06T14:13:49.346Z
    last_error    (why the last load or reload failed; empty after a success)
    manifest      {...}               (the manifest as JSON)

The entry stays when the host stops (status ``stopped``: the catalogue lists plugins running or
not) and goes when its directory is deleted. Events: ``plugin_loaded``, ``plugin_reloaded``,
``plugin_unloaded``, ``plugin_failed`` on ``R:events`` (and its pub/sub mirror), as the
coordinator writes its own: flat string fields, ``MAXLEN ~``.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson
import redis.asyncio as aioredis

from agent_sdk.connection import is_cluster
from coordinator.settings import CoordinatorSettings
from schemas.envelope import format_time, utcnow
from schemas.events import RegistryEventType
from schemas.keys import KeySpace
from schemas.plugin import PluginManifest

__all__ = ["Catalogue", "CatalogueEntry"]

_EVENTS_MAXLEN = int(CoordinatorSettings.model_fields["events_maxlen"].default)


@dataclass(frozen=True, slots=True)
class CatalogueEntry:
    """One plugin as the catalogue holds it (every field a string, as in Redis)."""

    fields: Mapping[str, str]

    @property
    def name(self) -> str:
        return self.fields.get("name", "")

    def get(self, key: str, default: str = "") -> str:
        return self.fields.get(key, default)

    def words(self) -> str:
        """What search looks at: name, description, tags, role, capabilities."""
        keys = ("name", "description", "tags", "role", "capabilities")
        return " ".join(self.get(k) for k in keys).lower()


@dataclass
class Catalogue:
    """Reads and writes the catalogue of one namespace."""

    client: aioredis.Redis
    keys: KeySpace
    host: str = field(default_factory=lambda: f"{socket.gethostname()}:{os.getpid()}")

    @property
    def _atomic(self) -> bool:
        """MULTI over the index and an entry: one server only (two slots on a cluster, where
        the entry is written before the index, so a reader never sees a name without one)."""
        return not is_cluster(self.client)

    async def record(
        self,
        manifest: PluginManifest,
        *,
        status: str,
        path: str,
        agents: list[str],
        last_error: str = "",
    ) -> None:
        fields: dict[Any, Any] = {
            "name": manifest.name,
            "version": manifest.version,
            "role": manifest.role,
            "description": manifest.description,
            "tags": ",".join(manifest.tags),
            "capabilities": ",".join(manifest.capabilities),
            "replicas": f"{manifest.replicas.min}-{manifest.replicas.max}",
            "status": status,
            "path": path,
            "agents": ",".join(agents),
            "host": self.host,
            "updated_at": format_time(utcnow()),
            "last_error": last_error,
            "manifest": manifest.model_dump_json(),
        }
        async with self.client.pipeline(transaction=self._atomic) as pipe:
            pipe.hset(self.keys.plugin(manifest.name), mapping=fields)
            pipe.sadd(self.keys.plugins(), manifest.name)
            await pipe.execute()

    async def update(self, name: str, **fields: str) -> None:
        """Change some fields of an entry that exists (nothing if it does not)."""
        if await self.client.exists(self.keys.plugin(name)):
            values: dict[Any, Any] = {**fields, "updated_at": format_time(utcnow())}
            await self.client.hset(self.keys.plugin(name), mapping=values)

    async def remove(self, name: str) -> None:
        async with self.client.pipeline(transaction=self._atomic) as pipe:
            pipe.delete(self.keys.plugin(name))
            pipe.srem(self.keys.plugins(), name)
            await pipe.execute()

    async def entries(self) -> list[CatalogueEntry]:
        names: Any = await self.client.smembers(self.keys.plugins())
        ordered = sorted(_text(n) for n in names)
        async with self.client.pipeline(transaction=False) as pipe:
            for name in ordered:
                pipe.hgetall(self.keys.plugin(name))
            rows: list[Any] = await pipe.execute()
        return [CatalogueEntry({_text(k): _text(v) for k, v in row.items()}) for row in rows if row]

    async def event(
        self,
        type: RegistryEventType,
        name: str,
        *,
        role: str | None = None,
        version: str | None = None,
        reason: str | None = None,
    ) -> str:
        """Add a ``plugin_*`` event to the change feed (and its mirror); return its revision."""
        fields: dict[Any, Any] = {"type": type.value, "name": name, "at": format_time(utcnow())}
        for key, value in (("role", role), ("version", version), ("reason", reason)):
            if value:
                fields[key] = value
        revision = _text(
            await self.client.xadd(
                self.keys.events(), fields, maxlen=_EVENTS_MAXLEN, approximate=True
            )
        )
        mirror = orjson.dumps({"revision": revision, **fields})
        await self.client.publish(self.keys.events_channel(), mirror)
        return revision


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value

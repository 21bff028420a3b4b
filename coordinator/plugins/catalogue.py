"""The plugin catalogue in Redis, and the ``plugin_*`` events on the change feed.

A plugin host writes one flat hash per plugin version it loads,
``<ns>:plugin:<name>:version:<version>`` (several versions of a plugin may run side by side), and
a summary per plugin, ``<ns>:plugin:<name>``, listed in the index set ``<ns>:plugins``
(``schemas.keys``). ``redis-cli HGETALL agentbus:plugin:summarizer`` shows it::

    name          summarizer          version      1.2.0     (the version summarised)
    role          summarizer          status       running   (starting, running, failed, stopped)
    description   Summarises ...      path         /srv/plugins/summarizer
    tags          en,text             capabilities summarize
    agents        summarizer.a0       replicas     1-1       (agents: of every version)
    host          build-7:4242        updated_at   2026-12-06T14:13:49.346Z
    last_error    (why the last load or reload failed; empty after a success)
    manifest      {...}               (the manifest as JSON)
    versions      1.2.0,2.0.0         default      1.2.0     (the role's default version)

The summary holds the fields of the default version when it is known, else of the newest running
one, else of the newest; a version's own hash has the same fields (without ``versions`` and
``default``). An entry stays when its host stops (status ``stopped``: the catalogue lists plugins
running or not) and goes when its directory is deleted. Events: ``plugin_loaded``,
``plugin_reloaded``, ``plugin_unloaded``, ``plugin_failed`` on ``R:events`` (and its pub/sub
mirror), as the coordinator writes its own: flat string fields, ``MAXLEN ~``.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson
import redis.asyncio as aioredis
from redis.exceptions import WatchError

from agent_sdk.connection import is_cluster
from coordinator.settings import CoordinatorSettings
from schemas.envelope import format_time, utcnow
from schemas.events import RegistryEventType
from schemas.keys import KeySpace
from schemas.plugin import PluginManifest
from schemas.semver import Version

__all__ = ["Catalogue", "CatalogueEntry", "version_key"]

_EVENTS_MAXLEN = int(CoordinatorSettings.model_fields["events_maxlen"].default)
#: Compare-and-set of a role's default version.
#: KEYS[1]: the role's default key; ARGV[1]: the value expected; ARGV[2]: the new one ('' deletes).
_SWAP_DEFAULT = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
if ARGV[2] == '' then redis.call('DEL', KEYS[1]) else redis.call('SET', KEYS[1], ARGV[2]) end
return 1
"""


def version_key(text: str) -> Version:
    """Sort key of a version string (an invalid one sorts first)."""
    try:
        return Version.parse(text)
    except ValueError:
        return Version(0, 0, 0)


@dataclass(frozen=True, slots=True)
class CatalogueEntry:
    """One plugin (or one version of it) as the catalogue holds it: strings, as in Redis."""

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
        """Write one version's entry (and the plugin's summary)."""
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
        await self.client.hset(self.keys.plugin_version(manifest.name, manifest.version),
                               mapping=fields)  # fmt: skip
        await self.refresh(manifest.name, add=manifest.version)

    async def update(self, name: str, version: str, **fields: str) -> None:
        """Change some fields of a version's entry that exists (nothing if it does not)."""
        key = self.keys.plugin_version(name, version)
        if await self.client.exists(key):
            values: dict[Any, Any] = {**fields, "updated_at": format_time(utcnow())}
            await self.client.hset(key, mapping=values)
            await self.refresh(name)

    async def remove(self, name: str, version: str) -> None:
        """Forget one version (the whole plugin with its last version)."""
        await self.client.delete(self.keys.plugin_version(name, version))
        await self.refresh(name, drop=version)

    async def refresh(self, name: str, *, add: str = "", drop: str = "") -> None:
        """Recompute the summary of ``name`` from its versions' entries (optimistic: retried
        when another writer changed it meanwhile)."""
        summary = self.keys.plugin(name)
        while True:
            # on a Redis Cluster these keys live in several slots: no WATCH/MULTI there (the
            # summary is recomputed by the next writer if two race)
            async with self.client.pipeline(transaction=self._atomic) as pipe:
                try:
                    reads: Any = pipe if self._atomic else self.client  # WATCHed: immediate
                    if self._atomic:
                        await pipe.watch(summary)
                    known = _text(await reads.hget(summary, "versions") or b"")
                    versions = {v for v in known.split(",") if v} | ({add} if add else set())
                    versions.discard(drop)
                    rows = {v: await self._fields(reads, self.keys.plugin_version(name, v))
                            for v in sorted(versions)}  # fmt: skip
                    rows = {v: row for v, row in rows.items() if row}
                    role = next((row["role"] for row in rows.values() if "role" in row), "")
                    default = _text(await reads.get(self.keys.role_default(role)) or b"") \
                        if role else ""  # fmt: skip
                    if self._atomic:
                        pipe.multi()  # type: ignore[no-untyped-call]
                    if not rows:
                        pipe.delete(summary)
                        pipe.srem(self.keys.plugins(), name)
                    else:
                        chosen = rows[_summarised(rows, default)]
                        ordered = sorted(rows, key=version_key)
                        agents = [a for v in ordered for a in rows[v].get("agents", "").split(",")]
                        values: dict[Any, Any] = {
                            **chosen, "versions": ",".join(ordered),
                            "default": default if default in rows else "",
                            "agents": ",".join(a for a in agents if a),
                        }  # fmt: skip
                        pipe.delete(summary)
                        pipe.hset(summary, mapping=values)
                        pipe.sadd(self.keys.plugins(), name)
                    await pipe.execute()
                    return
                except WatchError:
                    continue

    @staticmethod
    async def _fields(pipe: Any, key: str) -> dict[str, str]:
        raw: Any = await pipe.hgetall(key)
        return {_text(k): _text(v) for k, v in raw.items()}

    async def entries(self) -> list[CatalogueEntry]:
        """Every plugin's summary, by name."""
        names: Any = await self.client.smembers(self.keys.plugins())
        ordered = sorted(_text(n) for n in names)
        async with self.client.pipeline(transaction=False) as pipe:
            for name in ordered:
                pipe.hgetall(self.keys.plugin(name))
            rows: list[Any] = await pipe.execute()
        return [CatalogueEntry({_text(k): _text(v) for k, v in row.items()}) for row in rows if row]

    async def versions(self, name: str) -> list[CatalogueEntry]:
        """Every version's entry of plugin ``name``, oldest first."""
        known = _text(await self.client.hget(self.keys.plugin(name), "versions") or b"")
        found = []
        for version in sorted((v for v in known.split(",") if v), key=version_key):
            row = await self._fields(self.client, self.keys.plugin_version(name, version))
            if row:
                found.append(CatalogueEntry(row))
        return found

    async def set_default(self, role: str, version: str) -> None:
        """Make ``version`` the default of ``role`` ('' clears it)."""
        if version:
            await self.client.set(self.keys.role_default(role), version)
        else:
            await self.client.delete(self.keys.role_default(role))

    async def swap_default(self, role: str, expected: str, new: str) -> bool:
        """Move the default of ``role`` from ``expected`` to ``new`` ('' clears it), only if it
        is ``expected``; returns whether it moved."""
        moved = await self.client.eval(
            _SWAP_DEFAULT, 1, self.keys.role_default(role), expected, new
        )
        return bool(moved)

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


def _summarised(rows: Mapping[str, Mapping[str, str]], default: str) -> str:
    """The version a summary shows: the default, else the newest running, else the newest."""
    if default in rows:
        return default
    running = [v for v, row in rows.items() if row.get("status") == "running"]
    return max(running or list(rows), key=version_key)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value

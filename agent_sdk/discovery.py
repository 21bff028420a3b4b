"""Discovery: find live agents by role, capabilities, tags, status, load and version.

``Discovery.discover`` is one ``EVALSHA`` (``agent_sdk/lua/discover.lua``): the script intersects
the index sets (role, every capability; tags are "any of"), reads each candidate's record fields
(``HMGET``), filters status and load in Redis and returns the values. The SemVer range is
applied in Python. Records are decoded on a lean path (``decode_record``): the registry is
written by the coordinator, which validated every record, so the fields are converted directly;
anything unexpected falls back to full pydantic validation.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from importlib import resources
from typing import Any

import orjson
import redis.asyncio as aioredis

from agent_sdk.connection import redis_errors
from agent_sdk.settings import Settings
from schemas.agent import AgentRecord, AgentStatus
from schemas.errors import InvalidInput, ProtocolError
from schemas.names import check_identifier
from schemas.semver import VersionRange, parse_range

__all__ = ["Discovery", "StatusFilter", "decode_record", "normalize_statuses"]

#: ``status=`` accepts one status or several (any of).
StatusFilter = AgentStatus | str | Iterable[AgentStatus | str] | None

_SCRIPT = resources.files("agent_sdk").joinpath("lua/discover.lua").read_text()
_RECORD_FIELDS = frozenset(AgentRecord.model_fields)
#: The fields discover.lua reads (HMGET), ``name``, ``status``, ``load`` first as it requires.
_FIELD_ORDER: tuple[str, ...] = (
    "name",
    "status",
    "load",
    *(f for f in AgentRecord.model_fields if f not in ("name", "status", "load")),
)


def normalize_statuses(status: StatusFilter) -> tuple[AgentStatus, ...]:
    """``None`` → ``()`` (any); one status or an iterable of them → a tuple of ``AgentStatus``."""
    if status is None:
        return ()
    items = [status] if isinstance(status, str) else list(status)
    try:
        return tuple(dict.fromkeys(AgentStatus(s) for s in items))
    except ValueError as e:
        raise InvalidInput(
            f"invalid status filter {status!r}: use {', '.join(s.value for s in AgentStatus)}"
        ) from e


def _pairs(flat: Sequence[bytes | str]) -> dict[str, str]:
    """A flat ``HGETALL`` array as a dict of strings (hot path: no per-item type checks)."""
    if flat and isinstance(flat[0], bytes):
        texts: Sequence[Any] = list(map(bytes.decode, flat))  # type: ignore[arg-type]
    else:
        texts = flat
    return dict(zip(texts[::2], texts[1::2], strict=True))


def _row(values: Sequence[bytes | str | None]) -> dict[str, str]:
    """An ``HMGET`` row of ``_FIELD_ORDER`` values as a dict of the fields present."""
    if isinstance(values[0], bytes):  # the Bus client: bytes (the hot path)
        return {
            f: v.decode()  # type: ignore[union-attr]
            for f, v in zip(_FIELD_ORDER, values, strict=True)
            if v is not None
        }
    return {f: v for f, v in zip(_FIELD_ORDER, values, strict=True) if isinstance(v, str)}


_STATUS = {s.value: s for s in AgentStatus}


def _fast(d: dict[str, str]) -> AgentRecord:
    """Build a record from a coordinator-written hash without re-validating it.

    What ``model_construct`` does, minus its per-field default handling (which costs as much as
    validation): every field is set here. ``tests/test_discovery.py`` checks the result equals
    ``AgentRecord.from_hash`` (full validation) field for field.
    """
    pid = d.get("pid")
    caps = d.get("capabilities")
    tags = d.get("tags")
    meta = d.get("metadata")
    values: dict[str, Any] = {
        "name": d["name"],
        "role": d["role"],
        "version": d.get("version", "0.0.0"),
        "description": d.get("description", ""),
        "capabilities": tuple(orjson.loads(caps)) if caps else (),
        "tags": tuple(orjson.loads(tags)) if tags else (),
        "region": d.get("region"),
        "host": d.get("host"),
        "pid": int(pid) if pid is not None else None,
        "max_concurrency": int(d.get("max_concurrency", 1)),
        "metadata": orjson.loads(meta) if meta else {},
        "instance_id": d["instance_id"],
        "status": _STATUS[d.get("status", "ready")],
        "load": int(d.get("load", 0)),
        "registered_at": datetime.fromisoformat(d["registered_at"]),
        "last_seen": datetime.fromisoformat(d["last_seen"]),
        "heartbeat_ms": int(d["heartbeat_ms"]),
        "ttl_ms": int(d["ttl_ms"]),
    }
    if not (isinstance(values["metadata"], dict) and values["max_concurrency"] >= 1):
        raise ValueError("needs validation")
    record = AgentRecord.__new__(AgentRecord)
    _set(record, "__dict__", values)
    _set(record, "__pydantic_fields_set__", set(_RECORD_FIELDS))
    _set(record, "__pydantic_extra__", None)
    _set(record, "__pydantic_private__", None)
    return record


_set = object.__setattr__


def decode_record(raw: Sequence[bytes | str] | dict[str, str]) -> AgentRecord:
    """Decode a registry hash (a flat ``HGETALL`` array or a dict) into an ``AgentRecord``."""
    d = raw if isinstance(raw, dict) else _pairs(raw)
    try:
        return _fast(d)
    except (KeyError, ValueError, TypeError):
        pass
    try:
        return AgentRecord.from_hash({k: v for k, v in d.items() if k in _RECORD_FIELDS})
    except ValueError as e:
        raise ProtocolError(f"invalid registry record {d.get('name')!r}: {e}") from e


def _identifiers(values: str | Iterable[str] | None, what: str) -> list[str]:
    if values is None:
        return []
    items = [values] if isinstance(values, str) else list(values)
    try:
        return [check_identifier(v, what) for v in dict.fromkeys(items)]
    except ValueError as e:
        raise InvalidInput(str(e)) from e


def _version_range(version: str | None) -> VersionRange | None:
    if version is None:
        return None
    try:
        return parse_range(version)
    except ValueError as e:
        raise InvalidInput(str(e)) from e


class Discovery:
    """Registry reads for one namespace over a shared client (no state beyond the script)."""

    def __init__(self, client: aioredis.Redis, settings: Settings) -> None:
        self.client = client
        self.settings = settings
        self.keys = settings.keys
        self._script = client.register_script(_SCRIPT)

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
        """Live agents matching every given filter, sorted by name.

        ``capabilities``: all of them; ``tags``: any of them; ``status``: one or several (any
        of); ``max_load``: ``load <= max_load``; ``version``: a SemVer range (``^1.2``,
        ``>=1 <2``); ``limit``: at most this many (which ones is unspecified).
        """
        caps = _identifiers(capabilities, "capability")
        tag_list = _identifiers(tags, "tag")
        roles = _identifiers(role, "role")
        statuses = normalize_statuses(status)
        rng = _version_range(version)
        if limit is not None and limit < 0:
            raise InvalidInput(f"limit must be >= 0, got {limit}")
        if limit == 0:
            return []

        k = self.keys
        all_of = [k.role_index(r) for r in roles] + [k.capability_index(c) for c in caps]
        any_of = [k.tag_index(t) for t in tag_list]
        if not all_of and not any_of:
            all_of = [k.agents()]
        args: list[str | int] = [
            k.record_prefix,
            len(all_of),
            ",".join(s.value for s in statuses),
            "" if max_load is None else int(max_load),
            0 if (limit is None or rng is not None) else limit,
            *_FIELD_ORDER,
        ]
        with redis_errors(self.settings, "discovering agents"):
            rows = await self._script(keys=all_of + any_of, args=args)
        records = [decode_record(_row(row)) for row in rows]
        if rng is not None:
            records = [r for r in records if r.version in rng]
            if limit is not None:
                records = records[:limit]
        records.sort(key=lambda r: r.name)
        return records

    async def get(self, name: str) -> AgentRecord | None:
        """The live agent called ``name``, or ``None``."""
        _identifiers(name, "name")
        with redis_errors(self.settings, f"reading agent {name!r}"):
            raw = await self.client.hgetall(self.keys.record(name))
        if not raw:
            return None
        return decode_record({_text(k): _text(v) for k, v in raw.items()})


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value

"""Discovery: find live agents by role, capabilities, tags, status, load and version.

``Discovery.discover`` is one ``EVALSHA`` (``agent_sdk/lua/discover.lua``): the script intersects
the index sets (role, every capability; tags are "any of"), reads each candidate's record fields
(``HMGET``), filters status and load in Redis and returns the rows as one JSON text (parsed with
orjson: one string on the wire instead of a value per field). The SemVer range is applied in
Python. Records are built on a lean path (``_lean``): the registry is written by the
coordinator, which validated every record, so the fields are converted directly; anything
unexpected falls back to full pydantic validation (``decode_record``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
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

__all__ = ["FIELD_ORDER", "Discovery", "StatusFilter", "decode_record", "normalize_statuses"]

#: ``status=`` accepts one status or several (any of).
StatusFilter = AgentStatus | str | Iterable[AgentStatus | str] | None

_SCRIPT = resources.files("agent_sdk").joinpath("lua/discover.lua").read_text()
_GET = resources.files("agent_sdk").joinpath("lua/get.lua").read_text()
_RECORD_FIELDS = frozenset(AgentRecord.model_fields)
#: The fields discover.lua reads (HMGET), in the order ``_from_row`` unpacks them; the script
#: requires ``name``, ``status``, ``load`` first. Checked against ``AgentRecord`` just below.
FIELD_ORDER: tuple[str, ...] = (
    "name",
    "status",
    "load",
    "role",
    "version",
    "description",
    "capabilities",
    "tags",
    "region",
    "host",
    "pid",
    "max_concurrency",
    "metadata",
    "instance_id",
    "registered_at",
    "last_seen",
    "heartbeat_ms",
    "ttl_ms",
    "epoch",
)
_N_FIELDS = len(FIELD_ORDER)
if set(FIELD_ORDER) != _RECORD_FIELDS or len(FIELD_ORDER) != len(_RECORD_FIELDS):
    raise RuntimeError("discovery.FIELD_ORDER is out of step with AgentRecord's fields")


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


_STATUS = {s.value: s for s in AgentStatus}
_READY = AgentStatus.READY
_set = object.__setattr__


def _seen(last_seen: str, deadline: Any, ttl_ms: int) -> datetime:
    """The record's ``last_seen``, or the last renewal (``deadline - ttl_ms``) if later."""
    seen = datetime.fromisoformat(last_seen)
    if deadline is False or deadline is None:
        return seen
    renewed = datetime.fromtimestamp((float(deadline) - ttl_ms) / 1000, UTC)
    return renewed if renewed > seen else seen


def _lean(row: Any) -> AgentRecord:
    """Build a record from a coordinator-written row without re-validating it.

    ``row``: the ``FIELD_ORDER`` values, ``False`` for an absent field, optionally followed by
    the name's deadline (ms; ``last_seen`` is then the later of the record's and the deadline
    minus ``ttl_ms``: a host's lease renews deadlines, not records). What
    ``model_construct`` does, minus its per-field default handling (which costs as much as
    validation). Raises ``KeyError``/``ValueError``/``TypeError`` on anything it does not
    expect; the callers then validate. ``tests/test_discovery.py`` checks the result equals
    ``AgentRecord.from_hash`` (full validation) field for field.
    """
    deadline = row[_N_FIELDS] if len(row) > _N_FIELDS else None
    (
        name,
        status,
        load,
        role,
        version,
        description,
        caps,
        tags,
        region,
        host,
        pid,
        max_conc,
        meta,
        instance_id,
        registered_at,
        last_seen,
        heartbeat_ms,
        ttl_ms,
        epoch,
    ) = row[:_N_FIELDS]
    if False in (name, role, instance_id, registered_at, last_seen, heartbeat_ms, ttl_ms):
        raise ValueError("a required field is absent")
    values: dict[str, Any] = {
        "name": name,
        "role": role,
        "version": "0.0.0" if version is False else version,
        "description": description or "",
        "capabilities": tuple(orjson.loads(caps)) if caps else (),
        "tags": tuple(orjson.loads(tags)) if tags else (),
        "region": None if region is False else region,
        "host": None if host is False else host,
        "pid": None if pid is False else int(pid),
        "max_concurrency": 1 if max_conc is False else int(max_conc),
        "metadata": orjson.loads(meta) if meta else {},
        "instance_id": instance_id,
        "status": _READY if status is False else _STATUS[status],
        "load": 0 if load is False else int(load),
        "registered_at": datetime.fromisoformat(registered_at),
        "last_seen": _seen(last_seen, deadline, int(ttl_ms)),
        "heartbeat_ms": int(heartbeat_ms),
        "ttl_ms": int(ttl_ms),
        "epoch": 0 if epoch is False else int(epoch),
    }
    if not (isinstance(values["metadata"], dict) and values["max_concurrency"] >= 1):
        raise ValueError("needs validation")
    record = AgentRecord.__new__(AgentRecord)
    _set(record, "__dict__", values)
    _set(record, "__pydantic_fields_set__", set(_RECORD_FIELDS))
    _set(record, "__pydantic_extra__", None)
    _set(record, "__pydantic_private__", None)
    return record


def _validated(d: dict[str, str], deadline: Any = None) -> AgentRecord:
    try:
        record = AgentRecord.from_hash({k: v for k, v in d.items() if k in _RECORD_FIELDS})
        seen = _seen(record.last_seen.isoformat(), deadline, record.ttl_ms)
    except (ValueError, TypeError) as e:
        raise ProtocolError(f"invalid registry record {d.get('name')!r}: {e}") from e
    return record if seen == record.last_seen else record.model_copy(update={"last_seen": seen})


def decode_record(
    raw: Sequence[bytes | str] | dict[str, str], deadline: float | None = None
) -> AgentRecord:
    """Decode a registry hash (a flat ``HGETALL`` array or a dict) into an ``AgentRecord``;
    ``deadline``: the name's deadline (ms) in ``R:deadlines``, if read (see ``_lean``)."""
    d = raw if isinstance(raw, dict) else _pairs(raw)
    try:
        return _lean([*(d.get(f, False) for f in FIELD_ORDER), deadline])
    except (KeyError, ValueError, TypeError):
        return _validated(d, deadline)


def _from_row(row: Any) -> AgentRecord:
    """A record from one discover.lua row (lean path; validated if it is unusual)."""
    try:
        return _lean(row)
    except (KeyError, ValueError, TypeError):
        pass
    if not isinstance(row, list) or len(row) not in (_N_FIELDS, _N_FIELDS + 1):
        raise ProtocolError(f"unexpected discovery row {row!r}")
    fields = zip(FIELD_ORDER, row[:_N_FIELDS], strict=True)
    deadline = row[_N_FIELDS] if len(row) > _N_FIELDS else None
    return _validated({f: v for f, v in fields if isinstance(v, str)}, deadline)


def _records(reply: bytes | str) -> list[AgentRecord]:
    """Parse discover.lua's JSON reply into records."""
    try:
        rows = orjson.loads(reply)
    except orjson.JSONDecodeError as e:
        raise ProtocolError(f"invalid discovery reply: {e}") from e
    if not isinstance(rows, list):
        raise ProtocolError(f"invalid discovery reply: {type(rows).__name__}, not a list")
    return [_from_row(row) for row in rows]


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
        self._get = client.register_script(_GET)

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
        # one role and capabilities: the role x capability sets, smaller (used once the
        # registry's layout says they are complete)
        composite: list[str] = []
        if len(roles) == 1 and caps:
            composite = [k.layout(), *(k.role_capability_index(roles[0], c) for c in caps)]
        args: list[str | int] = [
            k.record_prefix,
            len(all_of),
            ",".join(s.value for s in statuses),
            "" if max_load is None else int(max_load),
            0 if (limit is None or rng is not None) else limit,
            k.deadlines(),
            k.leases(),
            len(composite),
            *FIELD_ORDER,
        ]
        with redis_errors(self.settings, "discovering agents"):
            reply = await self._script(keys=all_of + any_of + composite, args=args)
        records = _records(reply)
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
            k = self.keys
            flat, deadline = await self._get(
                keys=[k.record(name), k.deadlines(), k.leases()], args=[name]
            )
        if not flat:
            return None
        return decode_record(flat, None if deadline is None else float(deadline))


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value

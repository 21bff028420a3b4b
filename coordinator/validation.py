"""Checking control messages before they reach Lua: pure functions, no I/O.

* ``prepare_announce`` turns an announce payload into the record to store, or an ``ErrorInfo``
  with the code the protocol names (``invalid_name``, ``invalid_version``, ``invalid_record``,
  ``too_large``) and the pydantic errors as details.
* ``fast_heartbeat`` parses the common, well-formed heartbeat entry without pydantic (it is the
  hot path: one per agent per second); anything unusual returns ``None`` and takes the slow,
  fully validated path.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson
from pydantic import ValidationError

from schemas.agent import MAX_RECORD_BYTES, AgentStatus, Announce
from schemas.envelope import Envelope, format_ms
from schemas.errors import ErrorCode, ErrorInfo, validation_summary

__all__ = [
    "AnnounceEntry",
    "FastHeartbeat",
    "FastLease",
    "PreparedAnnounce",
    "fast_announce",
    "fast_heartbeat",
    "fast_lease",
    "is_identifier",
    "iso_ms",
    "prepare_announce",
    "validation_error_info",
]

_IDENT_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@/-]{0,127}$")
_IDENT_BYTES_RE = re.compile(rb"^[A-Za-z0-9][A-Za-z0-9._@/-]{0,127}$")
_NAME_FIELDS = frozenset({"name", "role", "capabilities", "tags"})
_STATUSES = frozenset(s.value for s in AgentStatus)
_HB_ENVELOPE_FIELDS = frozenset(
    {b"v", b"id", b"kind", b"type", b"sender", b"target", b"sent_at", b"headers", b"payload"}
)
#: a lease names the host's reply list (answers to its beats go there)
_LEASE_ENVELOPE_FIELDS = _HB_ENVELOPE_FIELDS | {b"reply_to"}
#: what an SDK's announce carries (``Membership``): the fast path takes these, and only these
_ANNOUNCE_ENVELOPE_FIELDS = frozenset(
    {b"v", b"id", b"kind", b"type", b"sender", b"sent_at", b"reply_to", b"deadline", b"payload"}
)
#: a wire time as the SDKs write it (``format_ms``); any other form goes the full way
_WIRE_TIME_RE = re.compile(rb"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d{1,6})?Z$")
_HB_PAYLOAD_FIELDS = frozenset({"instance_id", "load", "status", "epoch"})
_LEASE_PAYLOAD_FIELDS = frozenset({"host", "beats", "lease", "ttl_ms", "renew", "members"})
_MAX_BEATS = 100_000  # schemas.agent.Lease

#: (entry id, name, instance id, load, status, epoch or "0"): what the heartbeat script takes,
#: as strings.
FastHeartbeat = tuple[str, str, str, str, str, str]


def is_identifier(value: str) -> bool:
    """Whether ``value`` may be part of a key (the name rule of ``schemas.names``)."""
    return bool(_IDENT_RE.match(value))


def iso_ms(ms: int) -> str:
    """Milliseconds since the epoch as ISO-8601 UTC with milliseconds (the Lua scripts' form)."""
    return format_ms(ms)


def _plain_control(
    type: bytes, fields: dict[bytes, bytes], allowed: frozenset[bytes] = _HB_ENVELOPE_FIELDS
) -> tuple[bytes, Any] | None:
    """(sender, decoded payload) of a plain control entry of ``type``: only the envelope fields
    ``allowed`` (those a heartbeat carries), version 1, a sender that is a name; ``None`` for
    anything else."""
    if fields.get(b"type") != type or not fields.keys() <= allowed:
        return None
    v = fields.get(b"v")
    if v is not None and v != b"1":
        return None
    sender = fields.get(b"sender")
    if sender is None or not _IDENT_BYTES_RE.match(sender):
        return None
    try:
        return sender, orjson.loads(fields.get(b"payload", b"null"))
    except orjson.JSONDecodeError:
        return None


def _beat(
    entry_id: str, name: Any, inst: Any, load: Any, status: Any, epoch: Any
) -> FastHeartbeat | None:
    """One heartbeat's values, checked as the schemas would (``None``: not plain)."""
    if epoch is None:
        epoch = 0
    if (
        type(name) is not str
        or not _IDENT_RE.match(name)
        or type(inst) is not str
        or not _IDENT_RE.match(inst)
        or len(inst) > 64
        or type(load) is not int
        or load < 0
        or status not in _STATUSES
        or type(epoch) is not int
        or epoch < 0
    ):
        return None
    return (entry_id, name, inst, str(load), status, str(epoch))


def fast_heartbeat(entry_id: str, fields: dict[bytes, bytes]) -> FastHeartbeat | None:
    """Parse a plain heartbeat entry, or ``None`` when it needs the full (slow) validation."""
    plain = _plain_control(b"heartbeat", fields)
    if plain is None:
        return None
    sender, payload = plain
    if type(payload) is not dict or not payload.keys() <= _HB_PAYLOAD_FIELDS:
        return None
    return _beat(
        entry_id,
        sender.decode(),
        payload.get("instance_id"),
        payload.get("load", 0),
        payload.get("status", "ready"),
        payload.get("epoch"),
    )


@dataclass(frozen=True, slots=True)
class AnnounceEntry:
    """What the coordinator reads of an ``announce`` entry besides its payload's record: from
    the decoded envelope (``of``), or straight from a plain entry's fields (``fast_announce``,
    with the same outcome)."""

    sender: str
    id: str
    reply_to: str | None
    expired: bool
    payload: Any

    @classmethod
    def of(cls, env: Envelope) -> AnnounceEntry:
        return cls(env.sender, env.id, env.reply_to, env.expired(), env.payload)


def fast_announce(entry_id: str, fields: dict[bytes, bytes]) -> AnnounceEntry | None:
    """A plain ``announce`` entry (what an SDK writes) read without building its envelope, or
    ``None`` when it needs the full decoding: any field, kind, id, time or address the envelope
    model might judge otherwise goes that way (building the envelope was a sixth of the
    coordinator's work per announcement)."""
    plain = _plain_control(b"announce", fields, _ANNOUNCE_ENVELOPE_FIELDS)
    if plain is None:
        return None
    sender, payload = plain
    kind = fields.get(b"kind")
    if kind is not None and kind != b"control":
        return None
    for key in (b"sent_at", b"deadline"):
        value = fields.get(key)
        if value is not None and not _WIRE_TIME_RE.match(value):
            return None
    try:
        raw_id, raw_to = fields.get(b"id"), fields.get(b"reply_to")
        eid = raw_id.decode() if raw_id is not None else entry_id
        reply_to = raw_to.decode() if raw_to is not None else None
    except UnicodeDecodeError:
        return None
    if not 0 < len(eid) <= 128 or (reply_to is not None and len(reply_to) > 512):
        return None
    deadline = fields.get(b"deadline")
    expired = deadline is not None and datetime.now(UTC) >= datetime.fromisoformat(
        deadline.decode()
    )
    return AnnounceEntry(sender.decode(), eid, reply_to, expired, payload)


@dataclass(frozen=True, slots=True)
class FastLease:
    """A ``lease`` entry's parts: full beats, and the renewal (lease id, TTL, name/instance
    pairs; none when ``lease`` is ``None``)."""

    beats: list[FastHeartbeat]
    lease: str | None = None
    ttl_ms: int = 0
    renew: list[tuple[str, str]] = field(default_factory=list)
    #: how many agents the host carries under the lease (``None``: not said, a 2.1 host)
    members: int | None = None


def fast_lease(entry_id: str, fields: dict[bytes, bytes]) -> FastLease | None:
    """Parse a plain ``lease`` entry (full beats and/or a renewal), or ``None`` when it needs
    the full (slow) validation."""
    plain = _plain_control(b"lease", fields, _LEASE_ENVELOPE_FIELDS)
    if plain is None:
        return None
    _, payload = plain
    if type(payload) is not dict or not payload.keys() <= _LEASE_PAYLOAD_FIELDS:
        return None
    beats, host = payload.get("beats", []), payload.get("host")
    if type(beats) is not list or len(beats) > _MAX_BEATS:
        return None
    if type(host) is not str or not _IDENT_RE.match(host):
        return None
    out: list[FastHeartbeat] = []
    for beat in beats:
        if type(beat) is not list or len(beat) != 5:
            return None
        hb = _beat(entry_id, *beat)
        if hb is None:
            return None
        out.append(hb)
    lease, ttl, renew = payload.get("lease"), payload.get("ttl_ms"), payload.get("renew", [])
    if lease is None:
        return FastLease(out) if not renew and ttl is None else None
    if type(lease) is not str or lease.partition(":")[0] != host or type(ttl) is not int:
        return None
    inst = lease.partition(":")[2]
    if not _IDENT_RE.match(inst) or len(inst) > 64 or not 300 <= ttl <= 86_400_000:
        return None
    if type(renew) is not list or len(renew) > _MAX_BEATS:
        return None
    pairs: list[tuple[str, str]] = []
    for pair in renew:
        if type(pair) is not list or len(pair) != 2:
            return None
        name, instance = pair
        if (
            type(name) is not str
            or type(instance) is not str
            or not _IDENT_RE.match(name)
            or not _IDENT_RE.match(instance)
        ):
            return None
        pairs.append((name, instance))
    members = payload.get("members")
    if members is not None and (type(members) is not int or not 0 <= members <= 10_000_000):
        return None
    return FastLease(out, lease, ttl, pairs, members)


def validation_error_info(e: ValidationError, what: str) -> ErrorInfo:
    """A pydantic error as wire ``ErrorInfo``, with the protocol's most specific code."""
    errors = e.errors(include_url=False, include_context=False, include_input=False)
    code = ErrorCode.INVALID_RECORD
    for err in errors:
        loc = tuple(err["loc"])
        if len(loc) >= 2 and loc[0] == "card" and loc[1] in _NAME_FIELDS:
            code = ErrorCode.INVALID_NAME
            break
        if loc[:2] == ("card", "version"):
            code = ErrorCode.INVALID_VERSION
    return ErrorInfo(
        code=code,
        description=f"invalid {what}: {validation_summary(e, 'payload')}",
        details={"errors": orjson.loads(orjson.dumps(errors, default=str))},
    )


@dataclass(frozen=True, slots=True)
class PreparedAnnounce:
    """A validated announcement, ready for the control script.

    ``fields`` is the registry hash (flat strings), ``record_json`` the record as the reply and
    the change feed carry it; the value of its ``registered_at`` (24 characters) starts at byte
    ``registered_at_offset`` (0-based), so the script can keep an earlier ``registered_at`` of
    the same instance without searching the JSON (``metadata`` may hold any text). ``role``,
    ``capabilities``, ``tags`` and ``lease`` name the indexes the record joins (identifiers).
    """

    name: str
    instance_id: str
    ttl_ms: int
    fields: dict[str, str]
    record_json: bytes
    registered_at_offset: int
    role: str
    capabilities: tuple[str, ...]
    tags: tuple[str, ...]
    lease: str | None


_REGISTERED_AT = b'"registered_at":"'


def prepare_announce(payload: Any, entry_ms: int) -> PreparedAnnounce | ErrorInfo:
    """Validate an announce payload received in a control entry added at ``entry_ms``.

    The record is what ``AgentRecord(...).model_dump(mode="json", exclude_none=True)`` gives
    (same keys, same order), built from the validated card without validating it a second time.
    """
    try:
        ann = Announce.model_validate(payload)
    except ValidationError as e:
        return validation_error_info(e, "announcement")
    if not is_identifier(ann.instance_id):
        return ErrorInfo(
            code=ErrorCode.INVALID_NAME,
            description=f"instance_id {ann.instance_id!r} cannot be part of a Redis key",
            details={"field": "instance_id"},
        )
    at = iso_ms(entry_ms)
    plain: dict[str, Any] = ann.card.model_dump(mode="json", exclude_none=True)
    plain["instance_id"] = ann.instance_id
    plain["status"] = ann.status.value
    plain["load"] = ann.load
    plain["registered_at"] = at
    plain["last_seen"] = at
    plain["heartbeat_ms"] = ann.heartbeat_ms
    plain["ttl_ms"] = ann.ttl_ms
    fields: dict[str, str] = {}
    size = 0
    for key, value in plain.items():
        if type(value) is str:  # most of them: the exact type is the cheapest check
            text = value
        elif isinstance(value, (list, dict)):
            text = orjson.dumps(value).decode()
        else:
            text = str(value)
        fields[key] = text
        size += len(key) + (len(text) if text.isascii() else len(text.encode()))
    if size > MAX_RECORD_BYTES:
        return ErrorInfo(
            code=ErrorCode.TOO_LARGE,
            description=f"the record is {size} bytes encoded; the limit is {MAX_RECORD_BYTES}",
            details={"size": size, "limit": MAX_RECORD_BYTES},
        )
    record_json = orjson.dumps(plain)
    if ann.lease is not None:  # the hash only: which lease renews the name (not in the record)
        fields["lease"] = ann.lease
    # the last occurrence: every field after ``metadata`` is ours (names, numbers, times)
    offset = record_json.rindex(_REGISTERED_AT) + len(_REGISTERED_AT)
    return PreparedAnnounce(
        name=ann.card.name,
        instance_id=ann.instance_id,
        ttl_ms=ann.ttl_ms,
        fields=fields,
        record_json=record_json,
        registered_at_offset=offset,
        role=ann.card.role,
        capabilities=ann.card.capabilities,
        tags=ann.card.tags,
        lease=ann.lease,
    )

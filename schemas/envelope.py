"""The envelope: the one shape every message on the bus has (protocol version 1).

Two encodings carry the same fields:

* **stream fields** (streams: inboxes, role queues, the control stream, dead letters): one flat
  stream field per envelope field, strings only; ``payload``, ``headers`` and ``error`` hold
  JSON. Readable with ``XRANGE`` and writable by hand with ``XADD``: only ``type`` is required,
  the rest default (``id`` to the stream entry id, ``sent_at`` to its time, ``kind`` to
  ``send``, ``sender`` to ``anonymous``).
* **JSON** (pub/sub messages and reply lists): one JSON object with the same field names.

Version history: see ``PROTOCOL_VERSION`` and docs/PROTOCOL.md.
"""

from __future__ import annotations

import os
import random
import time
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from schemas.errors import ErrorCode, ErrorInfo, ProtocolError, validation_summary

__all__ = [
    "PROTOCOL_VERSION",
    "Envelope",
    "Kind",
    "decode_fields",
    "decode_json",
    "encode_fields",
    "encode_json",
    "epoch_ms",
    "format_ms",
    "format_time",
    "new_id",
    "stream_id_time",
    "utcnow",
]

#: Version 1 (2026-11): first release.
PROTOCOL_VERSION = 1


class Kind(StrEnum):
    """What the sender expects of the message."""

    SEND = "send"  # one-way, to an agent or one member of a role
    REQUEST = "request"  # expects one reply on ``reply_to``
    REPLY = "reply"  # answer to a request; ``correlation_id`` names it
    BROADCAST = "broadcast"  # to every live agent, or every member of a role
    PUBLISH = "publish"  # to a topic
    CONTROL = "control"  # agent <-> coordinator (announce, heartbeat, leave, answers)


def utcnow() -> datetime:
    """Now in UTC, to the millisecond (the precision the wire keeps)."""
    return datetime.fromtimestamp(time.time_ns() // 1_000_000 / 1000, UTC)


# Ids must be unique, not secret: a generator of our own, seeded from the OS and again in every
# forked child (two processes must never share its state), costs a third of ``os.urandom`` (a
# system call) per message.
_rng = random.Random()
os.register_at_fork(after_in_child=_rng.seed)
_random_bits = _rng.getrandbits


def new_id(ms: int | None = None) -> str:
    """A 26-character id sortable by time: 12 hex digits of ms since epoch (now, or ``ms``) +
    14 random hex."""
    if ms is None:
        ms = time.time_ns() // 1_000_000
    return f"{ms << 56 | _random_bits(56):026x}"


def stream_id_time(entry_id: str) -> datetime:
    """The server time at which a stream entry was added, from its id (``<ms>-<seq>``)."""
    ms = int(entry_id.split("-", 1)[0])
    return datetime.fromtimestamp(ms / 1000, UTC)


class Envelope(BaseModel):
    """A message on the bus. Field names are the wire names."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    v: Literal[1] = Field(default=1, description="Protocol version.")
    id: str = Field(default_factory=new_id, min_length=1, max_length=128)
    kind: Kind = Kind.SEND
    type: str = Field(min_length=1, max_length=128, description="Message type tag (handler key).")
    sender: str = Field(default="anonymous", min_length=1, max_length=128)
    target: str | None = Field(default=None, max_length=300, description="Agent, role:<r>, topic.")
    correlation_id: str | None = Field(default=None, max_length=128)
    reply_to: str | None = Field(default=None, max_length=512, description="List key for replies.")
    sent_at: datetime = Field(default_factory=utcnow)
    deadline: datetime | None = Field(default=None, description="Drop the message after this.")
    headers: dict[str, str] = Field(default_factory=dict, description="Trace context and more.")
    payload: Any = None
    error: ErrorInfo | None = None

    @field_validator("sent_at", "deadline")
    @classmethod
    def _zone(cls, v: datetime | None) -> datetime | None:
        """A time written without a zone (``2099-01-01T00:00:00``) is read as UTC, the wire's
        zone: comparing it with an aware time would fail on every delivery."""
        if v is not None and v.tzinfo is None:
            return v.replace(tzinfo=UTC)
        return v

    def expired(self, now: datetime | None = None) -> bool:
        return self.deadline is not None and (now or datetime.now(UTC)) >= self.deadline


def format_time(dt: datetime) -> str:
    """ISO-8601 UTC with milliseconds and a ``Z``: how the wire carries every time."""
    return dt.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)
#: The date and time of day of the seconds formatted last (two: a message's ``sent_at`` and its
#: ``deadline`` seconds apart would otherwise evict each other on every message).
_seconds: dict[int, str] = {}
#: ``.000Z`` ... ``.999Z``: the milliseconds of a formatted time.
_MILLIS = tuple(f".{ms:03d}Z" for ms in range(1000))


def epoch_ms(dt: datetime) -> int:
    """Milliseconds since the epoch, exactly (no float rounding)."""
    return (dt - _EPOCH) // _MS


def format_ms(ms: int) -> str:
    """``format_time`` of a time given in ms since the epoch, with the date and time of day
    kept for the last few seconds (≈ 0.3 µs against ≈ 2 µs): the hot path of every message
    sent."""
    sec, milli = divmod(ms, 1000)
    text = _seconds.get(sec)
    if text is None:
        if len(_seconds) >= 4:
            _seconds.clear()
        text = _seconds[sec] = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec))
    return text + _MILLIS[milli]


def encode_json(env: Envelope) -> bytes:
    """Encode for pub/sub and reply lists."""
    return orjson.dumps(_plain(env))


def _plain(env: Envelope) -> dict[str, Any]:
    out: dict[str, Any] = {
        "v": env.v,
        "id": env.id,
        "kind": env.kind.value,
        "type": env.type,
        "sender": env.sender,
        "sent_at": format_time(env.sent_at),
    }
    if env.target is not None:
        out["target"] = env.target
    if env.correlation_id is not None:
        out["correlation_id"] = env.correlation_id
    if env.reply_to is not None:
        out["reply_to"] = env.reply_to
    if env.deadline is not None:
        out["deadline"] = format_time(env.deadline)
    if env.headers:
        out["headers"] = env.headers
    if env.payload is not None:
        out["payload"] = env.payload
    if env.error is not None:
        out["error"] = env.error.model_dump()
    return out


def encode_fields(env: Envelope) -> dict[str, str | bytes]:
    """Encode as flat stream fields (for ``XADD``)."""
    plain = _plain(env)
    fields: dict[str, str | bytes] = {}
    for key, value in plain.items():
        if key in ("headers", "payload", "error"):
            fields[key] = orjson.dumps(value)
        else:
            fields[key] = str(value)
    return fields


_JSON_FIELDS = frozenset(("headers", "payload", "error"))


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def decode_json(data: bytes | str) -> Envelope:
    """Decode a JSON envelope; raise ``ProtocolError`` with a reason when it is not one."""
    try:  # one pass (parse and validate together); a failure is explained by the second
        return Envelope.model_validate_json(data)
    except ValidationError:
        pass
    try:
        raw = orjson.loads(data)
    except orjson.JSONDecodeError as e:
        raise ProtocolError(f"not JSON: {e}", code=ErrorCode.UNDECODABLE) from e
    if not isinstance(raw, dict):
        raise ProtocolError("envelope is not a JSON object", code=ErrorCode.UNDECODABLE)
    return _validate(raw)


def decode_fields(
    fields: dict[bytes, bytes] | dict[str, str], entry_id: str | None = None
) -> Envelope:
    """Decode flat stream fields, filling the by-hand defaults from the entry id."""
    raw: dict[str, Any] = {}
    field: object = None  # the field being decoded, for the error (its name may not decode)
    try:  # the hot path of every stream entry received: _text inlined
        for k, v in fields.items():
            field = k
            key = k.decode() if isinstance(k, bytes) else k
            field = key
            text = v.decode() if isinstance(v, bytes) else v
            if key in _JSON_FIELDS:
                raw[key] = orjson.loads(text)
            elif key == "v":
                raw[key] = int(text)
            else:
                raw[key] = text
    except (UnicodeDecodeError, orjson.JSONDecodeError, ValueError) as e:
        raise ProtocolError(
            f"undecodable stream entry field {field!r}: {e}", code=ErrorCode.UNDECODABLE
        ) from e
    if entry_id is not None:
        raw.setdefault("id", entry_id)
        if "sent_at" not in raw:  # not setdefault: that would parse the id every time
            raw["sent_at"] = stream_id_time(entry_id)
    return _validate(raw)


def _validate(raw: dict[str, Any]) -> Envelope:
    version = raw.get("v", PROTOCOL_VERSION)
    if version != PROTOCOL_VERSION:
        if isinstance(version, str) and version.strip() == str(PROTOCOL_VERSION):
            raise ProtocolError(
                f"envelope field v must be the number {PROTOCOL_VERSION} in JSON, not the "
                f"string {version!r}",
                code=ErrorCode.UNSUPPORTED_VERSION,
                details={"field": "v"},
            )
        raise ProtocolError(
            f"unsupported envelope version {version!r} (field v); this side reads version "
            f"{PROTOCOL_VERSION}",
            code=ErrorCode.UNSUPPORTED_VERSION,
            details={"field": "v"},
        )
    try:
        return Envelope.model_validate(raw)
    except ValidationError as e:
        raise ProtocolError(
            f"invalid envelope: {validation_summary(e)}",
            code=ErrorCode.UNDECODABLE,
            details={
                "errors": e.errors(include_url=False, include_context=False, include_input=False)
            },
        ) from e

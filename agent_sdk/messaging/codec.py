"""Fast encoding of outgoing envelopes (the hot path builds no pydantic model).

The receiving side decodes with ``schemas.envelope.decode_fields`` / ``decode_json`` (one
pydantic validation per message); the sending side writes the same wire format directly:
stream fields for streams, one JSON object for pub/sub and reply lists. The payload is
serialised once (``orjson``) and that byte string is what the size limit is checked against.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from pydantic import BaseModel

from schemas.envelope import PROTOCOL_VERSION, Kind, epoch_ms, format_ms, format_time, new_id
from schemas.errors import ErrorInfo, InvalidInput, PayloadTooLarge

__all__ = ["Outgoing", "encode_payload", "iso", "to_jsonable"]

_V = str(PROTOCOL_VERSION)


#: ISO-8601 UTC with milliseconds and a ``Z`` (the one formatter, from the wire contract).
iso = format_time
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_US = timedelta(microseconds=1)


def _default(obj: Any) -> Any:
    if isinstance(obj, BaseModel):
        return obj.model_dump(mode="json")
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


def to_jsonable(value: Any) -> Any:
    """A pydantic model becomes its JSON-mode dump; anything else is returned as is."""
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    return value


def encode_payload(payload: Any, limit: int) -> bytes:
    """Serialise a payload (pydantic models included); refuse it when larger than ``limit``."""
    try:
        data = orjson.dumps(payload, default=_default, option=orjson.OPT_NON_STR_KEYS)
    except TypeError as e:
        raise InvalidInput(f"payload is not JSON serialisable: {e}") from e
    if len(data) > limit:
        raise PayloadTooLarge(
            f"payload is {len(data)} bytes encoded; the limit (max_payload_bytes) is {limit}",
            details={"size": len(data), "limit": limit},
        )
    return data


class Outgoing:
    """An envelope about to leave, with its payload already encoded.

    ``sent_at`` defaults to now; one clock read gives it and the default ``id``. The
    ``datetime`` itself is made only when asked for (the wire carries ``sent_ms``, formatted).
    """

    __slots__ = (
        "_deadline", "_deadline_us", "_sent_at", "correlation_id", "error", "headers", "id", "kind",
        "payload", "reply_to", "sender", "sent_ms", "target", "type",
    )  # fmt: skip

    def __init__(
        self,
        type: str,
        sender: str,
        payload: bytes,
        kind: Kind = Kind.SEND,
        target: str | None = None,
        reply_to: str | None = None,
        correlation_id: str | None = None,
        deadline: datetime | None = None,
        headers: dict[str, str] | None = None,
        error: ErrorInfo | None = None,
        id: str = "",
        sent_at: datetime | None = None,
        timeout: float | None = None,
    ) -> None:
        """``timeout``: the deadline is ``sent_at`` + that many seconds (when ``deadline`` is
        not given), computed without making either datetime."""
        if not type or len(type) > 128:
            raise InvalidInput(f"message type must be 1-128 characters, got {type!r}")
        self.type = type
        self.sender = sender
        self.payload = payload
        self.kind = kind
        self.target = target
        self.reply_to = reply_to
        self.correlation_id = correlation_id
        self._deadline = deadline
        self._deadline_us = None if deadline is None else (deadline - _EPOCH) // _US
        self.headers = headers
        self.error = error
        self._sent_at = sent_at
        #: ``sent_at`` in ms since the epoch.
        self.sent_ms = time.time_ns() // 1_000_000 if sent_at is None else epoch_ms(sent_at)
        self.id = id or new_id(self.sent_ms)
        if timeout is not None and deadline is None:
            self._deadline_us = self.sent_ms * 1000 + round(timeout * 1_000_000)

    @property
    def deadline(self) -> datetime | None:
        if self._deadline is None and self._deadline_us is not None:
            self._deadline = _EPOCH + timedelta(microseconds=self._deadline_us)
        return self._deadline

    @property
    def sent_at(self) -> datetime:
        if self._sent_at is None:
            self._sent_at = _EPOCH + timedelta(milliseconds=self.sent_ms)
        return self._sent_at

    def __repr__(self) -> str:
        return f"Outgoing(id={self.id!r}, kind={self.kind.value!r}, type={self.type!r})"

    def stream_args(self) -> list[str | bytes]:
        """Flat ``field, value, ...`` for ``XADD`` (and for the send script's ARGV)."""
        args: list[str | bytes] = [
            "v", _V, "id", self.id, "kind", self.kind.value, "type", self.type,
            "sender", self.sender, "sent_at", format_ms(self.sent_ms),
        ]  # fmt: skip
        if self.target is not None:
            args += ["target", self.target]
        if self.reply_to is not None:
            args += ["reply_to", self.reply_to]
        if self.correlation_id is not None:
            args += ["correlation_id", self.correlation_id]
        if self._deadline_us is not None:
            args += ["deadline", format_ms(self._deadline_us // 1000)]
        if self.headers:
            args += ["headers", orjson.dumps(self.headers)]
        args += ["payload", self.payload]
        if self.error is not None:
            args += ["error", orjson.dumps(self.error.model_dump())]
        return args

    def stream_fields(self) -> dict[Any, Any]:
        args = self.stream_args()
        return dict(zip(args[::2], args[1::2], strict=True))

    def json(self) -> bytes:
        """One JSON object, for pub/sub and reply lists."""
        out: dict[str, Any] = {
            "v": PROTOCOL_VERSION,
            "id": self.id,
            "kind": self.kind,  # a str enum: orjson writes its value
            "type": self.type,
            "sender": self.sender,
            "sent_at": format_ms(self.sent_ms),
        }
        if self.target is not None:
            out["target"] = self.target
        if self.reply_to is not None:
            out["reply_to"] = self.reply_to
        if self.correlation_id is not None:
            out["correlation_id"] = self.correlation_id
        if self._deadline_us is not None:
            out["deadline"] = format_ms(self._deadline_us // 1000)
        if self.headers:
            out["headers"] = self.headers
        if self.payload != b"null":
            out["payload"] = orjson.Fragment(self.payload)
        if self.error is not None:
            out["error"] = self.error.model_dump()
        return orjson.dumps(out)

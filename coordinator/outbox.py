"""What the coordinator writes back: replies, ``reannounce`` requests and dead letters.

A control entry that is dead-lettered is also answered when its raw fields say where
(``queue_error_answer``): a ``heartbeat_result``, ``announce_result``, ``leave_result`` or (to a
host) ``lease_result`` with the ``error``, so the agent hears why instead of expiring or timing
out in silence.

Each helper queues commands on a pipeline so one batch of control entries costs one round trip.
Replies to accepted announces and to leaves are pushed by the control script itself
(``coordinator/lua/control.lua``): ``reply_head`` encodes such a reply up to its ``payload``,
which the script appends (the record, or ``true``/``false``) followed by ``}``.

Envelopes are encoded here without pydantic (``reply_bytes``, the hot path when a fleet
registers or re-announces at once); a test pins the bytes to ``schemas.envelope.encode_json``.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

import orjson
from redis.asyncio.client import Pipeline

from agent_sdk.security import publish_digest
from coordinator.settings import CoordinatorSettings
from coordinator.validation import is_identifier
from schemas.agent import ControlType
from schemas.envelope import Kind, format_ms, new_id
from schemas.errors import ErrorCode, ErrorInfo

__all__ = [
    "COORDINATOR_SENDER",
    "LEAVE_RESULT",
    "queue_dead_letter",
    "queue_error_answer",
    "queue_reannounce",
    "queue_reply",
    "reply_bytes",
    "reply_head",
]

#: ``sender`` of every envelope the coordinator writes.
COORDINATOR_SENDER = "coordinator"
#: Type of the answer to a ``leave`` that carried a ``reply_to``.
LEAVE_RESULT = "leave_result"


def _reply_plain(
    type: str, kind: Kind, target: str | None, correlation_id: str | None
) -> dict[str, Any]:
    # the keys and their order of schemas.envelope.encode_json (no reply_to, deadline, headers)
    ms = time.time_ns() // 1_000_000  # one clock read for the id and sent_at, as Outgoing
    out: dict[str, Any] = {
        "v": 1,
        "id": new_id(ms),
        "kind": kind.value,
        "type": type,
        "sender": COORDINATOR_SENDER,
        "sent_at": format_ms(ms),
    }
    if target is not None:
        out["target"] = target
    if correlation_id is not None:
        out["correlation_id"] = correlation_id
    return out


def reply_bytes(
    *,
    type: str,
    kind: Kind = Kind.REPLY,
    target: str | None = None,
    correlation_id: str | None = None,
    payload: Any = None,
    error: ErrorInfo | None = None,
) -> bytes:
    """A coordinator envelope encoded as ``encode_json(Envelope(...))`` would encode it."""
    out = _reply_plain(type, kind, target, correlation_id)
    if payload is not None:
        out["payload"] = payload
    if error is not None:
        out["error"] = error.model_dump()
    return orjson.dumps(out)


def reply_head(*, type: str, target: str | None, correlation_id: str | None) -> bytes:
    """A ``reply`` envelope up to its payload: append the payload's JSON and ``}``."""
    head = orjson.dumps(_reply_plain(type, Kind.REPLY, target, correlation_id))
    return head[:-1] + b',"payload":'


def queue_reply(
    pipe: Pipeline,
    settings: CoordinatorSettings,
    reply_to: str,
    *,
    type: str,
    kind: Kind = Kind.REPLY,
    target: str | None = None,
    correlation_id: str | None = None,
    payload: Any = None,
    error: ErrorInfo | None = None,
) -> None:
    """``LPUSH`` a JSON envelope to a reply list and ``PEXPIRE`` the list. In acl mode its
    proof goes first into ``R:proofs`` (only coordinators may write it): a reply router hands
    an unsolicited control envelope (``reannounce``, ...) on only if it is proved there."""
    data = reply_bytes(
        type=type,
        kind=kind,
        target=target,
        correlation_id=correlation_id,
        payload=payload,
        error=error,
    )
    if settings.secure:
        now = int(time.time() * 1000)
        proofs = settings.keys.coordinator_proofs()
        pipe.zadd(proofs, {publish_digest(reply_to, data): now})
        pipe.zremrangebyscore(proofs, "-inf", now - round(settings.proof_keep * 1000))
    pipe.lpush(reply_to, data)
    pipe.pexpire(reply_to, settings.reply_ttl_ms)


def queue_reannounce(
    pipe: Pipeline,
    settings: CoordinatorSettings,
    name: str,
    instance_id: str,
    holder: str | None = None,
    *,
    reply_to: str | None = None,
) -> None:
    """Tell an instance the registry does not hold it: expired or Redis lost data (reason
    ``unknown_agent``: announce again), or another instance holds its name (reason
    ``name_lost``, ``holder`` its instance id: stop serving the name). Sent to the instance's
    reply list, or to ``reply_to`` (the host's, for a heartbeat that came in a ``lease``)."""
    payload: dict[str, str] = {"instance_id": instance_id, "reason": "unknown_agent"}
    if holder is not None:
        payload.update(reason=ErrorCode.NAME_LOST.value, holder=holder)
    queue_reply(
        pipe,
        settings,
        reply_to or settings.keys.replies(name, instance_id),
        type=ControlType.REANNOUNCE,
        kind=Kind.CONTROL,
        target=name,
        payload=payload,
    )


def queue_dead_letter(
    pipe: Pipeline,
    settings: CoordinatorSettings,
    entry_id: str,
    fields: dict[bytes, bytes],
    error: ErrorInfo,
    *,
    extra: dict[str, str] | None = None,
) -> None:
    """``XADD`` the entry to the dead-letter stream (with ``extra`` fields, e.g. ``count``);
    the caller ``XACK``s it afterwards."""
    keys = settings.keys
    letter: dict[Any, Any] = {
        "reason": error.description,
        "code": error.code,
        "source": keys.control(),
        "source_id": entry_id,
        "failed_at": datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "coordinator": settings.coordinator_id,
        **(extra or {}),
    }
    for k, v in fields.items():
        letter[b"orig." + k] = v
    pipe.xadd(keys.deadletter(), letter, maxlen=settings.deadletter_maxlen, approximate=True)


#: The answer to each control type: its ``type`` and ``kind`` (a heartbeat's nobody awaits).
_ANSWERS: dict[str, tuple[str, Kind]] = {
    ControlType.ANNOUNCE.value: (ControlType.ANNOUNCE_RESULT.value, Kind.REPLY),
    ControlType.HEARTBEAT.value: (ControlType.HEARTBEAT_RESULT.value, Kind.CONTROL),
    ControlType.LEAVE.value: (LEAVE_RESULT, Kind.REPLY),
    ControlType.LEASE.value: (ControlType.LEASE_RESULT.value, Kind.CONTROL),
}
_MAX_ID = 128
_MAX_INSTANCE_ID = 64
_MAX_REPLY_TO = 512


def _field(fields: dict[bytes, bytes], name: bytes) -> str | None:
    value = fields.get(name)
    if value is None:
        return None
    try:
        return value.decode()
    except UnicodeDecodeError:
        return None


def answer_address(
    settings: CoordinatorSettings, fields: dict[bytes, bytes]
) -> tuple[str, str | None] | None:
    """Where to answer a control entry from its raw fields, and the agent's name (or None):
    its ``reply_to`` when it is a reply list of this namespace, else the reply list of its
    ``sender`` and payload ``instance_id`` when both are valid names; ``None`` when neither."""
    prefix = settings.keys.agents_prefix
    sender = _field(fields, b"sender")
    name = sender if sender is not None and is_identifier(sender) else None
    reply_to = _field(fields, b"reply_to")
    if (
        reply_to is not None
        and len(reply_to) <= _MAX_REPLY_TO
        and reply_to.startswith(prefix)
        and ":replies:" in reply_to
    ):
        return reply_to, name
    if name is None:
        return None
    try:
        payload = orjson.loads(fields.get(b"payload", b"null"))
    except orjson.JSONDecodeError:
        return None
    inst = payload.get("instance_id") if isinstance(payload, dict) else None
    if not isinstance(inst, str) or len(inst) > _MAX_INSTANCE_ID or not is_identifier(inst):
        return None
    return settings.keys.replies(name, inst), name


def queue_error_answer(
    pipe: Pipeline,
    settings: CoordinatorSettings,
    entry_id: str,
    fields: dict[bytes, bytes],
    error: ErrorInfo,
) -> bool:
    """Answer a control entry that was not applied with ``error`` (its correlation id the
    entry's ``id``, or the entry id), when its type is known and its raw fields say where
    (``answer_address``). Returns whether an answer was queued."""
    answer = _ANSWERS.get(_field(fields, b"type") or "")
    if answer is None:
        return False
    where = answer_address(settings, fields)
    if where is None:
        return False
    reply_to, name = where
    msg_id = _field(fields, b"id") if b"id" in fields else entry_id
    if not msg_id or len(msg_id) > _MAX_ID:
        msg_id = None
    queue_reply(
        pipe, settings, reply_to, type=answer[0], kind=answer[1], target=name,
        correlation_id=msg_id, error=error,
    )  # fmt: skip
    return True

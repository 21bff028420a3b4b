"""What the coordinator writes back: replies, ``reannounce`` requests and dead letters.

Each helper queues commands on a pipeline so one batch of control entries costs one round trip.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from redis.asyncio.client import Pipeline

from coordinator.settings import CoordinatorSettings
from schemas.agent import ControlType
from schemas.envelope import Envelope, Kind, encode_json
from schemas.errors import ErrorInfo

__all__ = [
    "COORDINATOR_SENDER",
    "LEAVE_RESULT",
    "queue_dead_letter",
    "queue_reannounce",
    "queue_reply",
]

#: ``sender`` of every envelope the coordinator writes.
COORDINATOR_SENDER = "coordinator"
#: Type of the answer to a ``leave`` that carried a ``reply_to``.
LEAVE_RESULT = "leave_result"


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
    """``LPUSH`` a JSON envelope to a reply list and ``PEXPIRE`` the list."""
    # every argument is ours and already valid: construct without re-validating (hot path when
    # a whole fleet must re-announce after Redis lost its data)
    env = Envelope.model_construct(
        kind=kind,
        type=type,
        sender=COORDINATOR_SENDER,
        target=target,
        correlation_id=correlation_id,
        payload=payload,
        error=error,
    )
    pipe.lpush(reply_to, encode_json(env))
    pipe.pexpire(reply_to, settings.reply_ttl_ms)


def queue_reannounce(
    pipe: Pipeline, settings: CoordinatorSettings, name: str, instance_id: str
) -> None:
    """Tell an instance the registry does not hold it (expired, or Redis lost data)."""
    queue_reply(
        pipe,
        settings,
        settings.keys.replies(name, instance_id),
        type=ControlType.REANNOUNCE,
        kind=Kind.CONTROL,
        target=name,
        payload={"instance_id": instance_id, "reason": "unknown_agent"},
    )


def queue_dead_letter(
    pipe: Pipeline,
    settings: CoordinatorSettings,
    entry_id: str,
    fields: dict[bytes, bytes],
    error: ErrorInfo,
) -> None:
    """``XADD`` the entry to the dead-letter stream; the caller ``XACK``s it afterwards."""
    keys = settings.keys
    letter: dict[Any, Any] = {
        "reason": error.description,
        "code": error.code,
        "source": keys.control(),
        "source_id": entry_id,
        "failed_at": datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "coordinator": settings.coordinator_id,
    }
    for k, v in fields.items():
        letter[b"orig." + k] = v
    pipe.xadd(keys.deadletter(), letter, maxlen=settings.deadletter_maxlen, approximate=True)

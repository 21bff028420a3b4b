"""Events: the registry change feed and agent activity.

**Registry events** are entries of the capped stream ``R:events`` (see ``schemas.keys``), written
by the coordinator in the same Lua script that changes the registry, and mirrored as JSON on the
``<ns>:events`` channel. The stream entry id is the revision: a reader resumes exactly where it
stopped with ``XREAD ... STREAMS R:events <last id>``. Stream fields are flat strings:
``type``, ``name``, ``instance_id``, ``role``, ``at`` (ISO-8601), and per type ``reason``,
``changes`` (JSON ``{field: [old, new]}``), ``last_seen``, ``record`` (JSON of the record).
Plugin hosts add ``plugin_*`` events to the same feed (``version``, ``reason``; docs/PLUGINS.md).

**Activity events** are entries of a per-session stream ``<ns>:session:{<id>}:activity`` written
by agents while they work for a session: ``agent_started``, ``agent_thinking``,
``tool_executing``, ``tool_completed``, ``agent_completed`` and ``agent_failed``, each with the
agent, the session, a per-session sequence number and a JSON payload.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

import orjson
from pydantic import BaseModel, ConfigDict, Field

from schemas.envelope import stream_id_time

__all__ = [
    "ActivityEvent",
    "ActivityType",
    "ExpiryReason",
    "RegistryEvent",
    "RegistryEventType",
]


class RegistryEventType(StrEnum):
    AGENT_REGISTERED = "agent_registered"
    AGENT_UPDATED = "agent_updated"
    AGENT_DEREGISTERED = "agent_deregistered"
    AGENT_EXPIRED = "agent_expired"
    #: Written by a plugin host (``agentbus run --plugins``), not the coordinator: ``name`` is
    #: the plugin's, ``version`` the version concerned, ``reason`` what happened.
    PLUGIN_LOADED = "plugin_loaded"
    PLUGIN_RELOADED = "plugin_reloaded"
    PLUGIN_UNLOADED = "plugin_unloaded"
    PLUGIN_FAILED = "plugin_failed"


class ExpiryReason(StrEnum):
    HEARTBEAT_MISSED = "heartbeat_missed"  # no heartbeat within ttl_ms
    LEFT = "left"  # the agent sent ``leave``
    REPLACED = "replaced"  # a new instance took over the name after the old one expired


class RegistryEvent(BaseModel):
    """One change of the registry. ``revision`` is the change-feed stream entry id."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    revision: str | None = None
    type: RegistryEventType
    name: str
    instance_id: str | None = None
    role: str | None = None
    at: datetime
    reason: str | None = None
    version: str | None = None
    last_seen: datetime | None = None
    changes: dict[str, list[Any]] = Field(default_factory=dict)
    record: dict[str, Any] | None = None

    @classmethod
    def from_fields(
        cls, entry_id: str, fields: dict[bytes, bytes] | dict[str, str]
    ) -> RegistryEvent:
        data: dict[str, Any] = {"revision": entry_id}
        for k, v in fields.items():
            key = k.decode() if isinstance(k, bytes) else k
            text = v.decode() if isinstance(v, bytes) else v
            data[key] = orjson.loads(text) if key in ("changes", "record") else text
        data.setdefault("at", stream_id_time(entry_id))
        return cls.model_validate(data)


class ActivityType(StrEnum):
    AGENT_STARTED = "agent_started"
    AGENT_THINKING = "agent_thinking"
    TOOL_EXECUTING = "tool_executing"
    TOOL_COMPLETED = "tool_completed"
    AGENT_COMPLETED = "agent_completed"
    AGENT_FAILED = "agent_failed"


class ActivityEvent(BaseModel):
    """What an agent did for a session. ``seq`` orders a session's events from 1."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    id: str | None = Field(default=None, description="Stream entry id (resume point).")
    type: ActivityType
    agent: str
    session: str
    seq: int = Field(ge=1)
    at: datetime
    payload: Any = None

    def to_fields(self) -> dict[str, str]:
        out = {
            "type": self.type.value,
            "agent": self.agent,
            "session": self.session,
            "seq": str(self.seq),
            "at": self.at.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        }
        if self.payload is not None:
            out["payload"] = orjson.dumps(self.payload).decode()
        return out

    @classmethod
    def from_fields(
        cls, entry_id: str, fields: dict[bytes, bytes] | dict[str, str]
    ) -> ActivityEvent:
        data: dict[str, Any] = {"id": entry_id}
        for k, v in fields.items():
            key = k.decode() if isinstance(k, bytes) else k
            text = v.decode() if isinstance(v, bytes) else v
            data[key] = orjson.loads(text) if key == "payload" else text
        return cls.model_validate(data)

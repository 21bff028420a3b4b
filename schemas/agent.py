"""The agent record and the control messages that maintain it.

An agent describes itself with an ``AgentCard`` (the A2A Agent Card vocabulary where the two
overlap: name, description, version, capabilities/skills, tags). The coordinator stores it, plus
the fields it owns (instance, status, load, times), as an ``AgentRecord`` in a flat Redis hash of
strings: readable with ``HGETALL``; lists and maps are JSON.

Control messages travel in envelopes of kind ``control`` on the control stream:

* ``announce`` (payload ``Announce``): join or update; answered on ``reply_to`` with a ``reply``
  envelope of type ``announce_result``: payload = the stored record, or ``error`` = why refused.
* ``heartbeat`` (payload ``Heartbeat``): extends liveness to entry time + ``ttl_ms``; an unknown
  instance is told to re-announce with a ``reannounce`` control envelope on its reply list; a
  heartbeat that fails validation is answered there with a ``heartbeat_result`` (``error``).
* ``leave`` (payload ``Leave``): deregisters at once; with a ``reply_to`` it is answered with a
  ``reply`` envelope of type ``leave_result`` (payload ``LeaveResult``).

The answers the coordinator pushes to an instance's reply list are described here too:
``Reannounce`` (the payload of a ``reannounce`` control envelope) and ``LeaveResult``.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic.json_schema import SkipJsonSchema

from schemas.names import Identifier, LeaseId, lease_host
from schemas.semver import check_version

__all__ = [
    "MAX_RECORD_BYTES",
    "AgentCard",
    "AgentRecord",
    "AgentStatus",
    "Announce",
    "ControlType",
    "Heartbeat",
    "Leave",
    "LeaveResult",
    "Reannounce",
]

#: Largest encoded record (all hash fields and values together) the coordinator accepts.
MAX_RECORD_BYTES = 16 * 1024
_MAX_LIST = 64


class AgentStatus(StrEnum):
    STARTING = "starting"
    READY = "ready"
    BUSY = "busy"
    DRAINING = "draining"


class ControlType(StrEnum):
    ANNOUNCE = "announce"
    HEARTBEAT = "heartbeat"
    LEAVE = "leave"
    LEASE = "lease"
    ANNOUNCE_RESULT = "announce_result"
    REANNOUNCE = "reannounce"
    #: The coordinator's answer to a heartbeat (or a host's lease) it could not apply
    #: (``error`` says why).
    HEARTBEAT_RESULT = "heartbeat_result"
    LEASE_RESULT = "lease_result"


Version = Annotated[str, Field(min_length=1, max_length=64)]


class AgentCard(BaseModel):
    """What an agent says about itself when it announces."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: Identifier = Field(description="Unique among live agents; the agent's address.")
    role: Identifier = Field(description="What kind of work it does; role queues are per role.")
    version: Version = Field(default="0.0.0", description="SemVer 2.0 of the agent's code.")
    description: str = Field(default="", max_length=1024)
    capabilities: tuple[Identifier, ...] = Field(default=(), max_length=_MAX_LIST)
    tags: tuple[Identifier, ...] = Field(default=(), max_length=_MAX_LIST)
    region: str | None = Field(default=None, max_length=128)
    host: str | None = Field(default=None, max_length=255)
    pid: int | None = Field(default=None, ge=0)
    max_concurrency: int = Field(default=1, ge=1, le=100_000)
    metadata: dict[str, str] = Field(default_factory=dict, max_length=32)

    @field_validator("version")
    @classmethod
    def _semver(cls, v: str) -> str:
        return check_version(v)

    @field_validator("capabilities", "tags")
    @classmethod
    def _dedupe(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(dict.fromkeys(v))


class AgentRecord(AgentCard):
    """A registry entry: the card plus what the coordinator owns."""

    instance_id: str = Field(min_length=1, max_length=64, description="Changes on each run.")
    status: AgentStatus = AgentStatus.READY
    load: int = Field(default=0, ge=0, description="Work items in progress.")
    registered_at: datetime
    last_seen: datetime
    heartbeat_ms: int = Field(ge=1)
    ttl_ms: int = Field(ge=1)
    epoch: int = Field(
        default=0,
        ge=0,
        description="Fencing token of this registration: every new registration of a name "
        'gets a larger one (docs/PROTOCOL.md, "Fencing").',
    )

    @property
    def id(self) -> str:
        """The agent's id is its name (its address); ``instance_id`` tells runs apart."""
        return self.name

    @property
    def free_slots(self) -> int:
        return max(0, self.max_concurrency - self.load)

    @property
    def load_ratio(self) -> float:
        return self.load / self.max_concurrency

    # -- the Redis hash (flat strings) ---------------------------------------------------------
    def to_hash(self) -> dict[str, str]:
        """Encode as the registry hash: strings only, JSON for lists and maps, ISO-8601 times."""
        data = self.model_dump(mode="json", exclude_none=True)
        out: dict[str, str] = {}
        for key, value in data.items():
            if isinstance(value, (list, dict)):
                out[key] = orjson.dumps(value).decode()
            else:
                out[key] = str(value)
        return out

    @classmethod
    def from_hash(cls, raw: dict[bytes, bytes] | dict[str, str]) -> AgentRecord:
        """Decode a registry hash (as returned by ``HGETALL``); the registry's own fields that
        are not part of the record (``REGISTRY_ONLY_FIELDS``) are skipped."""
        data: dict[str, Any] = {}
        for k, v in raw.items():
            key = k.decode() if isinstance(k, bytes) else k
            if key in REGISTRY_ONLY_FIELDS:
                continue
            text = v.decode() if isinstance(v, bytes) else v
            if key in _JSON_FIELDS:
                data[key] = orjson.loads(text)
            else:
                data[key] = text
        return cls.model_validate(data)


_JSON_FIELDS = frozenset({"capabilities", "tags", "metadata"})
#: Fields of a registry hash that are not record fields: the host lease that renews the name
#: (``lease``), the time of its last beat under that lease (``seen_ms``) and, in acl mode, the
#: host that may heartbeat for it (``lessee``).
REGISTRY_ONLY_FIELDS = frozenset({"lease", "lessee", "seen_ms"})


class Announce(BaseModel):
    """Payload of an ``announce`` control message."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    card: AgentCard
    instance_id: str = Field(min_length=1, max_length=64)
    status: AgentStatus = AgentStatus.READY
    load: int = Field(default=0, ge=0)
    heartbeat_ms: int = Field(ge=100, le=3_600_000)
    ttl_ms: int = Field(ge=300, le=86_400_000)
    lease: LeaseId | None = Field(
        default=None,
        description="The host lease that renews this agent (protocol 1.2, docs/PROTOCOL.md "
        "'Hosts'): its renewals extend the deadline of the names it holds.",
    )

    @model_validator(mode="after")
    def _ttl_covers_heartbeats(self) -> Announce:
        if self.ttl_ms < 2 * self.heartbeat_ms:
            raise ValueError(
                f"ttl_ms ({self.ttl_ms}) must be at least twice heartbeat_ms "
                f"({self.heartbeat_ms}) so one late heartbeat does not expire the agent"
            )
        return self


class Heartbeat(BaseModel):
    """Payload of a ``heartbeat`` control message."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    instance_id: str = Field(min_length=1, max_length=64)
    load: int = Field(default=0, ge=0)
    status: AgentStatus = AgentStatus.READY
    epoch: int | None = Field(
        default=None,
        ge=0,
        description="The registration's epoch (from the announce result); a heartbeat of an "
        "earlier registration is ignored.",
    )


#: One heartbeat inside a ``lease``: name, instance_id, load, status, epoch (or null).
LeaseBeat = tuple[Identifier, Identifier, int, AgentStatus, int | None]


class Lease(BaseModel):
    """Payload of a ``lease`` control message: the heartbeats of every agent a process hosts,
    in one entry per interval (docs/PROTOCOL.md, "Hosts"). Each beat is applied exactly as a
    ``heartbeat`` of that agent written at the entry's time; the entry extends the deadline of
    the ``lease``, which the names it holds live by, to the entry's time + ``ttl_ms`` (protocol
    2.2); ``renew`` names the agents that did not change (a host sends a full beat only for an
    agent whose status or load changed)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    host: Identifier = Field(description="The hosting process's id (for logs and tools).")
    beats: list[LeaseBeat] = Field(default_factory=list, max_length=100_000)
    lease: LeaseId | None = Field(default=None, description="The host's lease id: host:instance")
    ttl_ms: int | None = Field(default=None, ge=300, le=86_400_000)
    renew: list[tuple[Identifier, Identifier]] = Field(default_factory=list, max_length=100_000)
    members: int | None = Field(
        default=None, ge=0, le=10_000_000,
        description="How many agents the host carries under its lease now, over all its entries "
        "(protocol 2.2): when the lease's set holds as many, the names are not checked one by one",
    )  # fmt: skip

    @model_validator(mode="after")
    def _renewal(self) -> Lease:
        if self.renew and (self.lease is None or self.ttl_ms is None):
            raise ValueError("renew needs the lease id and ttl_ms")
        if self.lease is not None and lease_host(self.lease) != self.host:
            raise ValueError(f"lease {self.lease!r} is not a lease of host {self.host!r}")
        return self

    @field_validator("beats")
    @classmethod
    def _beats(cls, beats: list[LeaseBeat]) -> list[LeaseBeat]:
        for _, inst, load, _, epoch in beats:
            if not 1 <= len(inst) <= 64 or load < 0 or (epoch is not None and epoch < 0):
                raise ValueError(
                    "each beat is [name, instance_id (1-64 chars), load >= 0, status, "
                    "epoch >= 0 or null]"
                )
        return beats


class Leave(BaseModel):
    """Payload of a ``leave`` control message."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    instance_id: str = Field(min_length=1, max_length=64)
    reason: str = Field(default="shutdown", max_length=256)


class LeaveResult(BaseModel):
    """Payload of the ``leave_result`` reply to a ``leave`` that carried a ``reply_to``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    removed: bool = Field(
        description="Whether this instance held the name and its record was removed (false: it "
        "held nothing, e.g. it had expired or left already)."
    )


class Reannounce(BaseModel):
    """Payload of a ``reannounce`` control envelope, pushed to an instance's reply list when the
    coordinator received a heartbeat from an instance the registry does not hold."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    instance_id: str = Field(
        min_length=1, max_length=64, description="The instance meant; others ignore it."
    )
    reason: Literal["unknown_agent", "name_lost"] = Field(
        description="unknown_agent: nobody holds the name, announce again (same instance id); "
        'name_lost: another instance holds it, stop serving the name (docs/PROTOCOL.md, "Fencing").'
    )
    holder: str | SkipJsonSchema[None] = Field(
        default=None,
        max_length=64,
        description="With name_lost: the instance id that holds the name now.",
    )

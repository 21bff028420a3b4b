"""The acl policy: which identities exist and what each may claim and do.

A policy is a TOML file (``agentbus acl`` reads it; docs/SECURITY.md has a full example)::

    [identities.summarizers]            # a Redis ACL user "<prefix>summarizers"
    kind = "agent"                      # agent | coordinator | gateway | operator
    names = ["sum-*", "summarizers"]    # names it may register and send as (glob patterns)
    roles = ["summarizer"]              # roles it may take (read their queues)
    capabilities = ["pdf"]              # capabilities it may announce ("*": any)
    send_to = ["*"]                     # agents and "role:<r>" it may send to (glob patterns)
    publish = ["news.*"]                # topics it may publish on (glob patterns)
    subscribe = ["news.*"]              # topic patterns it may subscribe to (exact patterns)
    broadcast = false                   # may it broadcast
    max_agents = 100                    # live names at once (coordinator-enforced)
    tenants = ["acme", "team-*"]        # whose sessions it acts for (glob patterns)
    password_file = "secrets/summarizers"   # its password (made by ``--generate``)

``tenants``: an agent identity writes and reads the activity of those tenants' sessions (the
keys under ``KeySpace.tenant_prefix``), and nobody else's; a gateway identity serves those
tenants' token users (it claims and reads their sessions). Coordinators and operators reach
every tenant. Sessions without a tenant (``<ns>:session:*``) are reachable only by coordinators
and operators in acl mode (docs/SECURITY.md, "Tenants").

Names, roles, tenants and topic patterns use the characters of ``schemas.names`` plus ``*``: ``?``,
``[`` and ``\\`` are refused, so a pattern means the same to Redis and to the coordinator.
The policy is stored as JSON in ``R:policy`` when applied: the coordinator checks roles,
capabilities and ``max_agents`` of each announce against it.
"""

from __future__ import annotations

import fnmatch
import re
import tomllib
from pathlib import Path
from typing import Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from schemas.errors import ConfigurationError, validation_summary

__all__ = ["Identity", "Kind", "Policy", "load_policy"]

Kind = Literal["agent", "coordinator", "gateway", "operator"]

_PATTERN_RE = re.compile(r"^[A-Za-z0-9*][A-Za-z0-9._@/*-]*$")
_TOPIC_PATTERN_RE = re.compile(r"^[A-Za-z0-9_*-]+(\.[A-Za-z0-9_*-]+)*$")
_ID_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")


def _check_patterns(values: list[str], rule: re.Pattern[str], what: str) -> list[str]:
    for v in values:
        if not rule.match(v) or len(v) > 128:
            raise ValueError(f"{what} pattern {v!r}: letters, digits, . _ - @ / and * only")
    return values


class Identity(BaseModel):
    """One identity: one Redis ACL user."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Kind = "agent"
    names: list[str] = Field(default_factory=list)
    roles: list[str] = Field(default_factory=list)
    capabilities: list[str] = Field(default_factory=lambda: ["*"])
    send_to: list[str] = Field(default_factory=lambda: ["*"])
    publish: list[str] = Field(default_factory=list)
    subscribe: list[str] = Field(default_factory=list)
    broadcast: bool = False
    max_agents: int = Field(default=100, ge=0, le=1_000_000)
    tenants: list[str] = Field(default_factory=list)
    password_file: str | None = None

    @field_validator("names", "roles", "capabilities", "send_to", "tenants")
    @classmethod
    def _names(cls, v: list[str]) -> list[str]:
        return _check_patterns([x.removeprefix("role:") for x in v], _PATTERN_RE, "name") and v

    @field_validator("publish", "subscribe")
    @classmethod
    def _topics(cls, v: list[str]) -> list[str]:
        return _check_patterns(v, _TOPIC_PATTERN_RE, "topic")

    def may_name(self, name: str) -> bool:
        return any(fnmatch.fnmatchcase(name, p) for p in self.names)

    def may_role(self, role: str) -> bool:
        return any(fnmatch.fnmatchcase(role, p) for p in self.roles)

    def may_capability(self, cap: str) -> bool:
        return any(fnmatch.fnmatchcase(cap, p) for p in self.capabilities)

    def may_tenant(self, tenant: str) -> bool:
        return any(fnmatch.fnmatchcase(tenant, p) for p in self.tenants)


class Policy(BaseModel):
    """Every identity of one namespace, and the prefix of their Redis user names."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    user_prefix: str = Field(default="", max_length=64)
    identities: dict[str, Identity]

    @field_validator("identities")
    @classmethod
    def _ids(cls, v: dict[str, Identity]) -> dict[str, Identity]:
        for key in v:
            if not _ID_RE.match(key):
                raise ValueError(f"identity {key!r}: 1-64 of a-z 0-9 . _ - (it names a Redis user)")
        return v

    def user(self, identity: str) -> str:
        """The Redis user name of ``identity``."""
        return f"{self.user_prefix}{identity}"

    def owner_of(self, name: str) -> tuple[str, Identity] | None:
        """The agent identity whose names cover ``name`` (the first in file order)."""
        for key, ident in self.identities.items():
            if ident.kind in ("agent", "gateway") and ident.may_name(name):
                return key, ident
        return None

    def to_json(self) -> bytes:
        return orjson.dumps(self.model_dump(mode="json"))

    @classmethod
    def from_json(cls, data: bytes | str) -> Policy:
        return cls.model_validate_json(data)


def load_policy(path: str | Path) -> Policy:
    """Read and check a policy file; ``ConfigurationError`` says what is wrong."""
    p = Path(path)
    try:
        raw = tomllib.loads(p.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise ConfigurationError(f"cannot read the policy {str(p)!r}: {e}") from e
    try:
        return Policy.model_validate(raw)
    except ValidationError as e:
        raise ConfigurationError(f"invalid policy {str(p)!r}: {validation_summary(e)}") from e

"""Bearer tokens: who may read and who may write through the gateway.

A token belongs to a user and has a role: ``viewer`` (reads: agents, stats, dead letters, the
change feed, the sessions the user owns) or ``operator`` (everything, writes included: send,
request, replay, and every session). Tokens are random (``agb_`` + 43 URL-safe characters);
only their SHA-256 is stored, in the hash ``KeySpace.gateway_tokens()``: field = the hex
digest, value = JSON ``{"user", "role", "issued_at", "expires_at"}`` plus ``"tenant"`` when the
token names one. ``agentbus token issue`` prints a token once; it cannot be read back.

A token's **tenant** (``--tenant``) is whose sessions its user starts and reads: their activity
keys live under ``KeySpace.tenant_prefix(tenant)`` (docs/SECURITY.md, "Tenants"). Without one,
a user is its own tenant in acl mode and has none (the untenanted keys, as before) in off mode.

This module needs no web framework: the CLI uses it without the ``gateway`` extra's servers.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import orjson
import redis.asyncio as aioredis

from agent_sdk.connection import redis_errors
from agent_sdk.settings import Settings
from gateway.lanes import LanePool
from schemas.errors import InvalidInput
from schemas.names import check_identifier

__all__ = ["Principal", "Role", "TokenInfo", "TokenStore", "token_digest"]

_PREFIX = "agb_"


class Role(StrEnum):
    VIEWER = "viewer"
    OPERATOR = "operator"


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: a token's user and role (``anonymous`` in open mode, no tokens)."""

    user: str
    role: Role
    anonymous: bool = False
    #: The tenant named by the token (None: none named; see the module docstring).
    tenant: str | None = None

    @property
    def is_operator(self) -> bool:
        return self.role is Role.OPERATOR


@dataclass(frozen=True, slots=True)
class TokenInfo:
    """What is stored about one token (never the token itself)."""

    digest: str
    user: str
    role: Role
    issued_at: float
    expires_at: float | None
    tenant: str | None = None

    @property
    def id(self) -> str:
        """A short handle for listing and revoking: the digest's first 12 hex digits."""
        return self.digest[:12]

    def expired(self, now: float | None = None) -> bool:
        return self.expires_at is not None and (now or time.time()) >= self.expires_at

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "user": self.user,
            "role": self.role.value,
            "issued_at": self.issued_at,
            "expires_at": self.expires_at,
            "tenant": self.tenant,
        }


def token_digest(token: str) -> str:
    """The SHA-256 hex digest under which ``token`` is stored."""
    return hashlib.sha256(token.encode()).hexdigest()


def _decode(digest: str, raw: bytes | str) -> TokenInfo | None:
    try:
        data = orjson.loads(raw)
        return TokenInfo(
            digest=digest,
            user=str(data["user"]),
            role=Role(data["role"]),
            issued_at=float(data["issued_at"]),
            expires_at=None if data.get("expires_at") is None else float(data["expires_at"]),
            tenant=None if data.get("tenant") is None else str(data["tenant"]),
        )
    except (orjson.JSONDecodeError, KeyError, ValueError, TypeError):
        return None


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class TokenStore:
    """Issues, checks, lists and revokes tokens in one namespace.

    ``lanes``: the per-request checks (``lookup``, ``any``) go over raw lanes (the gateway's),
    which saves redis-py's connection checkout on a call made for every request.
    """

    def __init__(
        self, client: aioredis.Redis, settings: Settings, lanes: LanePool | None = None
    ) -> None:
        self._client = client
        self._settings = settings
        self._lanes = lanes
        self._key = settings.keys.gateway_tokens()

    async def _on_lane(self, *command: str) -> Any:
        assert self._lanes is not None
        (reply,) = await self._lanes.execute([command])
        if isinstance(reply, Exception):
            raise reply
        return reply

    async def issue(
        self, user: str, role: Role | str, ttl: float | None = None, *, tenant: str | None = None
    ) -> str:
        """A new token for ``user`` with ``role``, valid ``ttl`` seconds (``None``: forever),
        acting for ``tenant`` (``None``: see the module docstring)."""
        try:
            check_identifier(user, "user")
            if tenant is not None:
                check_identifier(tenant, "tenant")
        except ValueError as e:
            raise InvalidInput(str(e)) from e
        try:
            kind = Role(role)
        except ValueError as e:
            raise InvalidInput(f"role must be viewer or operator, not {role!r}") from e
        if ttl is not None and ttl <= 0:
            raise InvalidInput(f"ttl must be positive, got {ttl}")
        token = _PREFIX + secrets.token_urlsafe(32)
        now = time.time()
        value: dict[str, Any] = {
            "user": user,
            "role": kind.value,
            "issued_at": round(now, 3),
            "expires_at": None if ttl is None else round(now + ttl, 3),
        }
        if tenant is not None:
            value["tenant"] = tenant
        with redis_errors(self._settings, "storing a gateway token"):
            await self._client.hset(self._key, token_digest(token), orjson.dumps(value))
        return token

    async def lookup(self, token: str) -> TokenInfo | None:
        """The stored info of ``token`` (expired ones included), or ``None``."""
        if not token.startswith(_PREFIX) or len(token) > 128:
            return None
        digest = token_digest(token)
        with redis_errors(self._settings, "checking a gateway token"):
            raw: Any = (
                await self._client.hget(self._key, digest)
                if self._lanes is None
                else await self._on_lane("HGET", self._key, digest)
            )
        return None if raw is None else _decode(digest, raw)

    async def any(self) -> bool:
        """Whether any token was issued (without tokens the gateway is open, on loopback)."""
        with redis_errors(self._settings, "checking for gateway tokens"):
            if self._lanes is None:
                return bool(await self._client.exists(self._key))
            return bool(await self._on_lane("EXISTS", self._key))

    async def list(self) -> list[TokenInfo]:
        with redis_errors(self._settings, "listing gateway tokens"):
            raw: dict[Any, Any] = await self._client.hgetall(self._key)
        found = [_decode(_text(k), v) for k, v in raw.items()]
        return sorted((t for t in found if t is not None), key=lambda t: (t.user, t.issued_at))

    async def revoke(self, *, token_id: str | None = None, user: str | None = None) -> int:
        """Delete the tokens whose id (digest prefix) is ``token_id``, or all of ``user``'s."""
        if (token_id is None) == (user is None):
            raise InvalidInput("revoke takes a token id or a user (one of them)")
        if token_id is not None and len(token_id) < 8:
            raise InvalidInput("a token id has at least 8 hex digits (`agentbus token list`)")
        chosen = [
            t.digest
            for t in await self.list()
            if (token_id is not None and t.digest.startswith(token_id.lower()))
            or (user is not None and t.user == user)
        ]
        if not chosen:
            return 0
        with redis_errors(self._settings, "revoking gateway tokens"):
            return int(await self._client.hdel(self._key, *chosen))

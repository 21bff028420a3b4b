"""A bus in both modes for the attack suite: ``off`` (one shared credential, as before) and
``acl`` (a Redis ACL user per identity made from a policy by ``agentbus acl``'s code).

Every attack test takes ``world`` (parametrised over both modes) and asserts the outcome the
docs/SECURITY.md table gives for that mode: the attack works on ``off`` (the documented
weakness) and is refused or detected on ``acl``.
"""

from __future__ import annotations

import secrets
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from pydantic import SecretStr

from agent_sdk import Agent
from agent_sdk.embedded import RedisServer
from agent_sdk.settings import Settings
from coordinator import Coordinator, CoordinatorSettings
from coordinator.acl.apply import acl_command, apply_plan, make_plan
from coordinator.acl.policy import Policy
from schemas.keys import KeySpace

#: The identities of the test policy: two agents, an attacker, a host, the trusted ones.
#: Tenants: alice acts for ``acme``, bob for ``globex``, mallory for ``evil-*`` tenants; the
#: gateway serves ``acme`` and ``globex`` (not ``initech``).
POLICY: dict[str, Any] = {
    "alice": {"names": ["alice"], "roles": ["worker"], "subscribe": ["news.*"],
              "publish": ["news.*"], "broadcast": True, "tenants": ["acme"]},
    "bob": {"names": ["bob"], "roles": ["worker"], "subscribe": ["news.*"],
            "tenants": ["globex"]},
    "mallory": {"names": ["mallory", "m-*"], "roles": ["worker"], "max_agents": 3,
                "subscribe": ["news.*"], "publish": ["news.*"], "broadcast": True,
                "tenants": ["evil-*"]},
    "gateway": {"kind": "gateway", "names": ["client-*"], "tenants": ["acme", "globex"]},
    "coordinator": {"kind": "coordinator"},
    "operator": {"kind": "operator"},
}  # fmt: skip


@dataclass
class World:
    """One namespace in one mode: settings per identity, and raw clients to attack with."""

    mode: str
    keys: KeySpace
    base: Settings
    admin: aioredis.Redis
    passwords: dict[str, str] = field(default_factory=dict)
    users: dict[str, str] = field(default_factory=dict)
    clients: list[aioredis.Redis] = field(default_factory=list)

    @property
    def secure(self) -> bool:
        return self.mode == "acl"

    def settings(self, identity: str, **overrides: Any) -> Settings:
        if not self.secure:
            return self.base.model_copy(update=overrides)
        return self.base.model_copy(
            update={
                "security": "acl",
                "redis_username": self.users[identity],
                "redis_password": SecretStr(self.passwords[identity]),
                **overrides,
            }
        )

    def coordinator_settings(self) -> CoordinatorSettings:
        return CoordinatorSettings(
            **self.settings("coordinator").model_dump(),
            coordinator_id=f"sec-{uuid.uuid4().hex[:8]}",
            sweep_interval=0.02, stall_threshold=0.3, claim_idle=0.5, health_interval=0.2,
            read_block=0.5, drain_timeout=5.0,
        )  # fmt: skip

    async def raw(self, identity: str) -> aioredis.Redis:
        """A plain redis-py client as ``identity`` (the attacker's tool)."""
        s = self.settings(identity)
        client = aioredis.Redis(
            port=int(s.url.rsplit(":", 1)[1].split("/")[0]),
            username=s.redis_username, password=s.password(), decode_responses=True,
        )  # fmt: skip
        self.clients.append(client)
        return client

    @asynccontextmanager
    async def agent(self, identity: str, name: str, role: str = "worker", **kw: Any
                    ) -> AsyncIterator[Agent]:  # fmt: skip
        async with Agent(name, role, settings=self.settings(identity), **kw) as a:
            yield a


@pytest.fixture(params=["off", "acl"])
async def world(
    request: pytest.FixtureRequest, redis_server: RedisServer, settings: Settings, tmp_path: Path
) -> AsyncIterator[World]:
    admin = aioredis.Redis(port=redis_server.port, decode_responses=True)
    w = World(request.param, settings.keys, settings, admin)
    prefix = f"{settings.namespace}-"
    if w.secure:
        policy = Policy.model_validate({"user_prefix": prefix, "identities": POLICY})
        for ident in policy.identities:
            w.users[ident] = policy.user(ident)
            w.passwords[ident] = secrets.token_urlsafe(16)
            (tmp_path / ident).write_text(w.passwords[ident] + "\n")
        with_files = Policy.model_validate({
            "user_prefix": prefix,
            "identities": {k: {**v, "password_file": k} for k, v in POLICY.items()},
        })  # fmt: skip
        plan = await make_plan(admin, with_files, settings.keys, tmp_path)
        await apply_plan(admin, plan, with_files, settings.keys)
    try:
        yield w
    finally:
        for c in w.clients:
            await c.aclose()
        for user in w.users.values():
            await acl_command(admin, "ACL", "DELUSER", user)
        await admin.aclose()


@pytest.fixture
async def coord(world: World) -> AsyncIterator[Coordinator]:
    async with Coordinator(world.coordinator_settings()) as c:
        yield c

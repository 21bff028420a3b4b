"""Redis ACL users for a bench's identities: a policy applied to a private Redis, and the
``Settings`` each identity connects with (acl mode, its own user and password)."""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
from pydantic import SecretStr

from agent_sdk.settings import Settings
from coordinator.acl.apply import apply_plan, make_plan
from coordinator.acl.policy import Policy

__all__ = ["acl_users"]


async def acl_users(
    admin: aioredis.Redis,
    identities: Mapping[str, Mapping[str, Any]],
    ns: str,
    base: Settings,
    tmp: Path,
) -> dict[str, Settings]:
    """Apply a policy of ``identities`` (users named ``<ns>-<identity>``, passwords in files
    under ``tmp``) with ``admin``; the settings of each identity, by name."""
    ids = {k: {**v, "password_file": k} for k, v in identities.items()}
    for k in ids:
        (tmp / k).write_text(secrets.token_urlsafe(16) + "\n")
    policy = Policy.model_validate({"user_prefix": f"{ns}-", "identities": ids})
    await apply_plan(admin, await make_plan(admin, policy, base.keys, tmp), policy, base.keys)
    return {
        k: base.model_copy(
            update={
                "security": "acl",
                "redis_username": policy.user(k),
                "redis_password": SecretStr((tmp / k).read_text().strip()),
            }
        )
        for k in ids
    }

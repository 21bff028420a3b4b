"""``agentbus acl``: the plan is a diff, applying is idempotent, and passwords rotate."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis.asyncio as aioredis
from click.testing import CliRunner
from redis.exceptions import AuthenticationError

from agent_sdk.embedded import RedisServer
from agent_sdk.settings import Settings
from coordinator.acl.apply import acl_command, apply_plan, make_plan
from coordinator.acl.policy import Policy
from coordinator.cli.main import cli


async def test_plan_apply_and_rotate(
    redis_server: RedisServer, settings: Settings, r: aioredis.Redis, tmp_path: Path
) -> None:
    prefix = f"{settings.namespace}-"
    policy = Policy.model_validate({
        "user_prefix": prefix,
        "identities": {"w": {"names": ["w-*"], "roles": ["r"], "password_file": "pw/w"}},
    })  # fmt: skip
    user = policy.user("w")
    try:
        plan = await make_plan(r, policy, settings.keys, tmp_path, generate=True)
        assert [c.user for c in plan.pending] == [user]
        assert "new" in plan.render()
        first = (tmp_path / "pw" / "w").read_text().strip()
        assert (tmp_path / "pw" / "w").stat().st_mode & 0o777 == 0o600
        await apply_plan(r, plan, policy, settings.keys)
        assert (await make_plan(r, policy, settings.keys, tmp_path)).pending == []
        assert await r.get(settings.keys.policy()) is not None
        # rotation: a new password is added, the old one keeps working until dropped
        (tmp_path / "pw" / "w").write_text("second-password\n")
        plan = await make_plan(r, policy, settings.keys, tmp_path)
        assert plan.pending[0].new_password
        await apply_plan(r, plan, policy, settings.keys)
        for pw in (first, "second-password"):
            c = aioredis.Redis(port=redis_server.port, username=user, password=pw)
            assert await c.ping()
            await c.aclose()
        await apply_plan(r, plan, policy, settings.keys, drop_old=True)
        c = aioredis.Redis(port=redis_server.port, username=user, password=first)
        try:
            with pytest.raises(AuthenticationError):
                await c.ping()
        finally:
            await c.aclose()
    finally:
        await acl_command(r, "ACL", "DELUSER", user)


def test_cli_shows_the_diff(redis_server: RedisServer, settings: Settings, tmp_path: Path) -> None:
    policy = tmp_path / "policy.toml"
    prefix = f"{settings.namespace}-cli-"
    policy.write_text(f'user_prefix = "{prefix}"\n[identities.a]\nnames = ["a"]\n')
    result = CliRunner().invoke(
        cli, ["--redis-url", redis_server.url, "--namespace", settings.namespace, "acl",
              str(policy)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert f"+ user {prefix}a: new" in result.output
    assert "run with --apply" in result.output

"""``agentbus acl``: turn a policy file into Redis ACL users (``show`` the diff, ``--apply``)."""

from __future__ import annotations

from pathlib import Path

import click

from agent_sdk.connection import make_client, redis_errors
from coordinator.acl.apply import acl_command, apply_plan, make_plan
from coordinator.acl.policy import load_policy
from coordinator.cli.base import CliState, pass_state, run_async

__all__ = ["acl"]


@click.command(short_help="Make Redis ACL users from a policy file (diff; --apply).")
@click.argument("policy_file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--apply", "do_apply", is_flag=True, help="Apply the changes (else only show).")
@click.option(
    "--generate",
    is_flag=True,
    help="Write a random password (mode 0600) for each identity whose password_file is missing.",
)
@click.option(
    "--drop-old-passwords",
    is_flag=True,
    help="With --apply: keep only each user's current password (after a rotation).",
)
@pass_state
def acl(
    state: CliState, policy_file: Path, do_apply: bool, generate: bool, drop_old_passwords: bool
) -> None:
    """Show what POLICY_FILE changes in Redis's ACL users; --apply makes it so.

    Connect as an administrator (AGENTBUS_REDIS_USERNAME / AGENTBUS_REDIS_PASSWORD_FILE). The
    policy is stored in the namespace for the coordinator. Rotating a password: write the new
    one to the identity's password_file, --apply (both work), restart its processes, then
    --apply --drop-old-passwords. See docs/SECURITY.md.
    """
    policy = load_policy(policy_file)
    settings = state.settings()

    async def go() -> str:
        client = make_client(settings)
        try:
            with redis_errors(settings, "reading the ACL users"):
                plan = await make_plan(
                    client, policy, settings.keys, policy_file.parent, generate=generate
                )
                text = plan.render()
                if do_apply:
                    n = await apply_plan(
                        client, plan, policy, settings.keys, drop_old=drop_old_passwords
                    )
                    text += f"\napplied: {n} user(s) changed; policy stored in the namespace"
                elif plan.pending:
                    text += f"\n{len(plan.pending)} user(s) would change: run with --apply"
            default: object = await acl_command(client, "ACL", "GETUSER", "default")
            if default and b"on" in str(default).encode():
                text += _default_user_warning(default)
            return text
        finally:
            await client.aclose()

    click.echo(run_async(go))


def _default_user_warning(info: object) -> str:
    flat = str(info)
    if "nopass" in flat and "'on'" in flat:
        return (
            "\nWARNING: Redis's 'default' user is on without a password: anyone who can reach "
            "Redis bypasses every rule (ACL SETUSER default off)"
        )
    return ""

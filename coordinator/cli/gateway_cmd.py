"""``agentbus gateway``: serve the HTTP API, live streams, metrics and dashboard;
``agentbus token issue | list | revoke``: the gateway's bearer tokens.

The gateway package is imported only when one of these runs: it needs the ``gateway`` extra
(``pip install 'agentbus[gateway]'``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import click

from coordinator.cli.base import CliState, console, dumps, pass_state, run_async
from coordinator.cli.reach import reach
from coordinator.cli.render import Column, fitted_table
from schemas.errors import ConfigurationError, InvalidInput

if TYPE_CHECKING:
    from gateway.settings import GatewaySettings

__all__ = ["gateway", "token"]

_MISSING = (
    "the gateway needs its extra: pip install 'agentbus[gateway]' "
    "(FastAPI, uvicorn, prometheus-client)"
)


def _settings(state: CliState, **overrides: Any) -> GatewaySettings:
    try:
        from gateway.settings import GatewaySettings
    except ImportError as e:  # pragma: no cover - the test extra includes the gateway's
        raise ConfigurationError(_MISSING) from e
    try:
        settings = GatewaySettings.load(
            redis_url=state.redis_url, namespace=state.namespace, **overrides
        )
    except ConfigurationError as e:
        raise InvalidInput(e.description, code=e.code) from e
    assert isinstance(settings, GatewaySettings)
    reach(settings, given=state.redis_url is not None)
    return settings


@click.command(short_help="Serve the HTTP API, live streams, metrics and dashboard.")
@click.option(
    "--host",
    envvar="AGENTBUS_GATEWAY_HOST",
    show_envvar=True,
    default=None,
    help="Address to listen on [default: 127.0.0.1]. Without any token issued: 127.0.0.1 only.",
)
@click.option(
    "--port",
    envvar="AGENTBUS_GATEWAY_PORT",
    show_envvar=True,
    type=click.IntRange(0, 65535),
    default=None,
    help="Port [default: 8080; 0: any free port].",
)
@pass_state
def gateway(state: CliState, host: str | None, port: int | None) -> None:
    """Serve the registry, messaging and live event streams over HTTP (docs/GATEWAY.md).

    Prints the dashboard's URL; SIGINT or SIGTERM stops it.
    """
    settings = _settings(state, gateway_host=host, gateway_port=port)
    try:
        from gateway.server import serve
    except ImportError as e:  # pragma: no cover - the test extra includes the gateway's
        raise ConfigurationError(_MISSING) from e
    run_async(lambda: serve(settings, say=lambda line: click.echo(line)))


@click.group(short_help="Issue, list and revoke the gateway's bearer tokens.")
def token() -> None:
    """Bearer tokens for the gateway: a user and a role (viewer reads; operator also writes).

    Only a token's SHA-256 is stored in Redis: a token is printed once, when issued.
    """


@token.command("issue", short_help="Issue a token and print it (once).")
@click.option("--user", required=True, help="Who the token is for.")
@click.option(
    "--role",
    type=click.Choice(["viewer", "operator"]),
    default="viewer",
    show_default=True,
    help="viewer: reads; operator: reads and writes (send, request, replay).",
)
@click.option("--ttl", type=click.FloatRange(min=0, min_open=True), help="Valid for SECONDS.")
@click.option(
    "--tenant",
    default=None,
    help="Whose sessions the user starts and reads [default: none; in acl mode, the user].",
)
@pass_state
def issue(state: CliState, user: str, role: str, ttl: float | None, tenant: str | None) -> None:
    """Issue a token for USER with ROLE and print it on stdout (nothing else)."""
    settings = _settings(state)
    from agent_sdk.bus import Bus
    from gateway.tokens import TokenStore

    async def go() -> str:
        async with Bus(settings) as bus:
            return await TokenStore(bus.client, settings).issue(user, role, ttl, tenant=tenant)

    click.echo(run_async(go))


@token.command("list", short_help="List tokens (id, user, role, expiry).")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array.")
@pass_state
def list_(state: CliState, as_json: bool) -> None:
    """List the issued tokens (never the tokens themselves: their ids)."""
    settings = _settings(state)
    from agent_sdk.bus import Bus
    from gateway.tokens import TokenInfo, TokenStore

    async def go() -> list[TokenInfo]:
        async with Bus(settings) as bus:
            return await TokenStore(bus.client, settings).list()

    found = run_async(go)
    if as_json:
        click.echo(dumps([t.as_dict() for t in found], pretty=True))
        return
    out = console()
    if not found:
        out.print(f"no tokens in namespace {settings.namespace}: the gateway is local-only")
        return
    columns = [
        Column("id", [t.id for t in found], 0),
        Column("user", [t.user for t in found], 0),
        Column("role", [t.role.value for t in found], 1),
        Column("tenant", [t.tenant or "-" for t in found], 3),
        Column("expires", [_when(t.expires_at) for t in found], 2),
    ]
    out.print(fitted_table(columns, out.width))


def _when(ts: float | None) -> str:
    if ts is None:
        return "never"
    from datetime import UTC, datetime

    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


@token.command("revoke", short_help="Revoke a token by id, or all of a user's.")
@click.argument("token_id", required=False, metavar="[ID]")
@click.option("--user", default=None, help="Revoke every token of this user.")
@pass_state
def revoke(state: CliState, token_id: str | None, user: str | None) -> None:
    """Revoke the token ID (as `agentbus token list` shows it), or every token of --user."""
    if (token_id is None) == (user is None):
        raise click.UsageError("give a token ID or --user (one of them)")
    settings = _settings(state)
    from agent_sdk.bus import Bus
    from gateway.tokens import TokenStore

    async def go() -> int:
        async with Bus(settings) as bus:
            return await TokenStore(bus.client, settings).revoke(token_id=token_id, user=user)

    click.echo(f"revoked {run_async(go)} token(s)")

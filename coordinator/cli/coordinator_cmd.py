"""``agentbus coordinator``: run the daemon; ``agentbus coordinator check``: is one healthy?"""

from __future__ import annotations

import click

from agent_sdk.connection import make_client
from coordinator.cli.base import CliState, pass_state, run_async
from coordinator.health import check as health_check
from coordinator.lag import ControlLag, control_lag
from coordinator.settings import CoordinatorSettings
from coordinator.telemetry_setup import ENV_VAR, EXPORTERS, configure_telemetry

__all__ = ["coordinator"]


@click.group(
    invoke_without_command=True, short_help="Run the coordinator daemon (`check`: healthy?)."
)
@click.option(
    "--otel",
    type=click.Choice(EXPORTERS),
    envvar=ENV_VAR,
    show_envvar=True,
    default=None,
    help="Export OpenTelemetry spans and metrics: console (stdout) or otlp (OTEL_EXPORTER_OTLP_* "
    "variables); default none. Needs agentbus[otel].",
)
@pass_state
@click.pass_context
def coordinator(ctx: click.Context, state: CliState, otel: str | None) -> None:
    """Run the coordinator daemon against --redis-url (SIGTERM drains, a second one exits).

    Its settings come from AGENTBUS_* variables (see the README's configuration table).
    """
    if ctx.invoked_subcommand is not None:
        return
    from coordinator.daemon import run_daemon  # the daemon's imports only when it runs

    settings = state.coordinator_settings()
    exporting = configure_telemetry(otel, instance_id=settings.coordinator_id)
    try:
        code = run_daemon(settings)
    finally:
        exporting.shutdown()
    raise SystemExit(code)


@coordinator.command(short_help="Exit 0 if a coordinator is healthy and keeps up, else 1.")
@click.option("--id", "coordinator_id", default=None, help="Check this coordinator only.")
@click.option(
    "--max-lag",
    type=click.IntRange(min=1),
    default=None,
    help="Fail when more control entries than this wait unread [AGENTBUS_CONTROL_LAG_MAX; "
    "default 10000].",
)
@click.option("--quiet", "-q", is_flag=True, help="Print nothing; the exit status says it.")
@pass_state
def check(state: CliState, coordinator_id: str | None, max_lag: int | None, quiet: bool) -> None:
    """Exit 0 if a coordinator's health key is fresh and the control stream's lag is at most
    --max-lag, else 1 (for healthchecks)."""
    # No reconnect retries: a healthcheck must answer quickly when Redis is down.
    settings = state.coordinator_settings(retry_attempts=0, control_lag_max=max_lag)
    healthy = run_async(lambda: health_check(settings, coordinator_id=coordinator_id))
    lag = run_async(lambda: _lag(settings)) if healthy else None
    behind = lag is not None and lag.entries > settings.control_lag_max
    ok = healthy and not behind
    if not quiet:
        who = f"coordinator {coordinator_id}" if coordinator_id else "a coordinator"
        status = "healthy" if healthy else "NOT healthy"
        if behind:
            status = f"alive but NOT keeping up (over --max-lag {settings.control_lag_max})"
        line = f"{who} on {settings.display_url} (namespace {settings.namespace}): {status}"
        if lag is not None:
            line += f"; {lag.describe()}"
        click.echo(line, err=not ok)
    raise SystemExit(0 if ok else 1)


async def _lag(settings: CoordinatorSettings) -> ControlLag:
    client = make_client(settings)
    try:
        return await control_lag(client, settings)
    finally:
        await client.aclose()

"""``agentbus coordinator``: run the daemon; ``agentbus coordinator check``: is one healthy?"""

from __future__ import annotations

import click

from coordinator.cli.base import CliState, pass_state, run_async
from coordinator.health import check as health_check
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


@coordinator.command(short_help="Exit 0 if a coordinator is healthy, else 1.")
@click.option("--id", "coordinator_id", default=None, help="Check this coordinator only.")
@click.option("--quiet", "-q", is_flag=True, help="Print nothing; the exit status says it.")
@pass_state
def check(state: CliState, coordinator_id: str | None, quiet: bool) -> None:
    """Exit 0 if a coordinator's health key is fresh, else 1 (for healthchecks)."""
    # No reconnect retries: a healthcheck must answer quickly when Redis is down.
    settings = state.coordinator_settings(retry_attempts=0)
    healthy = run_async(lambda: health_check(settings, coordinator_id=coordinator_id))
    if not quiet:
        who = f"coordinator {coordinator_id}" if coordinator_id else "a coordinator"
        status = "healthy" if healthy else "NOT healthy"
        click.echo(
            f"{who} on {settings.display_url} (namespace {settings.namespace}): {status}",
            err=not healthy,
        )
    raise SystemExit(0 if healthy else 1)

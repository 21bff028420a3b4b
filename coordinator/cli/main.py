"""The ``agentbus`` command: one click group; each verb lives in its own module."""

from __future__ import annotations

import click

from coordinator.cli.acl_cmd import acl
from coordinator.cli.agents import agents
from coordinator.cli.base import AgentbusGroup, CliState, setup_logging
from coordinator.cli.conformance_cmd import conformance
from coordinator.cli.coordinator_cmd import coordinator
from coordinator.cli.deadletter import deadletter
from coordinator.cli.demo import demo
from coordinator.cli.gateway_cmd import gateway, token
from coordinator.cli.messages import broadcast, publish, request, send, subscribe
from coordinator.cli.new_cmd import new
from coordinator.cli.plugins_cmd import plugins
from coordinator.cli.reach import UP_URL
from coordinator.cli.run_cmd import run
from coordinator.cli.stats_cmd import stats
from coordinator.cli.tasks_cmd import tasks
from coordinator.cli.up import up
from coordinator.cli.watch_cmd import watch

__all__ = ["cli", "main"]


@click.group(cls=AgentbusGroup, context_settings={"auto_envvar_prefix": "AGENTBUS"})
@click.version_option(package_name="agentbus")
@click.option(
    "--redis-url",
    envvar="AGENTBUS_REDIS_URL",
    show_envvar=True,
    help="Redis the bus lives on [default: redis://127.0.0.1:6379/0, Redis's own port; "
    f"`agentbus up` serves a bus at {UP_URL} and prints the line to export].",
)
@click.option(
    "--namespace",
    envvar="AGENTBUS_NAMESPACE",
    show_envvar=True,
    help="Prefix of every key (default agentbus): several buses can share one Redis.",
)
@click.option(
    "--log-level",
    envvar="AGENTBUS_LOG_LEVEL",
    show_envvar=True,
    type=click.Choice(["debug", "info", "warning", "error"], case_sensitive=False),
    default="warning",
    show_default=True,
    help="Log level (logs go to stderr).",
)
@click.pass_context
def cli(ctx: click.Context, redis_url: str | None, namespace: str | None, log_level: str) -> None:
    """agentbus: a registry and message bus for fleets of software agents, on Redis."""
    setup_logging(log_level)
    ctx.obj = CliState(redis_url=redis_url, namespace=namespace)


cli.add_command(up)
cli.add_command(demo)
cli.add_command(coordinator)
cli.add_command(run)
cli.add_command(new)
cli.add_command(plugins)
cli.add_command(agents)
for command in (send, request, broadcast, publish, subscribe, deadletter):
    cli.add_command(command)
cli.add_command(watch)
cli.add_command(stats)
cli.add_command(tasks)
cli.add_command(conformance)
cli.add_command(gateway)
cli.add_command(token)
cli.add_command(acl)


def main() -> None:
    """Console-script entry point (``agentbus``)."""
    cli(prog_name="agentbus")

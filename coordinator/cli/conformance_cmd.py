"""``agentbus conformance NAME``: check a live agent of any language against docs/PROTOCOL.md.

A thin wrapper of ``coordinator.conformance``: one line per check (PASS, FAIL with the reason,
INFO, SKIP), a summary line, exit status 0 only if no check failed.
"""

from __future__ import annotations

import sys

import click

from coordinator.cli.base import EXIT_ERROR, CliState, json_payload, pass_state, run_async
from coordinator.conformance import (
    DEFAULT_PAYLOAD,
    DEFAULT_TYPE,
    ConformanceOptions,
    Report,
    run_conformance,
    shell_action,
    spawn_action,
)
from schemas.agent import AgentRecord

__all__ = ["conformance"]

_COMMANDS = "{pid}, {name} and {instance_id} are replaced from the agent's record."


@click.command(short_help="Check a live agent (any language) against the protocol.")
@click.argument("name")
@click.option(
    "--type",
    "type_",
    default=DEFAULT_TYPE,
    show_default=True,
    help="A request type the agent answers (an echo handler).",
)
@click.option("--payload", help="The request's JSON payload [default: a small JSON object].")
@click.option("--no-echo", is_flag=True, help="Do not expect the payload back in the reply.")
@click.option(
    "--timeout",
    type=click.FloatRange(min=0.1),
    default=5.0,
    show_default=True,
    help="Seconds to wait for each reply.",
)
@click.option(
    "--wait",
    type=click.FloatRange(min=0),
    default=5.0,
    show_default=True,
    help="Seconds to wait for the agent to be registered and ready.",
)
@click.option(
    "--lifecycle", is_flag=True, help="Check draining and leave: you stop the agent when asked."
)
@click.option(
    "--stop-command",
    metavar="CMD",
    help=f"Shell command that stops the agent (implies --lifecycle). {_COMMANDS}",
)
@click.option(
    "--kill-command",
    metavar="CMD",
    help=f"Shell command that kills the agent, e.g. 'kill -KILL {{pid}}'. {_COMMANDS}",
)
@click.option(
    "--start-command",
    metavar="CMD",
    help="Shell command that starts the agent again (run in the background).",
)
@pass_state
def conformance(
    state: CliState,
    name: str,
    type_: str,
    payload: str | None,
    no_echo: bool,
    timeout: float,
    wait: float,
    lifecycle: bool,
    stop_command: str | None,
    kill_command: str | None,
    start_command: str | None,
) -> None:
    """Check that the live agent NAME (any language) follows the wire protocol.

    Prints one line per check and exits 0 only if none failed. Without process control the
    agent stays up; --kill-command with --start-command also checks redelivery after a crash,
    and --stop-command (or --lifecycle) a clean stop, last.
    """
    if (kill_command is None) != (start_command is None):
        raise click.UsageError("--kill-command and --start-command go together")
    value = json_payload(payload) if payload is not None else dict(DEFAULT_PAYLOAD)
    options = ConformanceOptions(
        type=type_,
        payload=value,
        echo=not no_echo,
        timeout=timeout,
        wait=wait,
        stop=shell_action(stop_command) if stop_command else (_ask if lifecycle else None),
        kill=shell_action(kill_command) if kill_command else None,
        start=spawn_action(start_command) if start_command else None,
    )
    settings = state.settings()

    async def go() -> Report:
        return await run_conformance(settings, name, options)

    report = run_async(go)
    for line in report.lines():
        click.echo(line)
    click.echo(report.summary())
    if not report.ok:
        sys.exit(EXIT_ERROR)


async def _ask(record: AgentRecord) -> None:
    """``--lifecycle`` without a command: the operator stops the agent."""
    pid = f" (pid {record.pid})" if record.pid is not None else ""
    click.echo(
        f"stop {record.name}{pid} now, as it is normally stopped (SIGTERM, Ctrl-C): waiting for "
        "it to leave",
        err=True,
    )

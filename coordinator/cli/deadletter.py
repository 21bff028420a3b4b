"""``agentbus deadletter list | replay``: inspect and retry messages that could not be handled."""

from __future__ import annotations

import click
from rich.table import Table

from agent_sdk.bus import Bus
from agent_sdk.messaging import DeadLetter, list_dead_letters, replay
from coordinator.cli.base import CliState, console, dumps, pass_state, run_async

__all__ = ["deadletter"]


@click.group()
def deadletter() -> None:
    """Dead letters: undecodable, invalid or too-often-failed messages, with the reason."""


def _letter_json(letter: DeadLetter) -> dict[str, object]:
    return {
        "id": letter.id,
        "reason": letter.reason,
        "code": letter.code,
        "source": letter.source,
        "source_id": letter.source_id,
        "failed_at": letter.failed_at,
        "type": letter.type,
        "original": letter.original,
    }


@deadletter.command("list")
@click.option("--count", "-n", type=click.IntRange(min=1), default=100, show_default=True)
@click.option("--oldest-first", is_flag=True, help="Oldest first (default: newest first).")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array.")
@pass_state
def list_(state: CliState, count: int, oldest_first: bool, as_json: bool) -> None:
    """List dead letters (id, when, code, reason, source stream, message type)."""
    settings = state.settings()

    async def go() -> list[DeadLetter]:
        async with Bus(settings) as bus:
            return await list_dead_letters(
                bus.client, settings, count=count, newest_first=not oldest_first
            )

    letters = run_async(go)
    if as_json:
        click.echo(dumps([_letter_json(d) for d in letters], pretty=True))
        return
    out = console()
    if not letters:
        out.print(f"no dead letters in namespace {settings.namespace}")
        return
    table = Table(header_style="bold")
    for column in ("id", "failed at", "code", "reason", "source", "type"):
        table.add_column(column, overflow="fold")
    for d in letters:
        table.add_row(d.id, d.failed_at, d.code, d.reason, d.source, d.type or "-")
    out.print(table)


@deadletter.command("replay")
@click.argument("ids", nargs=-1, metavar="ID...")
@click.option("--all", "replay_all", is_flag=True, help="Replay every dead letter.")
@pass_state
def replay_(state: CliState, ids: tuple[str, ...], replay_all: bool) -> None:
    """Put dead letters back on the stream they came from (and delete them here)."""
    if bool(ids) == replay_all:
        raise click.UsageError("give dead letter IDs or --all (not both)")
    settings = state.settings()

    async def go() -> list[tuple[str, str]]:
        async with Bus(settings) as bus:
            chosen = list(ids)
            if replay_all:
                letters = await list_dead_letters(
                    bus.client, settings, count=1_000_000, newest_first=False
                )
                chosen = [d.id for d in letters]
            return [(i, await replay(bus.client, settings, i)) for i in chosen]

    done = run_async(go)
    for old, new in done:
        click.echo(f"replayed {old} as {new}")
    if not done:
        click.echo("nothing to replay")

"""``agentbus deadletter list | show | replay``: inspect and retry messages that could not be
handled."""

from __future__ import annotations

from typing import Any

import click
from rich.table import Table
from rich.text import Text

from agent_sdk.bus import Bus
from agent_sdk.connection import redis_errors
from agent_sdk.messaging import DeadLetter, list_dead_letters, replay
from agent_sdk.settings import Settings
from coordinator.cli.base import (
    EXIT_ERROR,
    CliState,
    console,
    dumps,
    pass_state,
    run_async,
    stream_ids,
)
from coordinator.cli.render import Column, fitted_table
from schemas.errors import InvalidInput

__all__ = ["deadletter"]


@click.group(short_help="List and replay messages that failed.")
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


@deadletter.command("list", short_help="List dead letters, newest first.")
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
    out.print(letters_table(letters, out.width))


def letters_table(letters: list[DeadLetter], width: int) -> Table:
    """One row per dead letter; the id never wraps (it is what ``show``/``replay`` take)."""
    what = []
    for d in letters:
        text = Text(d.type or "-", style="bold")
        text.append(f" from {d.source}: {d.reason}")
        what.append(text)
    columns = [
        Column("id", [d.id for d in letters], 0),
        Column("code / failed at (UTC)", [f"{d.code}\n{_when(d.failed_at)}" for d in letters], 1),
        Column("type, source: reason", what, 2, fold=True),
    ]
    return fitted_table(columns, width, note="`agentbus deadletter show ID` has every field")


def _when(failed_at: str) -> str:
    """``2026-11-21T10:00:00.123Z`` as ``2026-11-21 10:00:00``."""
    return failed_at[:19].replace("T", " ")


@deadletter.command("show", short_help="Every field of one dead letter.")
@click.argument("letter_id", metavar="ID", callback=stream_ids)
@click.option("--json", "as_json", is_flag=True, help="Print it as JSON.")
@pass_state
def show(state: CliState, letter_id: str, as_json: bool) -> None:
    """Every field of one dead letter, the original message's included."""
    settings = state.settings()
    letter = run_async(lambda: _fetch_one(settings, letter_id))
    if as_json:
        click.echo(dumps(_letter_json(letter), pretty=True))
        return
    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column("field", style="bold", no_wrap=True)
    table.add_column("value", overflow="fold")
    for key, value in _letter_json(letter).items():
        if key != "original":
            table.add_row(key, Text(str(value if value is not None else "-")))
    for key, value in letter.original.items():
        table.add_row(f"orig.{key}", Text(value))
    console().print(table)


async def _fetch_one(settings: Settings, letter_id: str) -> DeadLetter:
    async with Bus(settings) as bus:
        with redis_errors(settings, "reading a dead letter"):
            found: Any = await bus.client.xrange(
                settings.keys.deadletter(), min=letter_id, max=letter_id, count=1
            )
    if not found:
        raise InvalidInput(
            f"no dead letter {letter_id!r} in namespace {settings.namespace} "
            "(`agentbus deadletter list` shows their ids)"
        )
    raw_id, fields = found[0]
    return DeadLetter.from_entry(raw_id.decode() if isinstance(raw_id, bytes) else raw_id, fields)


@deadletter.command("replay", short_help="Put dead letters back on their stream.")
@click.argument("ids", nargs=-1, metavar="ID...", callback=stream_ids)
@click.option("--all", "replay_all", is_flag=True, help="Replay every dead letter.")
@pass_state
def replay_(state: CliState, ids: tuple[str, ...], replay_all: bool) -> None:
    """Put dead letters back on the stream they came from (and delete them here)."""
    if bool(ids) == replay_all:
        raise click.UsageError("give dead letter IDs or --all (not both)")
    settings = state.settings()

    skipped: list[str] = []

    async def go() -> list[tuple[str, str]]:
        async with Bus(settings) as bus:
            chosen = list(ids)
            if replay_all:
                letters = await list_dead_letters(
                    bus.client, settings, count=1_000_000, newest_first=False
                )
                chosen = [d.id for d in letters]
            done = []
            for i in chosen:
                try:
                    done.append((i, await replay(bus.client, settings, i)))
                except InvalidInput as e:  # a letter that must not go back: say why, go on
                    skipped.append(f"skipped {i}: {e.description}")
            return done

    done = run_async(go)
    for old, new in done:
        click.echo(f"replayed {old} as {new}")
    for line in skipped:
        click.echo(line, err=True)
    if not done and not skipped:
        click.echo("nothing to replay")
    if skipped:
        raise SystemExit(EXIT_ERROR)

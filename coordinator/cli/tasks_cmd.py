"""``agentbus tasks NAME``: an agent's task history, newest first.

Reads the stream ``KeySpace.tasks(name)`` that the agent appends to with its usage stats, every
second (``agent_sdk.task_history``): each handled message's type, sender, start, duration and
outcome (``ok`` or the error code).
"""

from __future__ import annotations

from datetime import UTC, datetime

import click
from rich.table import Table
from rich.text import Text

from agent_sdk.bus import Bus
from agent_sdk.settings import Settings
from agent_sdk.task_history import TaskRecord, read_tasks
from coordinator.cli.base import CliState, console, dumps, pass_state, run_async
from coordinator.cli.render import Column, ago, fitted_table
from schemas.errors import InvalidInput
from schemas.names import check_identifier

__all__ = ["tasks"]


def _since(at: str, now: datetime) -> str:
    try:
        return ago(datetime.fromisoformat(at), now)
    except ValueError:
        return at or "-"


def _table(name: str, rows: list[TaskRecord], width: int) -> Table:
    now = datetime.now(UTC)
    outcome = [Text(t.outcome, "" if t.ok else "red") for t in rows]
    columns = [
        Column("started", [_since(t.start, now) for t in rows], 0, "right"),
        Column("type", [t.type for t in rows], 0),
        Column("outcome", outcome, 0),
        Column("ms", [f"{t.duration_ms:.2f}" for t in rows], 1, "right"),
        Column("sender", [t.sender for t in rows], 2),
        Column("kind", [t.kind for t in rows], 4),
        Column("session", [t.session or "-" for t in rows], 5),
        Column("message id", [t.id for t in rows], 6),
    ]  # fmt: skip
    return fitted_table(columns, width, title=f"tasks of {name}, newest first")


async def _fetch(
    settings: Settings, name: str, limit: int, before: str | None
) -> tuple[list[TaskRecord], str | None]:
    async with Bus(settings) as bus:
        return await read_tasks(bus.client, settings, name, limit=limit, before=before)


@click.command(short_help="An agent's task history (handled messages and outcomes).")
@click.argument("name")
@click.option("--limit", "-n", type=click.IntRange(1, 1000), default=20, show_default=True,
              help="How many tasks.")  # fmt: skip
@click.option("--before", help="Only tasks older than this entry id (the `next` of a page).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON: {tasks, next}.")
@pass_state
def tasks(state: CliState, name: str, limit: int, before: str | None, as_json: bool) -> None:
    """The newest tasks of agent NAME: type, sender, start, duration, ok or error code.

    The history outlives the agent; AGENTBUS_TASK_HISTORY entries are kept per name."""
    try:
        check_identifier(name, "agent name")
    except ValueError as e:
        raise InvalidInput(str(e)) from e
    settings = state.settings()
    rows, following = run_async(lambda: _fetch(settings, name, limit, before))
    if as_json:
        click.echo(dumps({"tasks": [t.as_dict() for t in rows], "next": following}, pretty=True))
        return
    out = console()
    if not rows:
        out.print(f"no tasks recorded for {name} on {settings.display_url} "
                  f"(namespace {settings.namespace})")  # fmt: skip
        return
    out.print(_table(name, rows, out.width))
    if following:
        out.print(f"older: agentbus tasks {name} --before {following}")

"""``agentbus stats``: usage of agents' handlers (invocations, errors, latency) by message type.

Reads the per-agent hashes ``KeySpace.stats(name)`` that agents flush every second (see
``agent_sdk.usage``). Without names: every live agent (``--role`` narrows it).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import click
from rich.table import Table
from rich.text import Text

from agent_sdk.bus import Bus
from agent_sdk.settings import Settings
from agent_sdk.usage import TypeUsage, read_usage
from coordinator.cli.base import CliState, console, dumps, pass_state, run_async
from coordinator.cli.render import Column, ago, fitted_table

__all__ = ["stats", "usage_table"]


def _ms(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.2f}" if value < 10 else f"{value:.1f}"


def _since(at: str | None, now: datetime) -> str:
    if not at:
        return "-"
    try:
        return ago(datetime.fromisoformat(at), now)
    except ValueError:
        return at


def usage_table(usage: dict[str, list[TypeUsage]], width: int, title: str | None = None) -> Table:
    """One row per (agent, message type), as many columns as ``width`` allows."""
    rows = [(name, u) for name, found in sorted(usage.items()) for u in found]
    now = datetime.now(UTC)
    rate = [Text(f"{u.error_rate * 100:.1f}", "red" if u.errors else "") for _, u in rows]
    columns = [
        Column("agent", [name for name, _ in rows], 0),
        Column("type", [u.type for _, u in rows], 0),
        Column("calls", [str(u.invocations) for _, u in rows], 1, "right"),
        Column("errors", [str(u.errors) for _, u in rows], 2, "right"),
        Column("err %", rate, 7, "right"),
        Column("mean ms", [_ms(u.mean_ms) for _, u in rows], 5, "right"),
        Column("p50 ms", [_ms(u.percentile_ms(0.5)) for _, u in rows], 3, "right"),
        Column("p95 ms", [_ms(u.percentile_ms(0.95)) for _, u in rows], 4, "right"),
        Column("max ms", [_ms(u.max_ms) for _, u in rows], 6, "right"),
        Column("last", [_since(u.last_at, now) for _, u in rows], 8, "right"),
    ]  # fmt: skip
    return fitted_table(columns, width, title=title, note=_NOTE)


#: What the table counts (the stats hash is the current instance's: ``agent_sdk.usage``).
_NOTE = "counts of each agent's current instance; p50/p95 estimated"


async def _fetch(
    settings: Settings, names: tuple[str, ...], role: str | None
) -> dict[str, list[TypeUsage]]:
    async with Bus(settings) as bus:
        if not names:
            names = tuple(r.name for r in await bus.discover(role=role))
        return {name: await read_usage(bus.client, settings, name) for name in names}


@click.command(short_help="Handler usage of agents, by message type.")
@click.argument("names", nargs=-1)
@click.option("--role", help="Only live agents of this role (when no NAMES are given).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON: {agent: [usage by type]}.")
@pass_state
def stats(state: CliState, names: tuple[str, ...], role: str | None, as_json: bool) -> None:
    """Usage stats of agents NAMES (default: every live agent), by message type."""
    settings = state.settings()
    usage = run_async(lambda: _fetch(settings, names, role))
    if as_json:
        data: dict[str, Any] = {n: [u.as_dict() for u in rows] for n, rows in usage.items()}
        click.echo(dumps(data, pretty=True))
        return
    if not any(usage.values()):
        console().print(
            "no usage recorded yet" + (f" for {', '.join(names)}" if names else "")
            + f" on {settings.display_url} (namespace {settings.namespace})"
        )  # fmt: skip
        return
    out = console()
    out.print(usage_table({n: rows for n, rows in usage.items() if rows}, out.width))

"""``agentbus stats``: usage of agents' handlers (invocations, errors, latency) by message type.

Reads the per-agent hashes ``KeySpace.stats(name)`` that agents flush every second (see
``agent_sdk.usage``). Without names: every live agent (``--role`` narrows it).
"""

from __future__ import annotations

from typing import Any

import click
from rich.table import Table

from agent_sdk.bus import Bus
from agent_sdk.settings import Settings
from agent_sdk.usage import TypeUsage, read_usage
from coordinator.cli.base import CliState, console, dumps, pass_state, run_async

__all__ = ["stats", "usage_table"]


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def usage_table(usage: dict[str, list[TypeUsage]], title: str | None = None) -> Table:
    """One row per (agent, message type)."""
    table = Table(title=title, header_style="bold")
    for column in ("agent", "type"):
        table.add_column(column)
    for column in ("calls", "errors", "err %", "mean ms", "p50 ms", "p95 ms"):
        table.add_column(column, justify="right")
    table.add_column("last")
    for name, rows in sorted(usage.items()):
        for u in rows:
            rate = f"{u.error_rate * 100:.1f}"
            table.add_row(
                name, u.type, str(u.invocations), str(u.errors),
                f"[red]{rate}[/]" if u.errors else rate,
                _ms(u.mean_ms), _ms(u.percentile_ms(0.5)), _ms(u.percentile_ms(0.95)),
                u.last_at or "-",
            )  # fmt: skip
    return table


async def _fetch(
    settings: Settings, names: tuple[str, ...], role: str | None
) -> dict[str, list[TypeUsage]]:
    async with Bus(settings) as bus:
        if not names:
            names = tuple(r.name for r in await bus.discover(role=role))
        return {name: await read_usage(bus.client, settings, name) for name in names}


@click.command()
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
    console().print(usage_table({n: rows for n, rows in usage.items() if rows}))

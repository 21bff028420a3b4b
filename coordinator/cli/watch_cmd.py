"""``agentbus watch``: tail the registry change feed, or ``--session ID``'s activity.

Human-readable by default (time, coloured event, agent, details, and the revision to resume
from); ``--json`` prints one JSON object per line for machines. ``--since REV`` resumes after a
revision (``0``: everything the stream still holds); without it the registry feed starts with new
changes and a session from its beginning. ``--count N`` exits after N events.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import click
from rich.console import Console
from rich.markup import escape

from agent_sdk.bus import Bus
from agent_sdk.settings import Settings
from coordinator.cli.base import CliState, console, dumps, pass_state, run_async, stream_ids
from schemas.display import safe_text
from schemas.events import ActivityEvent, ActivityType, RegistryEvent, RegistryEventType

__all__ = ["format_activity", "format_registry", "watch"]


def escape_data(value: object) -> str:
    """Data from the bus in a line of markup: markup escaped, control characters shown."""
    return escape(safe_text(value))


_REGISTRY_STYLE = {
    RegistryEventType.AGENT_REGISTERED: ("green", "+ registered"),
    RegistryEventType.AGENT_UPDATED: ("cyan", "~ updated"),
    RegistryEventType.AGENT_DEREGISTERED: ("yellow", "- deregistered"),
    RegistryEventType.AGENT_EXPIRED: ("red", "x expired"),
    RegistryEventType.PLUGIN_LOADED: ("green", "+ plugin"),
    RegistryEventType.PLUGIN_RELOADED: ("cyan", "~ plugin"),
    RegistryEventType.PLUGIN_UNLOADED: ("yellow", "- plugin"),
    RegistryEventType.PLUGIN_FAILED: ("red", "! plugin"),
}
_ACTIVITY_STYLE = {
    ActivityType.AGENT_STARTED: "green",
    ActivityType.AGENT_THINKING: "cyan",
    ActivityType.TOOL_EXECUTING: "blue",
    ActivityType.TOOL_COMPLETED: "blue",
    ActivityType.AGENT_COMPLETED: "green",
    ActivityType.AGENT_FAILED: "red",
}


def _clock(event: RegistryEvent | ActivityEvent) -> str:
    return event.at.astimezone().strftime("%H:%M:%S.%f")[:-3]


def _short(value: Any, limit: int = 120) -> str:
    text = value if isinstance(value, str) else dumps(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def format_registry(event: RegistryEvent) -> str:
    """One line of rich markup for a registry change."""
    style, label = _REGISTRY_STYLE.get(event.type, ("white", event.type.value))
    parts = [
        f"[dim]{_clock(event)}[/]",
        f"[bold {style}]{label:<15}[/]",
        f"[bold]{escape_data(event.name)}[/]",
    ]
    if event.role:
        parts.append(f"role={escape_data(event.role)}")
    if event.version:
        parts.append(f"version={escape_data(event.version)}")
    if event.changes:
        changes = ", ".join(
            f"{escape_data(k)}: {escape_data(_short(v[0], 40))} → {escape_data(_short(v[-1], 40))}"
            for k, v in event.changes.items()
        )
        parts.append(changes)
    if event.reason:
        parts.append(f"reason={escape_data(event.reason)}")
    if event.last_seen:
        parts.append(f"last seen {event.last_seen.astimezone().strftime('%H:%M:%S.%f')[:-3]}")
    if event.instance_id:
        parts.append(f"[dim]instance {escape_data(event.instance_id)}[/]")
    parts.append(f"[dim]rev {event.revision}[/]")
    return "  ".join(parts)


def format_activity(event: ActivityEvent) -> str:
    """One line of rich markup for an activity event."""
    style = _ACTIVITY_STYLE.get(event.type, "white")
    parts = [
        f"[dim]{_clock(event)}[/]",
        f"[dim]#{event.seq:<4}[/]",
        f"[bold]{escape_data(event.agent)}[/]",
        f"[{style}]{event.type.value:<15}[/]",
    ]
    if event.payload is not None:
        parts.append(escape_data(_short(event.payload)))
    parts.append(f"[dim]id {event.id}[/]")
    return "  ".join(parts)


async def _tail(
    settings: Settings,
    *,
    session: str | None,
    tenant: str | None,
    since: str | None,
    roles: tuple[str, ...],
    types: tuple[str, ...],
    count: int | None,
    as_json: bool,
    out: Console,
) -> None:
    async with Bus(settings) as bus:
        stream: AsyncIterator[RegistryEvent] | AsyncIterator[ActivityEvent]
        if session is not None:
            stream = bus.watch_session(session, since=since, tenant=tenant)
        else:
            stream = bus.watch(since=since, roles=roles or None, types=types or None)
        seen = 0
        async for event in stream:
            if as_json:
                click.echo(dumps(event.model_dump(mode="json", exclude_none=True)))
            elif isinstance(event, RegistryEvent):
                out.print(format_registry(event))
            else:
                out.print(format_activity(event))
            seen += 1
            if count is not None and seen >= count:
                break


@click.command(short_help="Tail the registry feed (or a session's).")
@click.option(
    "--since",
    metavar="REV",
    callback=stream_ids,
    help="Resume after this revision, a stream id like 1700000000000-0 (0: all still held).",
)
@click.option("--session", metavar="ID", help="Tail this session's activity events instead.")
@click.option("--tenant", metavar="T", help="The --session's tenant (docs/SECURITY.md, Tenants).")
@click.option("--role", "roles", multiple=True, help="Only changes of agents of this role.")
@click.option(
    "--type",
    "types",
    multiple=True,
    type=click.Choice([t.value for t in RegistryEventType]),
    help="Only these change types (repeatable).",
)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@click.option("--count", type=click.IntRange(min=1), help="Exit after this many events.")
@pass_state
def watch(
    state: CliState,
    since: str | None,
    session: str | None,
    tenant: str | None,
    roles: tuple[str, ...],
    types: tuple[str, ...],
    as_json: bool,
    count: int | None,
) -> None:
    """Tail the registry change feed (or --session ID's activity) until Ctrl-C."""
    if session is not None and (roles or types):
        raise click.UsageError("--role and --type filter the registry feed, not --session")
    if tenant is not None and session is None:
        raise click.UsageError("--tenant names the tenant of a --session")
    settings = state.settings()
    if since in ("0", "0-0"):
        resolved: str | None = None  # everything the stream still holds
    elif since is None:
        resolved = None if session is not None else "now"
    else:
        resolved = since

    async def tail() -> None:
        await _tail(
            settings, session=session, tenant=tenant, since=resolved, roles=roles, types=types,
            count=count, as_json=as_json, out=console(),
        )  # fmt: skip

    try:
        run_async(tail)
    except KeyboardInterrupt:  # the normal way to stop tailing
        return

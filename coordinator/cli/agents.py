"""``agentbus agents``: list live agents (filters, table or JSON); ``agents show NAME``."""

from __future__ import annotations

import click

from agent_sdk.bus import Bus
from agent_sdk.connection import redis_errors
from agent_sdk.settings import Settings
from agent_sdk.usage import parse_usage
from coordinator.cli.base import CliState, console, dumps, pass_state, run_async
from coordinator.cli.reach import default_url_note
from coordinator.cli.render import agent_details, agent_json, print_records
from coordinator.cli.stats_cmd import usage_table
from schemas.agent import AgentRecord, AgentStatus
from schemas.errors import AgentNotFound

__all__ = ["agents"]


@click.group(invoke_without_command=True, short_help="List the live agents (table or JSON).")
@click.option("--role", help="Only agents of this role.")
@click.option(
    "--capability", "capabilities", multiple=True, help="Has this capability (repeat: all of)."
)
@click.option("--tag", "tags", multiple=True, help="Has this tag (repeat: any of).")
@click.option(
    "--status", type=click.Choice([s.value for s in AgentStatus]), help="Only this status."
)
@click.option("--version", "version", help="SemVer range, e.g. '>=1.2 <2' or '^1.4'.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array of records.")
@click.option("--jsonl", "as_jsonl", is_flag=True, help="Print one JSON record per line.")
@pass_state
@click.pass_context
def agents(
    ctx: click.Context,
    state: CliState,
    role: str | None,
    capabilities: tuple[str, ...],
    tags: tuple[str, ...],
    status: str | None,
    version: str | None,
    as_json: bool,
    as_jsonl: bool,
) -> None:
    """List the live agents (a table; --json/--jsonl for scripts)."""
    if ctx.invoked_subcommand is not None:
        return
    settings = state.settings()

    async def fetch() -> list[AgentRecord]:
        async with Bus(settings) as bus:
            return await bus.discover(
                role=role,
                capabilities=list(capabilities) or None,
                tags=list(tags) or None,
                status=AgentStatus(status) if status else None,
                version=version,
            )

    records = sorted(run_async(fetch), key=lambda r: (r.role, r.name))
    if as_json:
        click.echo(dumps([agent_json(r) for r in records], pretty=True))
    elif as_jsonl:
        for rec in records:
            click.echo(dumps(agent_json(rec)))
    else:
        print_records(
            console(),
            records,
            f"no live agents match on {settings.display_url} (namespace {settings.namespace})"
            + default_url_note(state.redis_url is not None),
        )


@agents.command(short_help="Every field of one live agent, and its usage.")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print the record (and usage) as JSON.")
@pass_state
def show(state: CliState, name: str, as_json: bool) -> None:
    """Every field of one live agent, and its usage by message type."""
    settings = state.settings()
    record, raw = run_async(lambda: _fetch_one(settings, name))
    usage = parse_usage(raw)
    if as_json:
        # usage: parsed by message type; stats: the raw counters of the stats hash
        data = {**agent_json(record), "usage": [u.as_dict() for u in usage], "stats": raw}
        click.echo(dumps(data, pretty=True))
        return
    out = console()
    out.print(agent_details(record))
    if usage:
        out.print(usage_table({name: usage}, out.width, title="usage by message type"))
    else:
        out.print("no usage recorded yet")


async def _fetch_one(settings: Settings, name: str) -> tuple[AgentRecord, dict[str, str]]:
    async with Bus(settings) as bus:
        record = await bus.get(name)
        if record is None:
            raise AgentNotFound(
                f"no live agent named {name!r} on {settings.display_url} "
                f"(namespace {settings.namespace})"
            )
        with redis_errors(settings, f"reading usage stats of {name!r}"):
            fields = await bus.client.hgetall(bus.keys.stats(name))
    return record, {_text(k): _text(v) for k, v in fields.items()}


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value

"""``agentbus plugins``: the catalogue (list, search, show) and ``install``.

The catalogue is what plugin hosts recorded in Redis (``coordinator.plugins.catalogue``), plus
the plugin directories given with ``--dir`` (status ``not loaded`` when no host runs them).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
from rich.table import Table
from rich.text import Text

from agent_sdk.bus import Bus
from agent_sdk.plugin_manifest import read_manifest
from agent_sdk.settings import Settings
from agent_sdk.usage import TypeUsage, read_usage
from coordinator.cli.base import CliState, console, dumps, fail, pass_state, run_async
from coordinator.cli.stats_cmd import usage_table
from coordinator.plugins.catalogue import Catalogue, CatalogueEntry
from coordinator.plugins.install import install_plugin
from coordinator.plugins.supervisor import find_plugin_dirs
from schemas.display import safe_text
from schemas.errors import AgentbusError, PluginError

__all__ = ["plugins"]

_COLUMNS = ("name", "version", "status", "role", "replicas", "agents", "description")


def _local(dirs: tuple[Path, ...]) -> list[CatalogueEntry]:
    found = []
    for root in dirs:
        for directory in find_plugin_dirs(root):
            fields = {"path": str(directory)}
            try:
                m = read_manifest(directory)
            except PluginError as e:
                fields.update(name=directory.name, status="invalid", last_error=e.description)
                found.append(CatalogueEntry(fields))
                continue
            fields.update(
                name=m.name,
                version=m.version,
                status="not loaded",
                role=m.role,
                description=m.description,
                tags=",".join(m.tags),
                capabilities=",".join(m.capabilities),
                replicas=f"{m.replicas.min}-{m.replicas.max}",
                manifest=m.model_dump_json(),
            )
            found.append(CatalogueEntry(fields))
    return found


def _entries(state: CliState, dirs: tuple[Path, ...]) -> list[CatalogueEntry]:
    settings = state.settings()

    async def fetch() -> list[CatalogueEntry]:
        async with Bus(settings) as bus:
            return await Catalogue(bus.client, settings.keys).entries()

    known = {e.name: e for e in run_async(fetch)}
    for entry in _local(dirs):
        if entry.name not in known:  # what a host recorded wins: it is the live state
            known[entry.name] = entry
    return [known[n] for n in sorted(known)]


def _print(entries: list[CatalogueEntry], as_json: bool, empty: str) -> None:
    if as_json:
        click.echo(dumps([dict(e.fields) for e in entries], pretty=True))
        return
    if not entries:
        click.echo(empty)
        return
    table = Table(*_COLUMNS)
    for e in entries:
        status = e.get("status")
        style = {"running": "green", "failed": "red", "invalid": "red"}.get(status, "")
        row: list[str | Text | None] = [
            None if e.get(c) is None else Text(safe_text(e.get(c))) for c in _COLUMNS
        ]
        row[2] = Text(safe_text(status), style=style) if status is not None else None
        table.add_row(*row)
    console().print(table)


_dir_option = click.option(
    "--dir", "dirs", multiple=True,
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Also list the plugins in this directory (repeat), loaded or not.",
)  # fmt: skip
_json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON.")


@click.group(invoke_without_command=True, short_help="The plugin catalogue; install a plugin.")
@_dir_option
@_json_option
@pass_state
@click.pass_context
def plugins(ctx: click.Context, state: CliState, dirs: tuple[Path, ...], as_json: bool) -> None:
    """Every known plugin, running or not: what plugin hosts recorded, and --dir directories."""
    if ctx.invoked_subcommand is None:
        _print(_entries(state, dirs), as_json, "no plugin known (run agentbus run --plugins)")


@plugins.command("list", short_help="Every known plugin.")
@_dir_option
@_json_option
@pass_state
def list_(state: CliState, dirs: tuple[Path, ...], as_json: bool) -> None:
    """Every known plugin: version, status, role, replicas, agents."""
    _print(_entries(state, dirs), as_json, "no plugin known (run agentbus run --plugins)")


@plugins.command(short_help="Plugins whose name, description, tags or role match.")
@click.argument("query")
@_dir_option
@_json_option
@pass_state
def search(state: CliState, query: str, dirs: tuple[Path, ...], as_json: bool) -> None:
    """Plugins matching every word of QUERY (case-insensitive) in their name, description,
    tags, role or capabilities."""
    words = query.lower().split()
    found = [e for e in _entries(state, dirs) if all(w in e.words() for w in words)]
    _print(found, as_json, f"no plugin matches {query!r}")


@plugins.command(short_help="One plugin: every field, its manifest and its agents' usage.")
@click.argument("name")
@_dir_option
@_json_option
@pass_state
def show(state: CliState, name: str, dirs: tuple[Path, ...], as_json: bool) -> None:
    """One plugin: its catalogue entry, manifest, last error and its agents' usage stats."""
    entry = next((e for e in _entries(state, dirs) if e.name == name), None)
    if entry is None:
        fail(PluginError(f"no plugin named {name!r} is known", details={"plugin": name}))
    agents = [a for a in entry.get("agents").split(",") if a]
    usage = run_async(lambda: _usage(state.settings(), agents)) if agents else {}
    if as_json:
        data: dict[str, Any] = dict(entry.fields)
        data["usage"] = {a: [u.as_dict() for u in us] for a, us in usage.items()}
        click.echo(dumps(data, pretty=True))
        return
    out = console()
    table = Table("field", "value", show_header=False)
    for key in ("name", "version", "status", "role", "description", "tags", "capabilities",
                "replicas", "agents", "path", "host", "updated_at", "last_error"):  # fmt: skip
        if entry.get(key):
            table.add_row(key, Text(safe_text(entry.get(key))))
    out.print(table)
    if entry.get("manifest"):
        out.print(f"manifest: {entry.get('manifest')}")
    if any(usage.values()):
        out.print(usage_table(usage, out.width, title="usage by message type"))


async def _usage(settings: Settings, agents: list[str]) -> dict[str, list[TypeUsage]]:
    async with Bus(settings) as bus:
        return {a: await read_usage(bus.client, settings, a) for a in agents}


@plugins.command(short_help="Check a plugin directory or archive; put it in a plugin directory.")
@click.argument("path", type=click.Path(exists=True, path_type=Path))
@click.option(
    "--into", type=click.Path(file_okay=False, path_type=Path),
    help="A (watched) plugin directory to copy it into: there it goes live.",
)  # fmt: skip
def install(path: Path, into: Path | None) -> None:
    """Validate the plugin at PATH (a directory, .zip or .tar.gz): its manifest, plugin API
    range and dependencies; with --into, copy it to INTO/<name>, where a host watching INTO
    loads it."""
    try:
        manifest, target = install_plugin(path, into)
    except AgentbusError as e:
        fail(e)
    click.echo(f"ok: {manifest.name} {manifest.version} (role {manifest.role}) is valid")
    if target is not None:
        click.echo(f"installed into {target}")

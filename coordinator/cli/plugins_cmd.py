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
from coordinator.plugins.installed import installed_plugins
from coordinator.plugins.supervisor import find_plugin_dirs
from schemas.display import safe_text
from schemas.errors import AgentbusError, PluginError

__all__ = ["plugins"]

_COLUMNS = ("name", "versions", "default", "status", "role", "replicas", "agents", "description")


def _local(dirs: tuple[Path, ...], installed: bool) -> list[CatalogueEntry]:
    found = []
    candidates = [d for root in dirs for d in find_plugin_dirs(root)]
    if installed:
        for p in installed_plugins():
            if p.directory is None:
                found.append(CatalogueEntry({"name": p.entry_point, "status": "invalid",
                                             "path": p.value, "last_error": p.error}))  # fmt: skip
            else:
                candidates.append(p.directory)
    for directory in candidates:
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
            versions=m.version,
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


def _entries(
    state: CliState, dirs: tuple[Path, ...], installed: bool = False
) -> list[CatalogueEntry]:
    settings = state.settings()

    async def fetch() -> list[CatalogueEntry]:
        async with Bus(settings) as bus:
            return await Catalogue(bus.client, settings.keys).entries()

    known = {e.name: e for e in run_async(fetch)}
    for entry in _local(dirs, installed):
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
        values = [e.get(c) for c in _COLUMNS]
        values[1] = values[1] or e.get("version")
        row: list[str | Text | None] = [None if v is None else Text(safe_text(v)) for v in values]
        row[3] = Text(safe_text(status), style=style) if status is not None else None
        table.add_row(*row)
    console().print(table)


_dir_option = click.option(
    "--dir", "dirs", multiple=True,
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Also list the plugins in this directory (repeat), loaded or not.",
)  # fmt: skip
_json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON.")
_installed_option = click.option(
    "--installed", is_flag=True,
    help="Also list the plugins installed packages ship (entry points agentbus.plugins).",
)  # fmt: skip


@click.group(invoke_without_command=True, short_help="The plugin catalogue; install a plugin.")
@_dir_option
@_installed_option
@_json_option
@pass_state
@click.pass_context
def plugins(
    ctx: click.Context, state: CliState, dirs: tuple[Path, ...], installed: bool, as_json: bool
) -> None:
    """Every known plugin, running or not: what plugin hosts recorded, and --dir directories."""
    if ctx.invoked_subcommand is None:
        _print(_entries(state, dirs, installed), as_json,
               "no plugin known (run agentbus run --plugins)")  # fmt: skip


@plugins.command("list", short_help="Every known plugin.")
@_dir_option
@_installed_option
@_json_option
@pass_state
def list_(state: CliState, dirs: tuple[Path, ...], installed: bool, as_json: bool) -> None:
    """Every known plugin: versions, the default one, status, role, replicas, agents."""
    _print(_entries(state, dirs, installed), as_json,
           "no plugin known (run agentbus run --plugins)")  # fmt: skip


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
    versions = run_async(lambda: _versions(state.settings(), name)) if entry.get("host") else []
    if as_json:
        data: dict[str, Any] = dict(entry.fields)
        data["usage"] = {a: [u.as_dict() for u in us] for a, us in usage.items()}
        data["by_version"] = [dict(v.fields) for v in versions]
        click.echo(dumps(data, pretty=True))
        return
    out = console()
    table = Table("field", "value", show_header=False)
    for key in ("name", "version", "versions", "default", "status", "role", "description",
                "tags", "capabilities", "replicas", "agents", "path", "host", "updated_at",
                "last_error"):  # fmt: skip
        if entry.get(key):
            table.add_row(key, Text(safe_text(entry.get(key))))
    out.print(table)
    if len(versions) > 1:
        by_version = Table("version", "status", "agents", "path", "last_error",
                           title="versions side by side")  # fmt: skip
        for v in versions:
            mark = " (default)" if v.get("version") == entry.get("default") else ""
            by_version.add_row(v.get("version") + mark, v.get("status"), v.get("agents"),
                               v.get("path"), v.get("last_error"))  # fmt: skip
        out.print(by_version)
    if entry.get("manifest"):
        out.print(f"manifest: {entry.get('manifest')}")
    if any(usage.values()):
        out.print(usage_table(usage, out.width, title="usage by message type"))


async def _versions(settings: Settings, name: str) -> list[CatalogueEntry]:
    async with Bus(settings) as bus:
        return await Catalogue(bus.client, settings.keys).versions(name)


@plugins.command(short_help="Show or set the default version of a plugin's role.")
@click.argument("name")
@click.argument("version", required=False)
@click.option("--clear", is_flag=True, help="No default: sends reach any version.")
@pass_state
def default(state: CliState, name: str, version: str | None, clear: bool) -> None:
    """Make VERSION the default of plugin NAME: sends and requests to its role without a
    version range go to that version's agents (any version's when none of them is live).
    Without VERSION, print the default; --clear removes it. The default is kept per role."""
    settings = state.settings()

    async def go() -> str:
        async with Bus(settings) as bus:
            catalogue = Catalogue(bus.client, settings.keys)
            entry = next((e for e in await catalogue.entries() if e.name == name), None)
            if entry is None:
                raise PluginError(f"no plugin named {name!r} is known (run agentbus run "
                                  "--plugins)", details={"plugin": name})  # fmt: skip
            role = entry.get("role")
            known = [v for v in entry.get("versions", entry.get("version")).split(",") if v]
            if version is None and not clear:
                return entry.get("default") or f"(none: sends to role {role!r} reach any version)"
            if version is not None and version not in known:
                raise PluginError(
                    f"plugin {name!r} has no version {version!r} (known: {', '.join(known)})",
                    details={"plugin": name, "version": version, "known": known},
                )
            await catalogue.set_default(role, "" if clear else version or "")
            await catalogue.refresh(name)
            if clear:
                return f"role {role!r} has no default version"
            return f"role {role!r} defaults to {name} {version}"

    try:
        click.echo(run_async(go))
    except AgentbusError as e:
        fail(e)


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

"""``agentbus run module:attr``: run agents defined in Python until SIGTERM or Ctrl-C.

``agentbus run --plugins DIR [DIR ...]`` hosts every plugin found in the directories instead
(``coordinator.plugins``, docs/PLUGINS.md), following them for changes unless ``--no-watch``.

``attr`` is an ``Agent`` or a ``Host`` (many agents), or a factory (a function, sync or async,
taking no arguments) that returns one. The module is imported with the current directory on
``sys.path`` (as ``python -m`` would), after ``--redis-url`` and ``--namespace`` were put in the
environment, so agents built at import time use them. The first signal drains (no new work,
in-flight handlers finish within ``shutdown_grace``, every agent leaves at once); a second exits
at once. Exit status 0 after a clean stop, 1 if it could not start or stopped on its own, 2 for
a target that is not one.
"""

from __future__ import annotations

import importlib
import inspect
import logging
import os
import sys
from pathlib import Path
from typing import Any

import click

from agent_sdk.agent import Agent
from agent_sdk.host import Host
from agent_sdk.runner import configure_logging, run_coroutine, serve
from coordinator.cli.base import CliState, pass_state
from coordinator.plugins import PluginSupervisor

__all__ = ["run"]


def _load(target: str) -> Any:
    module_name, sep, attr = target.partition(":")
    if not sep or not module_name or not attr:
        raise click.UsageError(f"expected module:attr (e.g. examples.echo:agent), got {target!r}")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise click.UsageError(f"cannot import {module_name!r}: {e}") from e
    obj: Any = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise click.UsageError(f"{module_name!r} has no attribute {attr!r}") from None
    return obj


def _parse_args(pairs: tuple[str, ...]) -> dict[str, str]:
    """``--arg KEY=VALUE`` pairs as keyword arguments for a factory."""
    kwargs: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.isidentifier():
            raise click.UsageError(f"--arg expects KEY=VALUE with KEY a Python name, got {pair!r}")
        kwargs[key] = value
    return kwargs


async def _resolve_and_serve(obj: Any, target: str, kwargs: dict[str, str]) -> int:
    if not isinstance(obj, Agent | Host) and callable(obj):
        try:
            obj = obj(**kwargs)
        except TypeError as e:
            if not kwargs:
                raise
            click.echo(f"agentbus run: {target} does not take {sorted(kwargs)}: {e}", err=True)
            return 2
        if inspect.isawaitable(obj):
            obj = await obj
    elif kwargs:
        click.echo(f"agentbus run: --arg is for factories; {target} is not callable", err=True)
        return 2
    if not isinstance(obj, Agent | Host):
        click.echo(
            f"agentbus run: {target} is {type(obj).__name__}, not an Agent, a Host or a "
            "factory returning one",
            err=True,
        )
        return 2
    return await serve(obj)


@click.command("run", short_help="Run agents from Python, or plugins, until SIGTERM or Ctrl-C.")
@click.argument("targets", nargs=-1, metavar="MODULE:ATTR | --plugins DIR [DIR ...]")
@click.option(
    "--arg",
    "args",
    multiple=True,
    metavar="KEY=VALUE",
    help="A keyword argument (a string) for the factory MODULE:ATTR; repeatable.",
)
@click.option(
    "--plugins",
    is_flag=True,
    help="The arguments are plugin directories: host every plugin found in them.",
)
@click.option(
    "--installed",
    is_flag=True,
    help="With --plugins: also host the plugins installed packages ship (entry-point group "
    "agentbus.plugins); DIRs may then be omitted.",
)
@click.option(
    "--watch/--no-watch",
    default=True,
    show_default=True,
    help="With --plugins: follow the directories (new plugins load, edits reload, deleted "
    "plugins drain and leave).",
)
@click.option(
    "--ready-timeout",
    type=click.FloatRange(min=0.1),
    default=30.0,
    show_default=True,
    help="With --plugins: seconds a plugin may take to load and register before it is failed.",
)
@click.option(
    "--debounce",
    type=click.IntRange(min=1),
    default=300,
    show_default=True,
    help="With --plugins: milliseconds of quiet before a batch of file changes is applied.",
)
@pass_state
def run(
    state: CliState,
    targets: tuple[str, ...],
    args: tuple[str, ...],
    plugins: bool,
    installed: bool,
    watch: bool,
    ready_timeout: float,
    debounce: int,
) -> None:
    """Run MODULE:ATTR (an Agent, a Host, or a factory returning one) until SIGTERM or Ctrl-C,
    then stop it gracefully: in-flight handlers finish within shutdown_grace and every agent
    leaves the registry at once. A second signal exits at once.

    With --plugins, host every plugin (a directory with a manifest.yaml) found in the DIRs,
    each in a worker process of its own, and follow the DIRs for changes."""
    if state.redis_url:
        os.environ["AGENTBUS_REDIS_URL"] = state.redis_url
    if state.namespace:
        os.environ["AGENTBUS_NAMESPACE"] = state.namespace
    if installed and not plugins:
        raise click.UsageError("--installed goes with --plugins")
    if plugins:
        if not targets and not installed:
            raise click.UsageError("--plugins needs at least one directory (or --installed)")
        missing = [t for t in targets if not Path(t).is_dir()]
        if missing:
            raise click.UsageError(f"not a directory: {', '.join(missing)}")
        supervisor = PluginSupervisor(
            state.settings(), [Path(t) for t in targets], watch=watch, installed=installed,
            ready_timeout=ready_timeout, debounce_ms=debounce,
        )  # fmt: skip
        configure_logging("INFO")
        for name in ("agentbus.run", "agentbus.plugins"):
            logging.getLogger(name).setLevel(logging.INFO)
        sys.exit(run_coroutine(serve(supervisor)))
    if len(targets) != 1:
        raise click.UsageError("give one MODULE:ATTR (or --plugins DIR [DIR ...])")
    kwargs = _parse_args(args)
    obj = _load(targets[0])
    configure_logging("INFO")
    logging.getLogger("agentbus.run").setLevel(logging.INFO)  # its start and stop lines
    sys.exit(run_coroutine(_resolve_and_serve(obj, targets[0], kwargs)))

"""``agentbus run module:attr``: run agents defined in Python until SIGTERM or Ctrl-C.

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
from typing import Any

import click

from agent_sdk.agent import Agent
from agent_sdk.host import Host
from agent_sdk.runner import configure_logging, run_coroutine, serve
from coordinator.cli.base import CliState, pass_state

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


async def _resolve_and_serve(obj: Any, target: str) -> int:
    if not isinstance(obj, Agent | Host) and callable(obj):
        obj = obj()
        if inspect.isawaitable(obj):
            obj = await obj
    if not isinstance(obj, Agent | Host):
        click.echo(
            f"agentbus run: {target} is {type(obj).__name__}, not an Agent, a Host or a "
            "factory returning one",
            err=True,
        )
        return 2
    return await serve(obj)


@click.command("run", short_help="Run agents from Python until SIGTERM or Ctrl-C.")
@click.argument("target", metavar="MODULE:ATTR")
@pass_state
def run(state: CliState, target: str) -> None:
    """Run MODULE:ATTR (an Agent, a Host, or a factory returning one) until SIGTERM or Ctrl-C,
    then stop it gracefully: in-flight handlers finish within shutdown_grace and every agent
    leaves the registry at once. A second signal exits at once."""
    if state.redis_url:
        os.environ["AGENTBUS_REDIS_URL"] = state.redis_url
    if state.namespace:
        os.environ["AGENTBUS_NAMESPACE"] = state.namespace
    obj = _load(target)
    configure_logging("INFO")
    logging.getLogger("agentbus.run").setLevel(logging.INFO)  # its start and stop lines
    sys.exit(run_coroutine(_resolve_and_serve(obj, target)))

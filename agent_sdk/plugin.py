"""Plugins: agents made from a directory holding ``manifest.yaml`` and code.

What a plugin's code imports::

    from agent_sdk.plugin import handler

    @handler("summarize")                      # a plain module: its @handler functions become
    async def summarize(doc: Doc) -> dict:     # the agent's handlers, nothing else to write
        ...

or a factory, called with a ``PluginContext`` for each instance (``ctx.config`` is the
manifest's ``config``; ``ctx.agent()`` is an agent with the manifest's card on the host)::

    def make(ctx: PluginContext) -> Agent:
        agent = ctx.agent()
        @agent.on("summarize")
        async def summarize(doc: Doc) -> dict: ...
        return agent

or an ``Agent`` made at import (its handlers are copied onto agents with the manifest's card).

What runs one: ``plugin = load_plugin(directory)`` reads and checks the manifest (fields, plugin
API range, dependencies) and imports the entry point, with the plugin directory on ``sys.path``;
``await plugin.build(host)`` puts its agents on a ``Host``. ``agentbus run --plugins`` does this
in one worker process per plugin (docs/PLUGINS.md); tests of a plugin do it in-process. Every
failure is a ``PluginError`` naming the file, the field and the reason.
"""

from __future__ import annotations

import importlib
import inspect
import sys
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, TypeVar

from agent_sdk.agent import Agent
from agent_sdk.host import Host
from agent_sdk.messaging.handlers import Handler
from agent_sdk.plugin_manifest import check_environment, plugin_error, read_manifest
from schemas.errors import AgentbusError, InvalidInput, PluginError
from schemas.plugin import MANIFEST_FILE, PluginManifest

__all__ = ["HEALTHCHECK", "Plugin", "PluginContext", "handler", "load_plugin"]

#: The message type of a plugin's optional health check (answered before it takes traffic).
HEALTHCHECK = "healthcheck"
_MARK = "__agentbus_handler__"
H = TypeVar("H", bound=Handler)


def handler(type: str) -> Callable[[H], H]:
    """Mark an async function of a plugin module as its handler for messages of ``type``
    (stack several to handle several types)."""
    if not type or len(type) > 128:
        raise InvalidInput(f"message type must be 1-128 characters, got {type!r}")

    def mark(func: H) -> H:
        is_async: bool = inspect.iscoroutinefunction(func)
        if not is_async:
            raise InvalidInput(f"@handler({type!r}): {func.__qualname__} must be an async def")
        setattr(func, _MARK, (*getattr(func, _MARK, ()), type))
        return func

    return mark


@dataclass(frozen=True, slots=True)
class PluginContext:
    """What a plugin's factory is called with, once per instance."""

    manifest: PluginManifest
    directory: Path
    host: Host
    #: The name the instance's agent is registered under (given by whoever runs the plugin).
    agent_name: str
    replica: int = 0

    @property
    def config(self) -> dict[str, Any]:
        """The manifest's free-form ``config``."""
        return self.manifest.config

    def agent(self) -> Agent:
        """A new agent on the host with the manifest's card (name, role, capabilities, tags,
        version, description, max_concurrency; metadata ``plugin``, ``replica``)."""
        m = self.manifest
        return self.host.agent(
            self.agent_name, m.role, capabilities=m.capabilities, tags=m.tags,
            version=m.version, description=m.description,
            max_concurrency=m.resources.max_concurrency,
            metadata={"plugin": m.name, "replica": str(self.replica)},
        )  # fmt: skip


def _module_handlers(module: ModuleType) -> list[tuple[str, Handler]]:
    found: list[tuple[str, Handler]] = []
    for obj in vars(module).values():
        for type in getattr(obj, _MARK, ()) if callable(obj) else ():
            found.append((type, obj))
    return found


class Plugin:
    """A plugin read from its directory and imported: ``build`` puts its agents on a host."""

    def __init__(self, manifest: PluginManifest, directory: Path, target: Any) -> None:
        self.manifest = manifest
        self.directory = directory
        self.target = target
        self._handlers: list[tuple[str, Handler]] | None = None
        if isinstance(target, ModuleType):
            self._handlers = _module_handlers(target)
            if not self._handlers:
                raise self._error(
                    f"module {target.__name__!r} has no @handler functions (from "
                    "agent_sdk.plugin import handler), and is not an Agent or a factory"
                )
        elif isinstance(target, Agent):
            self._handlers = target.handlers.items()
        elif not callable(target):
            raise self._error(
                f"{manifest.entry_point} is {type(target).__name__}: expected an Agent, a "
                "factory returning one, or a module of @handler functions"
            )

    @property
    def name(self) -> str:
        return self.manifest.name

    def _error(self, reason: str) -> PluginError:
        return plugin_error(self.directory, reason, file=MANIFEST_FILE, field="entry_point")

    def default_names(self) -> list[str]:
        """``<name>`` for one instance, ``<name>-0``, ``<name>-1``, ... for several."""
        count = self.manifest.replicas.min
        return [self.name] if count == 1 else [f"{self.name}-{i}" for i in range(count)]

    async def build(self, host: Host, names: Sequence[str] | None = None) -> list[Agent]:
        """One agent per name (default ``default_names()``) on ``host``, with the manifest's
        card and the plugin's handlers. Started with the host, or by the caller."""
        agents = []
        for replica, name in enumerate(names or self.default_names()):
            ctx = PluginContext(self.manifest, self.directory, host, name, replica)
            agents.append(await self._instance(ctx))
        return agents

    async def _instance(self, ctx: PluginContext) -> Agent:
        if self._handlers is not None:
            return self._with_handlers(ctx.agent(), self._handlers)
        factory: Callable[..., Any] = self.target
        try:
            takes_ctx = bool(inspect.signature(factory).parameters)
        except (TypeError, ValueError):
            takes_ctx = False
        try:
            made = factory(ctx) if takes_ctx else factory()
            if inspect.isawaitable(made):
                made = await made
        except AgentbusError as e:
            raise self._error(f"the factory failed: {e}") from e
        except Exception as e:
            raise self._error(f"the factory raised {type(e).__name__}: {e}") from e
        if not isinstance(made, Agent):
            raise self._error(f"the factory returned {type(made).__name__}, not an Agent")
        if made.host is ctx.host:
            return made
        # a lone agent (made without the context): its handlers, the manifest's card
        return self._with_handlers(ctx.agent(), made.handlers.items())

    @staticmethod
    def _with_handlers(agent: Agent, handlers: list[tuple[str, Handler]]) -> Agent:
        for type, func in handlers:
            agent.on(type)(func)
        return agent


def _import(manifest: PluginManifest, directory: Path) -> ModuleType:
    root = str(directory.resolve())
    top = manifest.module.split(".")[0]
    loaded = sys.modules.get(top)
    if loaded is not None:
        origin = getattr(loaded, "__file__", None) or ""
        if not origin.startswith(root):
            where = origin or "a built-in module"
            raise plugin_error(
                directory,
                f"module {top!r} is already imported in this process from {where}: give "
                "the plugin's module another name, or run it in its own "
                "process (agentbus run --plugins)",
                file=MANIFEST_FILE,
                field="entry_point",
            )
    if root not in sys.path:
        sys.path.insert(0, root)
    try:
        return importlib.import_module(manifest.module)
    except SyntaxError as e:
        where = f"{Path(e.filename or '?').name}, line {e.lineno}"
        raise plugin_error(
            directory, f"syntax error in {where}: {e.msg}", field="entry_point"
        ) from e
    except ModuleNotFoundError as e:
        what = "its module" if e.name == top or e.name == manifest.module else f"{e.name!r}"
        raise plugin_error(
            directory,
            f"cannot import {manifest.module!r}: {what} was not found ({e})",
            file=MANIFEST_FILE,
            field="entry_point",
        ) from e
    except BaseException as e:
        if isinstance(e, KeyboardInterrupt | GeneratorExit):
            raise
        last = traceback.extract_tb(e.__traceback__)[-1:]
        at = f" at {Path(last[0].filename).name}:{last[0].lineno}" if last else ""
        raise plugin_error(
            directory,
            f"importing {manifest.module!r} raised {type(e).__name__}{at}: {e}",
            field="entry_point",
        ) from e


def load_plugin(directory: Path | str) -> Plugin:
    """Read, check and import the plugin in ``directory`` (raises ``PluginError``)."""
    directory = Path(directory)
    manifest = read_manifest(directory)
    check_environment(manifest, directory)
    module = _import(manifest, directory)
    target: Any = module
    for part in (manifest.attr or "").split(".") if manifest.attr else ():
        try:
            target = getattr(target, part)
        except AttributeError:
            raise plugin_error(
                directory,
                f"module {manifest.module!r} has no attribute {manifest.attr!r}",
                file=MANIFEST_FILE,
                field="entry_point",
            ) from None
    return Plugin(manifest, directory, target)

"""Writing plugin directories for tests: a manifest and a module, from a few arguments."""

from __future__ import annotations

import textwrap
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from agent_sdk.settings import Settings
from coordinator.plugins import PluginSupervisor

#: A plain module of @handler functions: ``echo`` answers with what it got, plus the version.
ECHO_CODE = """
from agent_sdk.plugin import handler

VERSION = {version!r}


@handler("echo")
async def echo(payload):
    return {{"echo": payload, "version": VERSION}}


@handler("healthcheck")
async def healthcheck(payload):
    return "ok"
"""


def write_plugin(
    root: Path,
    name: str,
    *,
    version: str = "1.0.0",
    role: str | None = None,
    module: str | None = None,
    code: str | None = None,
    dirname: str | None = None,
    **fields: Any,
) -> Path:
    """``root/<dirname or name>/`` with ``manifest.yaml`` and ``<module>.py``; returns it."""
    module = module or f"{name.replace('-', '_')}_mod"
    directory = root / (dirname or name)
    directory.mkdir(parents=True, exist_ok=True)
    manifest: dict[str, Any] = {
        "name": name,
        "version": version,
        "role": role or name,
        "entry_point": fields.pop("entry_point", module),
        "description": fields.pop("description", f"the {name} plugin"),
        **fields,
    }
    text = code if code is not None else ECHO_CODE.format(version=version)
    (directory / f"{module}.py").write_text(textwrap.dedent(text))
    (directory / "manifest.yaml").write_text(yaml.safe_dump(manifest, sort_keys=False))
    return directory


Make = Callable[..., PluginSupervisor]


@pytest.fixture
async def make_supervisor(settings: Settings) -> AsyncIterator[Make]:
    """A factory of plugin supervisors (not watching unless ``watch=True``), stopped after."""
    made: list[PluginSupervisor] = []

    def make(*roots: Path, **kwargs: Any) -> PluginSupervisor:
        kwargs.setdefault("debounce_ms", 100)
        supervisor = PluginSupervisor(settings, list(roots), **kwargs)
        made.append(supervisor)
        return supervisor

    yield make
    for supervisor in made:
        await supervisor.stop()

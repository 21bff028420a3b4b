"""Plugins shipped by installed packages (entry-point group ``agentbus.plugins``): found without
importing them, hosted by ``PluginSupervisor(installed=True)`` as any plugin directory, listed by
``agentbus plugins --installed``; a bad entry point is a clear failure. The "installed package"
is a real distribution: a ``.dist-info`` and a package in a directory put on ``sys.path``."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis
from click.testing import CliRunner

from agent_sdk import Bus
from agent_sdk.settings import Settings
from coordinator import Coordinator
from coordinator.cli import cli
from coordinator.plugins.installed import ENTRY_POINT_GROUP, installed_plugins
from schemas.events import RegistryEvent, RegistryEventType
from schemas.keys import KeySpace
from tests.plugin_support import Make, make_supervisor, write_plugin

__all__ = ["make_supervisor"]  # the fixture, used by name


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A site directory on ``sys.path`` holding the distribution ``acme-agents``: package
    ``acme_agents`` with the plugin ``shipped`` (a subpackage holding manifest.yaml), and entry
    points for it, for a plain module and for a module that is not installed."""
    site = tmp_path / "site"
    pkg = site / "acme_agents"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "helpers.py").write_text("X = 1\n")
    plugin = write_plugin(pkg, "shipped", version="3.1.0", module="shipped_mod",
                          description="Shipped in a wheel", tags=["packaged"])  # fmt: skip
    (plugin / "__init__.py").write_text("")
    dist = site / "acme_agents-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: acme-agents\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(
        f"[{ENTRY_POINT_GROUP}]\n"
        "shipped = acme_agents.shipped\n"
        "flat = acme_agents.helpers\n"
        "ghost = acme_ghost.plugin\n"
    )
    monkeypatch.syspath_prepend(str(site))
    yield site
    for name in [m for m in sys.modules if m.split(".")[0] == "acme_agents"]:
        del sys.modules[name]  # located through its parent package: imported, from this site


def test_entry_points_are_located_without_importing_the_plugin(site: Path) -> None:
    found = {p.entry_point: p for p in installed_plugins()}
    assert found["shipped"].directory == site / "acme_agents" / "shipped"
    assert found["shipped"].distribution == "acme-agents"
    assert found["shipped"].error == ""
    assert "is a module, not a package" in found["flat"].error
    assert found["flat"].directory is None
    assert "no module 'acme_ghost.plugin' is installed" in found["ghost"].error or \
        "cannot locate 'acme_ghost.plugin'" in found["ghost"].error  # fmt: skip


async def test_installed_plugins_are_hosted_and_listed(
    coordinator: Coordinator,
    settings: Settings,
    r: aioredis.Redis,
    keys: KeySpace,
    site: Path,
    make_supervisor: Make,
) -> None:
    runner_args = ["--redis-url", settings.url, "--namespace", settings.namespace]

    def listing() -> dict[str, Any]:
        result = CliRunner().invoke(cli, [*runner_args, "plugins", "--installed", "--json"])
        assert result.exit_code == 0, result.output
        return {row["name"]: row for row in orjson.loads(result.output)}

    rows = await asyncio.to_thread(listing)
    assert rows["shipped"]["status"] == "not loaded"
    assert rows["shipped"]["path"] == str(site / "acme_agents" / "shipped")
    assert rows["flat"]["status"] == "invalid"
    async with make_supervisor(installed=True), Bus(settings) as bus:
        reply = await bus.request(role="shipped", type="echo", payload="hi", timeout=10)
        assert reply == {"echo": "hi", "version": "3.1.0"}
        entry = await r.hgetall(keys.plugin("shipped"))
        assert (entry["status"], entry["version"]) == ("running", "3.1.0")
        raw: Any = await r.xrange(keys.events())
        failed = {e.name: e.reason for e in (RegistryEvent.from_fields(i, f) for i, f in raw)
                  if e.type is RegistryEventType.PLUGIN_FAILED}  # fmt: skip
        assert set(failed) == {"flat", "ghost"}
        assert "entry point flat = 'acme_agents.helpers' of acme-agents" in (failed["flat"] or "")
        rows = await asyncio.to_thread(listing)
        assert rows["shipped"]["status"] == "running"

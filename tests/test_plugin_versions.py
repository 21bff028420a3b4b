"""Versions side by side: two directories of one plugin at different versions run at once, a
SemVer range picks between them, ``agentbus plugins default`` decides where sends without a
range go, and the default follows a reload of its directory. Real redis-server and workers."""

from __future__ import annotations

import asyncio
import shutil
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import redis.asyncio as aioredis
from click.testing import CliRunner

from agent_sdk import Bus
from agent_sdk.settings import Settings
from coordinator import Coordinator
from coordinator.cli import cli
from schemas.events import RegistryEvent, RegistryEventType
from schemas.keys import KeySpace
from tests.plugin_support import Make, make_supervisor, write_plugin

__all__ = ["make_supervisor"]  # the fixture, used by name


async def _cli(settings: Settings, *args: str) -> tuple[int, str]:
    argv = ["--redis-url", settings.url, "--namespace", settings.namespace, *args]
    result = await asyncio.to_thread(CliRunner().invoke, cli, argv)
    return result.exit_code, result.output


async def _versions(bus: Bus, n: int, **target: Any) -> Counter[str]:
    replies = await asyncio.gather(
        *(bus.request(role="sum", type="echo", payload=i, timeout=10, **target) for i in range(n))
    )
    return Counter(reply["version"] for reply in replies)


async def test_two_versions_run_side_by_side_and_ranges_and_the_default_route(
    coordinator: Coordinator,
    settings: Settings,
    r: aioredis.Redis,
    keys: KeySpace,
    tmp_path: Path,
    make_supervisor: Make,
) -> None:
    v1 = write_plugin(tmp_path, "sum", version="1.0.0", dirname="sum-v1")
    v2 = write_plugin(tmp_path, "sum", version="2.0.0", dirname="sum-v2")
    async with make_supervisor(tmp_path) as supervisor, Bus(settings) as bus:
        agents = set(await r.smembers(keys.role_index("sum")))
        assert len(agents) == 2
        assert {a.split(".")[1] for a in agents} == {"a0", "c0"}  # one slot pair per version
        entry = await r.hgetall(keys.plugin("sum"))
        assert entry["versions"] == "1.0.0,2.0.0"
        assert entry["default"] == ""
        assert set(entry["agents"].split(",")) == agents
        assert await r.hget(keys.plugin_version("sum", "1.0.0"), "path") == str(v1)
        # ranges
        assert await _versions(bus, 10, version="^2") == Counter({"2.0.0": 10})
        assert await _versions(bus, 10, version="1.x") == Counter({"1.0.0": 10})
        assert await _versions(bus, 4, version="*") == Counter({"2.0.0": 4})  # the newest
        gathered = await bus.request_many("sum", "echo", 0, version=">=1", timeout=10)
        assert sorted(reply["version"] for _, reply in gathered) == ["1.0.0", "2.0.0"]
        # the default
        code, out = await _cli(settings, "plugins", "default", "sum", "1.0.0")
        assert code == 0, out
        assert "defaults to sum 1.0.0" in out
        assert await r.get(keys.role_default("sum")) == "1.0.0"
        assert await _versions(bus, 20) == Counter({"1.0.0": 20})
        assert await _versions(bus, 5, version="^2") == Counter({"2.0.0": 5})
        code, out = await _cli(settings, "plugins", "default", "sum")
        assert (code, out.strip()) == (0, "1.0.0")
        code, out = await _cli(settings, "plugins", "default", "sum", "3.0.0")
        assert code == 2  # the input is at fault
        assert "has no version '3.0.0' (known: 1.0.0, 2.0.0)" in out
        code, out = await _cli(settings, "plugins", "list", "--json")
        (row,) = orjson.loads(out)
        assert (row["versions"], row["default"], row["version"]) == ("1.0.0,2.0.0", "1.0.0",
                                                                     "1.0.0")  # fmt: skip
        code, out = await _cli(settings, "plugins", "show", "sum", "--json")
        shown = orjson.loads(out)
        assert [v["version"] for v in shown["by_version"]] == ["1.0.0", "2.0.0"]
        code, table = await _cli(settings, "plugins", "show", "sum")
        assert "versions side by side" in table
        assert "1.0.0 (default)" in table

        # a reload of the default's directory carries the default along
        write_plugin(tmp_path, "sum", version="1.1.0", dirname="sum-v1")
        await supervisor.apply({v1})
        assert await r.get(keys.role_default("sum")) == "1.1.0"
        assert await _versions(bus, 10) == Counter({"1.1.0": 10})
        assert not await r.exists(keys.plugin_version("sum", "1.0.0"))
        assert await r.hget(keys.plugin("sum"), "versions") == "1.1.0,2.0.0"

        # --clear: sends without a range reach any version again
        code, out = await _cli(settings, "plugins", "default", "sum", "--clear")
        assert code == 0, out
        assert not await r.exists(keys.role_default("sum"))
        await _cli(settings, "plugins", "default", "sum", "2.0.0")

        # the default's directory deleted: that version unloads, the default goes with it
        shutil.rmtree(v2)
        await supervisor.apply({v2})
        assert not await r.exists(keys.role_default("sum"))
        assert await r.hget(keys.plugin("sum"), "versions") == "1.1.0"
        assert await _versions(bus, 5) == Counter({"1.1.0": 5})
    assert await r.hget(keys.plugin("sum"), "status") == "stopped"


async def test_the_same_version_in_two_directories_is_refused(
    coordinator: Coordinator,
    settings: Settings,
    r: aioredis.Redis,
    keys: KeySpace,
    tmp_path: Path,
    make_supervisor: Make,
) -> None:
    first = write_plugin(tmp_path, "twin", version="1.0.0", dirname="twin-a")
    async with make_supervisor(tmp_path) as supervisor:
        second = write_plugin(tmp_path, "twin", version="1.0.0", dirname="twin-b")
        await supervisor.apply({second})
        rows: Any = await r.xrange(keys.events())
        failed = [e for e in (RegistryEvent.from_fields(i, f) for i, f in rows)
                  if e.type is RegistryEventType.PLUGIN_FAILED]  # fmt: skip
        assert len(failed) == 1
        assert f"'twin' 1.0.0 is already loaded from {first}" in (failed[0].reason or "")
        assert await r.scard(keys.role_index("twin")) == 1
        # given a version of its own, it runs beside the first
        write_plugin(tmp_path, "twin", version="1.1.0", dirname="twin-b")
        await supervisor.apply({second})
        assert await r.scard(keys.role_index("twin")) == 2
        assert await r.hget(keys.plugin("twin"), "versions") == "1.0.0,1.1.0"

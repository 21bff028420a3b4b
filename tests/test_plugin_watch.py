"""Watching plugin directories with real file changes: created → registered, changed → reloaded
(old drained), deleted → drained and deregistered, moved → followed; a crash soon after a
reload rolls back; reloads leak no process and no Redis key."""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import psutil
import pytest
import redis.asyncio as aioredis

from agent_sdk import Bus
from agent_sdk.settings import Settings
from coordinator import Coordinator
from coordinator.plugins import PluginSupervisor
from schemas.events import RegistryEvent, RegistryEventType
from schemas.keys import KeySpace
from tests.plugin_support import write_plugin
from tests.support import wait_for

Make = Callable[..., PluginSupervisor]


@pytest.fixture
async def make_supervisor(settings: Settings) -> AsyncIterator[Make]:
    made: list[PluginSupervisor] = []

    def make(*roots: Path, **kwargs: Any) -> PluginSupervisor:
        kwargs.setdefault("debounce_ms", 100)
        kwargs.setdefault("watch", True)
        supervisor = PluginSupervisor(settings, list(roots), **kwargs)
        made.append(supervisor)
        return supervisor

    yield make
    for supervisor in made:
        await supervisor.stop()


async def _agents(r: aioredis.Redis, keys: KeySpace) -> set[str]:
    return set(await r.smembers(keys.agents()))


async def _events(
    r: aioredis.Redis, keys: KeySpace, type: RegistryEventType
) -> list[RegistryEvent]:
    rows: Any = await r.xrange(keys.events())
    return [e for e in (RegistryEvent.from_fields(i, f) for i, f in rows) if e.type is type]


async def _version(bus: Bus, role: str) -> Any:
    reply = await bus.request(role=role, type="echo", payload=0, timeout=5)
    return reply["version"]


async def test_created_changed_moved_and_deleted_directories_are_followed(
    coordinator: Coordinator,
    settings: Settings,
    r: aioredis.Redis,
    keys: KeySpace,
    tmp_path: Path,
    make_supervisor: Make,
) -> None:
    root = tmp_path / "plugins"
    root.mkdir()
    async with make_supervisor(root), Bus(settings) as bus:
        assert await _agents(r, keys) == set()
        # created → registered
        write_plugin(root, "live", version="1.0.0")
        await wait_for(lambda: _agents(r, keys), timeout=20, message="the new plugin")
        assert await _agents(r, keys) == {"live.a0"}
        assert await _version(bus, "live") == "1.0.0"
        # changed → the new version serves, the old one drained
        saved = time.monotonic()
        write_plugin(root, "live", version="1.1.0")
        await wait_for(
            lambda: _events(r, keys, RegistryEventType.PLUGIN_RELOADED), timeout=20,
            message="reloaded",
        )  # fmt: skip
        took = time.monotonic() - saved
        assert await _agents(r, keys) == {"live.b0"}, took
        assert await _version(bus, "live") == "1.1.0"
        # moved → followed (the same plugin, now from its new place)
        (root / "live").rename(root / "live-moved")
        await wait_for(
            lambda: _count(r, keys, RegistryEventType.PLUGIN_RELOADED, 2), timeout=20,
            message="followed",
        )  # fmt: skip
        assert await r.hget(keys.plugin("live"), "path") == str(root / "live-moved")
        assert await _version(bus, "live") == "1.1.0"
        assert len(await _agents(r, keys)) == 1
        # deleted → drained and deregistered, gone from the catalogue
        shutil.rmtree(root / "live-moved")
        await wait_for(
            lambda: _events(r, keys, RegistryEventType.PLUGIN_UNLOADED), timeout=20,
            message="unloaded",
        )  # fmt: skip
        assert await _agents(r, keys) == set()
        assert not await r.exists(keys.plugin("live"))
        assert await r.smembers(keys.plugins()) == set()
    expired = await _events(r, keys, RegistryEventType.AGENT_EXPIRED)
    assert expired == []  # every agent that went, left (drained), none was cut off


async def _count(r: aioredis.Redis, keys: KeySpace, type: RegistryEventType, n: int) -> bool:
    return len(await _events(r, keys, type)) >= n


async def test_a_plugin_broken_by_an_edit_keeps_the_old_version_serving(
    coordinator: Coordinator,
    settings: Settings,
    r: aioredis.Redis,
    keys: KeySpace,
    tmp_path: Path,
    make_supervisor: Make,
) -> None:
    write_plugin(tmp_path, "steady", version="1.0.0")
    async with make_supervisor(tmp_path), Bus(settings) as bus:
        (tmp_path / "steady" / "steady_mod.py").write_text("def broken(:\n")
        (failed,) = await wait_for(
            lambda: _events(r, keys, RegistryEventType.PLUGIN_FAILED), timeout=20,
            message="plugin_failed",
        )  # fmt: skip
        assert "syntax error in steady_mod.py" in (failed.reason or "")
        assert await _agents(r, keys) == {"steady.a0"}
        assert await _version(bus, "steady") == "1.0.0"


CRASHES_LATER = """
import asyncio
import os

from agent_sdk.plugin import handler


@handler("echo")
async def echo(payload):
    asyncio.get_running_loop().call_later(0.3, os._exit, 9)   # serves, then crashes
    return {"echo": payload, "version": "2.0.0"}
"""


async def test_a_version_that_crashes_soon_after_a_reload_is_rolled_back(
    coordinator: Coordinator,
    settings: Settings,
    r: aioredis.Redis,
    keys: KeySpace,
    tmp_path: Path,
    make_supervisor: Make,
) -> None:
    directory = write_plugin(tmp_path, "fragile", version="1.0.0")
    supervisor = make_supervisor(tmp_path, probation=30.0, watch=False)
    async with supervisor, Bus(settings) as bus:
        write_plugin(tmp_path, "fragile", version="2.0.0", code=CRASHES_LATER)
        await supervisor.apply({directory})
        assert await _version(bus, "fragile") == "2.0.0"  # it served, then exits
        (failed,) = await wait_for(
            lambda: _events(r, keys, RegistryEventType.PLUGIN_FAILED), timeout=20,
            message="the crash",
        )  # fmt: skip
        assert "exited with status 9" in (failed.reason or "")
        await wait_for(
            lambda: _status_version(r, keys, "fragile", "running", "1.0.0"), timeout=20,
            message="rolled back",
        )  # fmt: skip
        assert await _version(bus, "fragile") == "1.0.0"


async def _status_version(
    r: aioredis.Redis, keys: KeySpace, name: str, status: str, version: str
) -> bool:
    entry = await r.hgetall(keys.plugin(name))
    return bool(entry.get("status") == status and entry.get("version") == version)


async def test_reloads_in_a_row_leak_no_process_and_no_redis_key(
    coordinator: Coordinator,
    settings: Settings,
    r: aioredis.Redis,
    keys: KeySpace,
    tmp_path: Path,
    make_supervisor: Make,
) -> None:
    directory = write_plugin(tmp_path, "churn", version="1.0.0")
    me = psutil.Process()
    async with make_supervisor(tmp_path, watch=False) as supervisor, Bus(settings) as bus:
        await _version(bus, "churn")
        for i in range(1, 4):  # warm up: both name slots used
            write_plugin(tmp_path, "churn", version=f"1.0.{i}")
            await supervisor.apply({directory})
        await _version(bus, "churn")
        baseline_keys = await _key_set(r, keys)
        baseline_children = len(me.children(recursive=True))
        for i in range(4, 14):
            write_plugin(tmp_path, "churn", version=f"1.0.{i}")
            await supervisor.apply({directory})
            assert await _version(bus, "churn") == f"1.0.{i}"
        await asyncio.sleep(2 * settings.ttl)  # the time under test: reply lists run out
        assert len(me.children(recursive=True)) == baseline_children
        now = await _key_set(r, keys)
        grown = now - baseline_keys
        # a reply list, a version's entry, the live host's lease set are named after instances
        left = [k for k in grown if not any(p in k for p in (":replies:", ":version:", ":lease:"))]
        assert not left, grown
        assert len([k for k in now if "}:lease:" in k]) <= 1  # the live host's only
        assert [k for k in now if ":version:" in k] == [keys.plugin_version("churn", "1.0.13")]
        assert len(list(supervisor._workdir.iterdir())) <= 2  # type: ignore[union-attr]


async def _key_set(r: aioredis.Redis, keys: KeySpace) -> set[str]:
    return {k async for k in r.scan_iter(match=keys.all_keys_pattern(), count=1000)}

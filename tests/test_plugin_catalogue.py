"""``agentbus plugins``: list, search and show over what hosts recorded and directories given;
``install`` validates a directory or an archive (refusing paths that escape) and places it."""

from __future__ import annotations

import asyncio
import io
import tarfile
import zipfile
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
from coordinator.plugins import PluginSupervisor
from schemas.keys import KeySpace
from tests.plugin_support import write_plugin


async def _cli(settings: Settings, *args: str) -> tuple[int, str]:
    argv = ["--redis-url", settings.url, "--namespace", settings.namespace, *args]
    result = await asyncio.to_thread(CliRunner().invoke, cli, argv)
    return result.exit_code, result.output


async def test_list_search_and_show_cover_running_failed_and_unloaded_plugins(
    coordinator: Coordinator, settings: Settings, r: aioredis.Redis, keys: KeySpace, tmp_path: Path
) -> None:
    hosted, elsewhere = tmp_path / "hosted", tmp_path / "elsewhere"
    write_plugin(hosted, "summarizer", version="1.2.0", description="Summarises documents",
                 tags=["text", "en"])  # fmt: skip
    write_plugin(hosted, "broken", code="import agentbus_nope\n")
    write_plugin(elsewhere, "translator", description="Translates text", tags=["text"])
    (elsewhere / "junk").mkdir()
    (elsewhere / "junk" / "manifest.yaml").write_text("name: [\n")
    async with PluginSupervisor(settings, [hosted]), Bus(settings) as bus:
        await bus.request(role="summarizer", type="echo", payload=1, timeout=5)
        code, out = await _cli(settings, "plugins", "list", "--dir", str(elsewhere), "--json")
        assert code == 0, out
        rows = {row["name"]: row for row in orjson.loads(out)}
        assert {n: rows[n]["status"] for n in rows} == {
            "broken": "failed", "junk": "invalid", "summarizer": "running",
            "translator": "not loaded",
        }  # fmt: skip
        assert rows["summarizer"]["agents"] == "summarizer.a0"
        assert "'agentbus_nope' was not found" in rows["broken"]["last_error"]
        assert str(hosted / "broken" / "manifest.yaml") in rows["broken"]["last_error"]
        assert "not valid YAML" in rows["junk"]["last_error"]
        # the table, without --json; the bare group lists too
        code, table = await _cli(settings, "plugins")
        assert code == 0
        assert "summarizer" in table
        assert "running" in table
        # search: every word, over name, description, tags, role
        code, out = await _cli(settings, "plugins", "search", "TEXT", "--dir", str(elsewhere),
                               "--json")  # fmt: skip
        assert sorted(row["name"] for row in orjson.loads(out)) == ["summarizer", "translator"]
        code, out = await _cli(settings, "plugins", "search", "text summarises", "--json")
        assert [row["name"] for row in orjson.loads(out)] == ["summarizer"]
        code, out = await _cli(settings, "plugins", "search", "nothing-like-it")
        assert "no plugin matches" in out
        # show: the entry, the manifest, its agents' usage
        code, out = await _cli(settings, "plugins", "show", "summarizer", "--json")
        assert code == 0, out
        shown = orjson.loads(out)
        assert (shown["version"], shown["status"]) == ("1.2.0", "running")
        assert orjson.loads(shown["manifest"])["tags"] == ["text", "en"]
        await _wait_usage(bus, settings)
        code, out = await _cli(settings, "plugins", "show", "summarizer", "--json")
        usage = orjson.loads(out)["usage"]["summarizer.a0"]
        assert sorted(u["type"] for u in usage) == ["echo", "healthcheck"]
        code, out = await _cli(settings, "plugins", "show", "summarizer")
        assert "usage by message type" in out
        code, out = await _cli(settings, "plugins", "show", "nobody")
        assert code == 2
        assert "no plugin named 'nobody'" in out
    # the host stopped: the plugins are still known, stopped
    code, out = await _cli(settings, "plugins", "--json")
    assert {row["name"]: row["status"] for row in orjson.loads(out)}["summarizer"] == "stopped"


async def _wait_usage(bus: Bus, settings: Settings) -> None:
    from agent_sdk.usage import read_usage
    from tests.support import wait_for

    await wait_for(lambda: read_usage(bus.client, settings, "summarizer.a0"), timeout=10,
                   message="usage flushed")  # fmt: skip


def _zip(path: Path, files: dict[str, str]) -> Path:
    with zipfile.ZipFile(path, "w") as z:
        for name, text in files.items():
            z.writestr(name, text)
    return path


def _tgz(path: Path, files: dict[str, str]) -> Path:
    with tarfile.open(path, "w:gz") as t:
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    return path


def _plugin_files(tmp_path: Path, name: str, prefix: str = "") -> dict[str, str]:
    source = write_plugin(tmp_path / "src", name)
    return {f"{prefix}{p.name}": p.read_text() for p in source.iterdir() if p.is_file()}


def _install(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, ["plugins", "install", *args])
    return result.exit_code, result.output


@pytest.mark.parametrize("kind", ["dir", "zip", "zip-nested", "tgz"])
def test_install_validates_and_places_a_directory_or_an_archive(tmp_path: Path, kind: str) -> None:
    name = f"inst-{kind}"
    if kind == "dir":
        path = write_plugin(tmp_path / "src", name)
    elif kind == "zip":
        path = _zip(tmp_path / "p.zip", _plugin_files(tmp_path, name))
    elif kind == "zip-nested":
        path = _zip(tmp_path / "p.zip", _plugin_files(tmp_path, name, prefix=f"{name}-1.0/"))
    else:
        path = _tgz(tmp_path / "p.tar.gz", _plugin_files(tmp_path, name))
    code, out = _install(str(path))
    assert code == 0, out
    assert f"ok: {name} 1.0.0" in out
    dest = tmp_path / "watched"
    code, out = _install(str(path), "--into", str(dest))
    assert code == 0, out
    assert (dest / name / "manifest.yaml").is_file()
    assert sorted(p.name for p in dest.iterdir()) == [name]  # no staging left
    code, out = _install(str(path), "--into", str(dest))
    assert code == 2
    assert "already exists" in out


@pytest.mark.parametrize(
    ("files", "says"),
    [
        ({"../evil.py": "x = 1"}, "'../evil.py' escapes the archive's directory"),
        ({"/etc/evil.py": "x = 1"}, "'/etc/evil.py' escapes"),
        ({"a/manifest.yaml": "x: 1", "b/manifest.yaml": "x: 1"}, "no manifest.yaml at the"),
        ({"manifest.yaml": "name: x\n"}, "version: Field required"),
    ],
)
@pytest.mark.parametrize("archive", ["zip", "tgz"])
def test_install_refuses_escaping_paths_and_bad_plugins(
    tmp_path: Path, files: dict[str, str], says: str, archive: str
) -> None:
    path = (_zip if archive == "zip" else _tgz)(tmp_path / f"p.{archive}", files)
    dest = tmp_path / "watched"
    code, out = _install(str(path), "--into", str(dest))
    assert code == 2, out
    assert says in out
    assert not (tmp_path / "evil.py").exists()
    assert not dest.exists() or list(dest.iterdir()) == []


def test_install_refuses_a_missing_dependency(tmp_path: Path) -> None:
    path = write_plugin(tmp_path, "needy", dependencies=["agentbus-not-there>=2"])
    code, out = _install(str(path))
    assert code == 2
    assert "'agentbus-not-there>=2' is not installed" in out


async def test_an_installed_plugin_goes_live_in_a_watched_directory(
    coordinator: Coordinator, settings: Settings, r: aioredis.Redis, keys: KeySpace, tmp_path: Path
) -> None:
    from tests.support import wait_for

    watched = tmp_path / "watched"
    watched.mkdir()
    archive = _zip(tmp_path / "p.zip", _plugin_files(tmp_path, "shipped"))
    async with PluginSupervisor(settings, [watched], watch=True, debounce_ms=100):
        code, out = await asyncio.to_thread(_install, str(archive), "--into", str(watched))
        assert code == 0, out
        await wait_for(lambda: r.hget(keys.plugin("shipped"), "status"), timeout=30,
                       message="live")  # fmt: skip
        entry: Any = await r.hgetall(keys.plugin("shipped"))
        assert (entry["status"], entry["path"]) == ("running", str(watched / "shipped"))
        assert await r.exists(keys.record("shipped.a0"))

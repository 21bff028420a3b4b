"""``agentbus new``: the generated plugin's own tests pass as generated, and a plugin created
inside a watched directory goes live by itself."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from click.testing import CliRunner

from agent_sdk import Bus
from agent_sdk.plugin_manifest import read_manifest
from agent_sdk.settings import Settings
from coordinator import Coordinator
from coordinator.cli import cli
from coordinator.plugins import PluginSupervisor
from schemas.keys import KeySpace
from tests.support import wait_for


def _new(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, ["new", *args])
    return result.exit_code, result.output


def _pytest(directory: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "AGENTBUS_"))}
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"],
        cwd=directory, env=env, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip


@pytest.mark.timeout(300)
def test_the_generated_plugin_is_valid_and_its_tests_pass(tmp_path: Path) -> None:
    code, output = _new("notes-bot", "--role", "notes", "--dir", str(tmp_path))
    assert code == 0, output
    target = tmp_path / "notes-bot"
    assert f"created {target}" in output
    assert sorted(p.name for p in target.rglob("*") if p.is_file()) == [
        "README.md", "agent.py", "conftest.py", "manifest.yaml", "test_notes_bot.py",
    ]  # fmt: skip
    manifest = read_manifest(target)
    assert (manifest.name, manifest.role, manifest.version) == ("notes-bot", "notes", "0.1.0")
    result = _pytest(target)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 passed" in result.stdout
    assert not list(tmp_path.glob(".*"))  # no staging directory left


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["bad name"], "invalid plugin name 'bad name'"),
        (["ok", "--role", "a:b"], "role: name 'a:b' has characters"),
    ],
)
def test_a_bad_name_or_role_is_refused(tmp_path: Path, args: list[str], says: str) -> None:
    code, output = _new(*args, "--dir", str(tmp_path))
    assert code == 2
    assert says in output
    assert list(tmp_path.iterdir()) == []


def test_an_existing_directory_is_never_overwritten(tmp_path: Path) -> None:
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "mine.txt").write_text("keep me")
    code, output = _new("taken", "--dir", str(tmp_path))
    assert code == 2
    assert "already exists" in output
    assert (tmp_path / "taken" / "mine.txt").read_text() == "keep me"


async def test_a_plugin_created_in_a_watched_directory_goes_live(
    coordinator: Coordinator, settings: Settings, r: aioredis.Redis, keys: KeySpace, tmp_path: Path
) -> None:
    async with PluginSupervisor(settings, [tmp_path], watch=True, debounce_ms=100):
        code, output = _new("greeter", "--dir", str(tmp_path))
        assert code == 0, output
        await wait_for(lambda: r.hget(keys.plugin("greeter"), "status"), timeout=30,
                       message="live")  # fmt: skip
        async with Bus(settings) as bus:
            reply = await bus.request(role="greeter", type="hello", payload={"name": "x"})
        assert reply == {"greeting": "hello, x", "from": "greeter"}
        assert await r.scard(keys.plugins()) == 1  # loaded once, never from its staging copy

"""The plugin format: manifest validation with clear errors, the environment check, and the
three kinds of entry point hosted on a real Redis with the manifest's card."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from agent_sdk import Bus, Host
from agent_sdk.errors import PluginError
from agent_sdk.plugin import load_plugin
from agent_sdk.plugin_manifest import read_manifest
from agent_sdk.settings import Settings
from coordinator import Coordinator
from schemas.keys import KeySpace
from schemas.plugin import PluginManifest
from tests.plugin_support import write_plugin


def _unique(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:8]}"


def _manifest_text(directory: Path, text: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "manifest.yaml").write_text(text)
    return directory


GOOD = """
name: summarizer
version: 1.2.0
description: Summarises documents.
role: summarizer
entry_point: agent:make
capabilities: [summarize]
tags: [en]
dependencies: ["pydantic>=2"]
api_version: "^1"
resources: {max_concurrency: 4, memory: 512MiB}
replicas: {min: 2, max: 4}
config: {model: small, depth: 3}
"""


def test_a_full_manifest_is_read(tmp_path: Path) -> None:
    manifest = read_manifest(_manifest_text(tmp_path / "p", GOOD))
    assert manifest.name == "summarizer"
    assert manifest.version == "1.2.0"
    assert (manifest.module, manifest.attr) == ("agent", "make")
    assert manifest.resources.memory == 512 * 1024 * 1024
    assert (manifest.replicas.min, manifest.replicas.max) == (2, 4)
    assert manifest.config == {"model": "small", "depth": 3}
    assert PluginManifest.model_validate_json(manifest.model_dump_json()) == manifest


@pytest.mark.parametrize(
    ("text", "field", "says"),
    [
        ("name: x\nrole: r\nentry_point: m\n", "version", "version: Field required"),
        (GOOD.replace("1.2.0", "1.2"), "version", "invalid version '1.2'"),
        (GOOD + "colour: blue\n", "colour", "colour: unknown field"),
        (GOOD.replace("min: 2, max: 4", "min: 3, max: 2"), "replicas", "below replicas.min"),
        (GOOD.replace('"pydantic>=2"', '"pydantic>>2"'), "dependencies", "invalid requirement"),
        (GOOD.replace("agent:make", "agent:make()"), "entry_point", "invalid entry point"),
        (GOOD.replace("name: summarizer", "name: 'sum marizer'"), "name", "invalid plugin name"),
        (GOOD.replace('"^1"', '"^^1"'), "api_version", "api_version"),
        (GOOD.replace("512MiB", "1KiB"), "resources.memory", "at least 64MiB"),
    ],
)
def test_a_bad_manifest_names_the_file_the_field_and_the_reason(
    tmp_path: Path, text: str, field: str, says: str
) -> None:
    directory = _manifest_text(tmp_path / "p", text)
    with pytest.raises(PluginError) as caught:
        read_manifest(directory)
    error = caught.value
    assert str(directory / "manifest.yaml") in str(error)
    assert says in str(error)
    assert error.code == "invalid_plugin"
    assert error.details["file"] == "manifest.yaml"
    assert error.details["field"] == field


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("name: [unclosed\n", "not valid YAML: line 2, column 1"),
        ("- a\n- b\n", "expected a mapping of fields"),
        ("", "expected a mapping of fields"),
    ],
)
def test_a_manifest_that_is_not_a_mapping_is_refused(tmp_path: Path, text: str, says: str) -> None:
    with pytest.raises(PluginError, match=says):
        read_manifest(_manifest_text(tmp_path / "p", text))


def test_a_directory_without_a_manifest_is_refused(tmp_path: Path) -> None:
    with pytest.raises(PluginError, match=r"no manifest\.yaml"):
        read_manifest(tmp_path)
    with pytest.raises(PluginError, match="not a directory"):
        read_manifest(tmp_path / "nowhere")


@pytest.mark.parametrize(
    ("deps", "says"),
    [
        (["agentbus-no-such-package>=1"], "'agentbus-no-such-package>=1' is not installed"),
        (["pydantic<2"], "'pydantic<2' is not met: pydantic 2."),
    ],
)
def test_missing_dependencies_are_refused_never_installed(
    tmp_path: Path, deps: list[str], says: str
) -> None:
    name = _unique("dep")
    directory = write_plugin(tmp_path, name, dependencies=deps)
    with pytest.raises(PluginError) as caught:
        load_plugin(directory)
    assert says in str(caught.value)
    assert "never installs" in str(caught.value)
    assert caught.value.details["field"] == "dependencies"


def test_dependencies_met_or_for_another_platform_pass(tmp_path: Path) -> None:
    name = _unique("dep")
    deps = ["pydantic>=2,<3", "PyYAML", "agentbus-no-such-package; python_version < '3'"]
    assert load_plugin(write_plugin(tmp_path, name, dependencies=deps)).name == name


def test_a_plugin_for_another_api_version_is_refused(tmp_path: Path) -> None:
    directory = write_plugin(tmp_path, _unique("api"), api_version="^2")
    with pytest.raises(PluginError, match=r"needs plugin API '\^2'; this agentbus offers 1\.0\.0"):
        load_plugin(directory)


@pytest.mark.parametrize(
    ("code", "entry", "says"),
    [
        ("def broken(:\n", None, "syntax error in {module}.py, line 1"),
        ("import agentbus_no_such_module\n", None, "'agentbus_no_such_module' was not found"),
        ("raise RuntimeError('boom at import')\n", None, "raised RuntimeError at {module}.py:1"),
        ("x = 1\n", None, "has no @handler functions"),
        ("x = 1\n", "{module}:missing", "has no attribute 'missing'"),
        ("x = 1\n", "{module}:x", "is int: expected an Agent"),
        ("def make():\n    return 42\n", "{module}:make", "the factory returned int"),
        ("def make():\n    raise ValueError('bad config')\n", "{module}:make", "bad config"),
        (
            "from agent_sdk.plugin import handler\n@handler('x')\ndef f(p):\n    return p\n",
            None,
            "must be an async def",
        ),
    ],
)
async def test_a_broken_entry_point_is_refused_with_its_reason(
    tmp_path: Path, settings: Settings, code: str, entry: str | None, says: str
) -> None:
    name = _unique("bad")
    module = f"{name}_mod"
    fields = {"entry_point": entry.format(module=module)} if entry else {}
    directory = write_plugin(tmp_path, name, module=module, code=code, **fields)

    async def load_and_build() -> None:
        await load_plugin(directory).build(Host(settings))

    with pytest.raises(PluginError) as caught:
        await load_and_build()
    assert says.format(module=module) in str(caught.value)
    assert str(directory) in str(caught.value)


def test_a_module_name_already_imported_elsewhere_is_refused(tmp_path: Path) -> None:
    directory = write_plugin(tmp_path, _unique("clash"), module="json")
    with pytest.raises(PluginError, match="module 'json' is already imported"):
        load_plugin(directory)


FACTORY = """
from agent_sdk.plugin import PluginContext


def make(ctx: PluginContext):
    agent = ctx.agent()

    @agent.on("config")
    async def config(payload):
        return {"config": ctx.config, "replica": ctx.replica}

    return agent
"""

ASYNC_FACTORY = """
from agent_sdk import Agent


async def make():
    agent = Agent("made-alone", "ignored-role")   # a lone agent: its handlers are copied

    @agent.on("config")
    async def config(payload):
        return {"config": "from a lone agent"}

    return agent
"""

MODULE_AGENT = """
from agent_sdk import Agent

agent = Agent("module-level", "ignored-role")


@agent.on("config")
async def config(payload):
    return {"config": "from a module-level agent"}
"""


@pytest.mark.parametrize(
    ("code", "attr", "expected"),
    [
        (FACTORY, "make", {"config": {"depth": 3}, "replica": 1}),
        (ASYNC_FACTORY, "make", {"config": "from a lone agent"}),
        (MODULE_AGENT, "agent", {"config": "from a module-level agent"}),
    ],
    ids=["factory", "async-factory", "module-agent"],
)
async def test_each_kind_of_entry_point_is_hosted_with_the_manifests_card(
    coordinator: Coordinator,
    settings: Settings,
    r: aioredis.Redis,
    keys: KeySpace,
    tmp_path: Path,
    code: str,
    attr: str,
    expected: dict[str, object],
) -> None:
    name = _unique("kind")
    module = f"{name}_mod"
    directory = write_plugin(
        tmp_path, name, module=module, code=code, entry_point=f"{module}:{attr}",
        version="2.1.0", role="worker", capabilities=["cfg"], tags=["t1"],
        config={"depth": 3}, replicas={"min": 2, "max": 2},
        resources={"max_concurrency": 3},
    )  # fmt: skip
    plugin = load_plugin(directory)
    host = Host(settings)
    agents = await plugin.build(host)
    assert [a.name for a in agents] == [f"{name}-0", f"{name}-1"]
    async with host, Bus(settings) as bus:
        record = await bus.get(f"{name}-1")
        assert record is not None
        assert (record.role, record.version, record.max_concurrency) == ("worker", "2.1.0", 3)
        assert (record.capabilities, record.tags) == (("cfg",), ("t1",))
        # the plugin host's keys, and the SDK's list of handled types (``handles``)
        assert record.metadata == {"plugin": name, "replica": "1", "handles": "config"}
        assert record.description == f"the {name} plugin"
        assert await bus.request(f"{name}-1", "config", {}, timeout=5) == expected
        assert {a.name for a in await bus.discover(role="worker", version="^2")} == {
            f"{name}-0",
            f"{name}-1",
        }
    assert not await r.exists(keys.record(f"{name}-0"))


async def test_a_module_of_handlers_needs_no_other_code(
    coordinator: Coordinator, settings: Settings, tmp_path: Path
) -> None:
    name = _unique("plain")
    plugin = load_plugin(write_plugin(tmp_path, name, version="1.4.0"))
    host = Host(settings)
    (agent,) = await plugin.build(host)
    assert agent.name == name
    assert set(agent.handlers.types) == {"echo", "healthcheck"}
    async with host, Bus(settings) as bus:
        reply = await bus.request(name, "echo", {"x": 1}, timeout=5)
        assert reply == {"echo": {"x": 1}, "version": "1.4.0"}
        assert await bus.request(name, "healthcheck", {}, timeout=5) == "ok"

"""``agentbus watch`` and ``agentbus stats`` through the CLI runner, against real agents."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import redis.asyncio as aioredis
from click.testing import CliRunner, Result

from agent_sdk import Agent, Bus
from agent_sdk.settings import Settings
from coordinator.cli import cli
from coordinator.service import Coordinator
from tests.support import wait_for


async def invoke(settings: Settings, *args: str) -> Result:
    """Run the CLI in a thread (it has its own event loop) while this loop serves the agents."""
    argv = ["--redis-url", settings.url, "--namespace", settings.namespace, *args]
    return await asyncio.to_thread(CliRunner().invoke, cli, argv)


def _lines(result: Result) -> list[dict[str, Any]]:
    assert result.exit_code == 0, result.output
    return [orjson.loads(line) for line in result.stdout.splitlines()]


async def _churn(settings: Settings) -> None:
    for name in ("cli-a", "cli-b"):
        async with Agent(name, "searcher", settings=settings):
            pass


async def test_watch_json_lines_parse_and_resume_from_a_revision(
    coordinator: Coordinator, settings: Settings
) -> None:
    await _churn(settings)
    first = _lines(await invoke(settings, "watch", "--json", "--since", "0", "--count", "3"))
    assert len(first) == 3
    assert first[0]["type"] == "agent_registered"
    assert first[0]["name"] == "cli-a"
    assert first[0]["role"] == "searcher"
    assert {"revision", "type", "name", "at"} <= set(first[0])
    # resume after the second event: the third comes next, exactly
    rest = _lines(
        await invoke(settings, "watch", "--json", "--since", first[1]["revision"], "--count", "1")
    )
    assert rest == [first[2]]
    # filtered by type
    only = ("--type", "agent_deregistered")
    gone = _lines(await invoke(settings, "watch", "--json", "--since", "0", *only, "--count", "2"))
    assert [(e["type"], e["name"]) for e in gone] == [
        ("agent_deregistered", "cli-a"),
        ("agent_deregistered", "cli-b"),
    ]


async def test_watch_by_default_shows_new_changes_human_readable(
    coordinator: Coordinator, settings: Settings, r: aioredis.Redis
) -> None:
    await _churn(settings)  # old changes: not shown without --since
    watcher = asyncio.create_task(invoke(settings, "watch", "--count", "1"))

    async def blocked() -> bool:  # the CLI's client is named after the namespace
        name = f"agentbus:{settings.namespace}"
        clients = await r.client_list()
        return any(c.get("cmd") == "xread" and c.get("name") == name for c in clients)

    await wait_for(blocked, message="watch blocked in XREAD")
    async with Agent("cli-new", "late", settings=settings):
        result = await asyncio.wait_for(watcher, 20)
    assert result.exit_code == 0, result.output
    (line,) = result.stdout.splitlines()
    assert "registered" in line
    assert "cli-new" in line
    assert "role=late" in line
    assert "rev " in line


async def test_watch_session_shows_its_activity(
    coordinator: Coordinator, settings: Settings
) -> None:
    async with Agent("helper", "assist", settings=settings) as agent:
        async with agent.activity("chat-9") as act:
            await act.thinking({"step": 1})
        async with agent.activity("chat-other") as act:
            await act.thinking({"step": 99})
        async with agent.activity("chat-9", tenant="acme") as act:  # another session
            await act.thinking({"step": 7})
    events = _lines(
        await invoke(settings, "watch", "--session", "chat-9", "--json", "--count", "3")
    )
    assert [(e["type"], e["seq"], e["session"]) for e in events] == [
        ("agent_started", 1, "chat-9"),
        ("agent_thinking", 2, "chat-9"),
        ("agent_completed", 3, "chat-9"),
    ]
    human = await invoke(settings, "watch", "--session", "chat-9", "--count", "2")
    assert human.exit_code == 0, human.output
    assert "agent_thinking" in human.stdout.splitlines()[1]
    assert '{"step":1}' in human.stdout
    acme = await invoke(settings, "watch", "--session", "chat-9", "--tenant", "acme", "--json",
                        "--count", "2")  # fmt: skip
    assert [e.get("payload") for e in _lines(acme)] == [None, {"step": 7}]
    alone = await invoke(settings, "watch", "--tenant", "acme")
    assert alone.exit_code == 2
    bad = await invoke(settings, "watch", "--session", "chat-9", "--role", "x")
    assert bad.exit_code == 2
    assert "--role and --type filter the registry feed" in bad.output


async def test_stats_shows_usage_by_agent_and_type(
    coordinator: Coordinator, settings: Settings
) -> None:
    async with Agent("stat-1", "worker", settings=settings) as agent, Bus(settings) as client:

        @agent.on("double")
        async def double(payload: Any) -> int:
            return int(payload) * 2

        for i in range(3):
            assert await client.request("stat-1", "double", i) == 2 * i
        assert agent.usage is not None
        await agent.usage.flush()  # agents flush every second; do not wait for it
        data = orjson.loads(_text(await invoke(settings, "stats", "--json")))
        human = await invoke(settings, "stats")
    assert data["stat-1"][0]["type"] == "double"
    assert data["stat-1"][0]["invocations"] == 3
    assert data["stat-1"][0]["errors"] == 0
    assert human.exit_code == 0, human.output
    assert "stat-1" in human.stdout
    assert "double" in human.stdout
    nothing = await invoke(settings, "stats", "nobody")
    assert "no usage recorded yet for nobody" in nothing.stdout


def _text(result: Result) -> str:
    assert result.exit_code == 0, result.output
    return result.stdout


async def test_agents_show_includes_the_usage_table(
    coordinator: Coordinator, settings: Settings
) -> None:
    async with Agent("shown", "worker", settings=settings) as agent, Bus(settings) as client:

        @agent.on("echo")
        async def echo(payload: Any) -> Any:
            return payload

        await client.request("shown", "echo", 1)
        assert agent.usage is not None
        await agent.usage.flush()
        human = await invoke(settings, "agents", "show", "shown")
        data = orjson.loads(_text(await invoke(settings, "agents", "show", "shown", "--json")))
    assert human.exit_code == 0, human.output
    assert "usage" in human.stdout
    assert "echo" in human.stdout
    assert data["usage"][0]["type"] == "echo"
    assert data["usage"][0]["invocations"] == 1

"""The CLI's registry side: agents (table, filters, JSON, show), coordinator, errors."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys

import click
import orjson
import pytest
from click.testing import CliRunner, Result

from agent_sdk import Agent
from agent_sdk.embedded import free_port
from agent_sdk.settings import Settings
from coordinator.cli import cli
from coordinator.health import check
from coordinator.service import Coordinator
from coordinator.settings import CoordinatorSettings
from tests.support import wait_for


def _args(settings: Settings, *args: str) -> list[str]:
    return ["--redis-url", settings.url, "--namespace", settings.namespace, *args]


async def invoke(settings: Settings, *args: str, **kw: object) -> Result:
    """Run the CLI in a thread (it has its own event loop) while this loop serves the agents."""
    runner = CliRunner()
    return await asyncio.to_thread(runner.invoke, cli, _args(settings, *args), **kw)  # type: ignore[arg-type]


def _fleet(settings: Settings) -> list[Agent]:
    return [
        Agent(
            "sum-1",
            "summarizer",
            capabilities=["summarize", "pdf"],
            tags=["en"],
            version="1.2.0",
            max_concurrency=4,
            settings=settings,
        ),
        Agent(
            "sum-2",
            "summarizer",
            capabilities=["summarize"],
            tags=["fr"],
            version="2.0.0",
            settings=settings,
        ),
        Agent(
            "rev-1", "reviewer", capabilities=["review"], tags=["en", "legal"], settings=settings
        ),
    ]


@pytest.mark.usefixtures("coordinator")
async def test_agents_table_filters_and_json(settings: Settings) -> None:
    fleet = _fleet(settings)
    for agent in fleet:
        await agent.start()
    try:
        fleet[2].set_status("busy")
        await wait_for(
            lambda: fleet[2].get("rev-1"),
            message="rev-1 registered",
        )
        table = await invoke(settings, "agents")
        assert table.exit_code == 0, table.output
        for text in ("sum-1", "sum-2", "rev-1", "summarizer", "1.2.0", "0/4", "summarize, pdf"):
            assert text in table.output

        async def names(*filters: str) -> list[str]:
            result = await invoke(settings, "agents", "--json", *filters)
            assert result.exit_code == 0, result.output
            return [a["name"] for a in orjson.loads(result.stdout)]

        assert await names() == ["rev-1", "sum-1", "sum-2"]  # sorted by role, then name
        assert await names("--role", "summarizer") == ["sum-1", "sum-2"]
        assert await names("--capability", "summarize", "--capability", "pdf") == ["sum-1"]
        assert await names("--tag", "fr", "--tag", "legal") == ["rev-1", "sum-2"]
        assert await names("--version", ">=2") == ["sum-2"]
        await wait_for(lambda: names("--status", "busy"), message="busy status visible")
        assert await names("--status", "busy") == ["rev-1"]
        assert await names("--role", "nobody") == []
        # every option is an environment variable: AGENTBUS_<COMMAND>_<OPTION>
        by_env = await invoke(
            settings, "agents", "--json", env={"AGENTBUS_AGENTS_ROLE": "reviewer"}
        )
        assert [a["name"] for a in orjson.loads(by_env.stdout)] == ["rev-1"]

        lines = await invoke(settings, "agents", "--jsonl", "--role", "reviewer")
        records = [orjson.loads(line) for line in lines.stdout.splitlines()]
        assert [(r["id"], r["role"], r["tags"]) for r in records] == [
            ("rev-1", "reviewer", ["en", "legal"])
        ]
    finally:
        for agent in fleet:
            await agent.stop()
    empty = await invoke(settings, "agents")
    assert "no live agents match" in empty.output


@pytest.mark.usefixtures("coordinator")
async def test_agents_show_prints_every_field(settings: Settings) -> None:
    async with Agent(
        "sum-1", "summarizer", capabilities=["summarize"], version="1.2.0", settings=settings
    ) as agent:
        shown = await invoke(settings, "agents", "show", "sum-1")
        assert shown.exit_code == 0, shown.output
        for field in ("name", "role", "instance_id", "registered_at", "last_seen", "ttl_ms"):
            assert field in shown.output
        assert agent.instance_id in shown.output
        as_json = await invoke(settings, "agents", "show", "sum-1", "--json")
        data = orjson.loads(as_json.stdout)
        assert data["instance_id"] == agent.instance_id
        assert data["usage"] == []  # no message handled yet
        assert "no usage recorded yet" in shown.output

        @agent.on("ping")
        async def ping(payload: object) -> str:
            return "pong"

        assert (await invoke(settings, "request", "sum-1", "ping")).exit_code == 0

        async def usage() -> list[dict[str, object]]:
            result = await invoke(settings, "agents", "show", "sum-1", "--json")
            return orjson.loads(result.stdout)["usage"]  # type: ignore[no-any-return]

        rows = await wait_for(usage, message="usage flushed to Redis")
        assert [(u["type"], u["invocations"], u["errors"]) for u in rows] == [("ping", 1, 0)]
        table = await invoke(settings, "agents", "show", "sum-1")
        assert "usage by message type" in table.stdout

    missing = await invoke(settings, "agents", "show", "sum-1")
    assert missing.exit_code == 1
    assert missing.stderr.startswith("agentbus: error [not_found]: no live agent named 'sum-1'")


def test_unreachable_redis_is_one_line_and_exit_1() -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    result = CliRunner().invoke(
        cli, ["--redis-url", url, "agents"], env={"AGENTBUS_RETRY_ATTEMPTS": "0"}
    )
    assert result.exit_code == 1
    assert result.stderr.startswith("agentbus: error [connection]: cannot reach Redis at " + url)
    assert len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.output


def test_bad_settings_are_one_line_and_exit_2() -> None:
    result = CliRunner().invoke(cli, ["--namespace", "Bad Namespace!", "agents"])
    assert result.exit_code == 2
    assert result.stderr.startswith("agentbus: error [configuration]: invalid agentbus settings")
    assert "namespace: invalid namespace 'Bad Namespace!'" in result.stderr
    bad_url = CliRunner().invoke(cli, ["--redis-url", "http://user:secret@x", "agents"])
    assert bad_url.exit_code == 2
    assert bad_url.stderr == (
        "agentbus: error [configuration]: invalid agentbus settings: redis_url: "
        "'http://user:***@x' must start with one of redis://, rediss://, unix://, "
        "redis+cluster://, rediss+cluster://, redis+sentinel://, rediss+sentinel://\n"
    )
    for bad in (result, bad_url):  # one line: no pydantic dump, no traceback, no password
        assert len(bad.stderr.splitlines()) == 1
        assert "pydantic" not in bad.stderr
        assert "secret" not in bad.stderr


@pytest.mark.usefixtures("coordinator")
def test_global_options_are_environment_variables(settings: Settings) -> None:
    env = {"AGENTBUS_REDIS_URL": settings.url, "AGENTBUS_NAMESPACE": settings.namespace}
    result = CliRunner().invoke(cli, ["coordinator", "check"], env=env)
    assert result.exit_code == 0, result.output
    assert f"namespace {settings.namespace}): healthy" in result.output


async def test_coordinator_check_exits_0_or_1(coordinator_settings: CoordinatorSettings) -> None:
    s = coordinator_settings
    down = await invoke(s, "coordinator", "check")
    assert down.exit_code == 1
    assert "NOT healthy" in down.stderr
    async with Coordinator(s):
        up = await invoke(s, "coordinator", "check", "--id", s.coordinator_id)
        assert up.exit_code == 0, up.output
        other = await invoke(s, "coordinator", "check", "--id", "someone-else", "--quiet")
        assert other.exit_code == 1
        assert other.output == ""


def test_every_command_has_help() -> None:
    runner = CliRunner()

    def walk(group: click.Group, path: list[str]) -> list[list[str]]:
        found = [path]
        for name, cmd in group.commands.items():
            if isinstance(cmd, click.Group):
                found += walk(cmd, [*path, name])
            else:
                found.append([*path, name])
        return found

    paths = walk(cli, [])
    assert ["deadletter", "replay"] in paths
    assert ["agents", "show"] in paths
    for path in paths:
        result = runner.invoke(cli, [*path, "--help"])
        assert result.exit_code == 0, (path, result.output)


async def test_agentbus_coordinator_runs_the_daemon_until_sigterm(
    coordinator_settings: CoordinatorSettings,
) -> None:
    s = coordinator_settings
    env = {
        **os.environ,
        "AGENTBUS_REDIS_URL": s.url,
        "AGENTBUS_NAMESPACE": s.namespace,
        "AGENTBUS_COORDINATOR_ID": "cli-daemon",
        "AGENTBUS_HEALTH_INTERVAL": "0.2",
    }
    proc = subprocess.Popen(  # noqa: ASYNC220 (started once; the test awaits its exit in a thread)
        [sys.executable, "-m", "coordinator.cli", "coordinator"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        await wait_for(lambda: check(s, "cli-daemon"), timeout=30, message="daemon healthy")
        proc.send_signal(signal.SIGTERM)
        out, _ = await asyncio.to_thread(proc.communicate, timeout=30)
        assert proc.returncode == 0, out.decode()
        assert not await check(s, "cli-daemon")  # the health key left with it
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def test_coordinator_check_with_redis_down_exits_1() -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    result = CliRunner().invoke(cli, ["--redis-url", url, "coordinator", "check"])
    assert result.exit_code == 1
    assert "NOT healthy" in result.stderr
    assert "Traceback" not in result.output

"""CLI fit and finish: hints that name CLI flags, usage errors for bad input (exit 2, one line),
help that is not cut, tables readable at 80 columns, honest stats, and a fast failure (with a
hint) when nothing listens at the URL."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from typing import Any

import click
import orjson
import pytest
import redis.asyncio as aioredis
from click.testing import CliRunner, Result

from agent_sdk import Agent
from agent_sdk.embedded import free_port
from agent_sdk.settings import Settings
from coordinator.cli import cli
from coordinator.cli.base import CliState
from coordinator.cli.reach import UP_URL, reach
from schemas.errors import ConnectionFailed

NARROW = {"COLUMNS": "80"}


def _args(settings: Settings, *args: str) -> list[str]:
    return ["--redis-url", settings.url, "--namespace", settings.namespace, *args]


async def invoke(settings: Settings, *args: str, env: dict[str, str] | None = None) -> Result:
    """Run the CLI in a thread (it has its own event loop) while this loop serves the agents."""
    runner = CliRunner()
    return await asyncio.to_thread(runner.invoke, cli, _args(settings, *args), env=env)


def _one_line_error(result: Result, code: int) -> str:
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


async def test_not_found_hints_name_the_cli_flag(settings: Settings) -> None:
    sent = await invoke(settings, "send", "ghost", "note", '{"n": 1}')
    line = _one_line_error(sent, 1)
    assert line.startswith("agentbus: error [not_found]: agent 'ghost' is not registered")
    assert "--queue-if-absent" in line
    assert "queue_if_absent=True" not in line
    asked = await invoke(settings, "request", "ghost", "note", "--timeout", "1")
    line = _one_line_error(asked, 1)
    assert "[not_found]" in line
    assert "queue" not in line  # a request cannot be queued for later: no hint


def test_request_help_is_current() -> None:
    text = CliRunner().invoke(cli, ["request", "--help"]).output
    assert "[default: request_timeout]" not in text
    assert "AGENTBUS_REQUEST_TIMEOUT" in text
    assert '"missing"' in text  # what --all prints
    assert "{name: reply}." not in text


@pytest.mark.parametrize(
    "args",
    [
        ["deadletter", "show", "nonsense"],
        ["deadletter", "replay", "1-0", "nonsense"],
        ["watch", "--since", "bad"],
        ["watch", "--session", "s1", "--since", "12-ab"],
    ],
)
def test_a_malformed_stream_id_is_a_usage_error(args: list[str]) -> None:
    # a port nothing listens on: the id is refused before anything connects
    url = f"redis://127.0.0.1:{free_port()}/0"
    result = CliRunner().invoke(cli, ["--redis-url", url, *args])
    assert result.exit_code == 2, result.output
    assert "is not a stream entry id" in result.stderr
    assert "connection" not in result.stderr.lower()


async def test_a_bad_name_is_one_line_and_exit_2(settings: Settings) -> None:
    line = _one_line_error(await invoke(settings, "send", "bad name", "note"), 2)
    assert "agent name 'bad name' has characters that cannot be part of a Redis key" in line
    line = _one_line_error(await invoke(settings, "agents", "show", "no:colon"), 2)
    assert "no:colon" in line


def test_no_help_is_cut_at_80_columns() -> None:
    runner = CliRunner()

    def groups(group: click.Group, path: list[str]) -> list[list[str]]:
        found = [path]
        for name, cmd in group.commands.items():
            if isinstance(cmd, click.Group):
                found += groups(cmd, [*path, name])
        return found

    for path in groups(cli, []):
        text = runner.invoke(cli, [*path, "--help"], env=NARROW).output
        listing = text.split("Commands:", 1)[1]
        assert "..." not in listing, (path, listing)
        for line in listing.strip().splitlines():
            assert line.rstrip().endswith((".", ")")), (path, line)


def _widest(text: str) -> int:
    return max(len(line) for line in text.splitlines())


@pytest.mark.usefixtures("coordinator")
async def test_the_agents_table_fits_80_columns_without_cutting_names(settings: Settings) -> None:
    names = ["summarizer-eu-west-1", "reviewer-legal-en-2"]
    agents = [
        Agent(
            names[0], "summarizer", capabilities=["summarize", "pdf", "translate"],
            tags=["en", "legal"], version="1.2.0-rc.1", settings=settings,
        ),
        Agent(names[1], "reviewer", capabilities=["review"], settings=settings),
    ]  # fmt: skip
    for agent in agents:
        await agent.start()
    try:
        narrow = await invoke(settings, "agents", env=NARROW)
        wide = await invoke(settings, "agents", env={"COLUMNS": "250"})
    finally:
        for agent in agents:
            await agent.stop()
    assert narrow.exit_code == 0, narrow.output
    assert _widest(narrow.stdout) <= 80, narrow.stdout
    lines = narrow.stdout.splitlines()
    for name in names:  # each name whole, on one line
        assert any(line.split()[:1] == [name] for line in lines), narrow.stdout
    assert "ready" in narrow.stdout
    assert "too narrow for:" in narrow.stdout  # what was left out is said
    assert "summarize, pdf, translate" in wide.stdout  # everything, given the room
    assert "too narrow" not in wide.stdout


async def test_dead_letter_ids_do_not_wrap_at_80_columns(
    settings: Settings, r: aioredis.Redis
) -> None:
    keys = settings.keys
    ids = []
    for i in range(3):
        entry: Any = await r.xadd(
            keys.deadletter(),
            {
                "reason": f"invalid envelope: colour{i}: unknown field (not allowed here) " * 2,
                "code": "undecodable", "source": keys.inbox(f"some-agent-with-a-long-name-{i}"),
                "source_id": "1-0", "failed_at": "2026-11-21T10:00:00.000Z",
                "orig.type": "summarize", "orig.colour": "red",
            },
        )  # fmt: skip
        ids.append(entry)
    listing = await invoke(settings, "deadletter", "list", env=NARROW)
    assert listing.exit_code == 0, listing.output
    assert _widest(listing.stdout) <= 80, listing.stdout
    lines = listing.stdout.splitlines()
    for letter_id in ids:
        assert any(line.split()[:1] == [letter_id] for line in lines), listing.stdout

    shown = await invoke(settings, "deadletter", "show", ids[0])
    assert shown.exit_code == 0, shown.output
    for text in (
        ids[0],
        "undecodable",
        "orig.colour",
        "red",
        keys.inbox("some-agent-with-a-long-name-0"),
    ):
        assert text in shown.stdout
    as_json = orjson.loads((await invoke(settings, "deadletter", "show", ids[0], "--json")).stdout)
    assert as_json["id"] == ids[0]
    assert as_json["original"] == {"type": "summarize", "colour": "red"}
    missing = await invoke(settings, "deadletter", "show", "1-1")
    assert "no dead letter '1-1'" in _one_line_error(missing, 2)


@pytest.mark.usefixtures("coordinator")
async def test_stats_are_the_current_instance_s_and_consistent(settings: Settings) -> None:
    first = Agent("counter", "worker", settings=settings)

    @first.on("ping")
    async def ping(payload: Any) -> str:
        return "pong"

    async with first:
        assert await first.request("counter", "ping", None, timeout=5) == "pong"
        assert first.usage is not None
        await first.usage.flush()
        data = orjson.loads((await invoke(settings, "stats", "counter", "--json")).stdout)
        (row,) = data["counter"]
        assert row["invocations"] == 1
        assert row["p50_ms"] == row["p95_ms"] == row["mean_ms"] == row["max_ms"]
        table = await invoke(settings, "stats", "counter", env=NARROW)
        assert _widest(table.stdout) <= 80, table.stdout
        assert "counter" in table.stdout
        assert "ping" in table.stdout

    second = Agent("counter", "worker", settings=settings)
    async with second:  # a new instance of the name: none of the first one's calls
        data = orjson.loads((await invoke(settings, "stats", "counter", "--json")).stdout)
        assert data["counter"] == []


def test_a_refused_connection_fails_at_once_with_a_hint() -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    started = time.monotonic()
    result = CliRunner().invoke(cli, ["--redis-url", url, "agents"])  # default retries
    took = time.monotonic() - started
    line = _one_line_error(result, 1)
    assert took < 1.5, f"took {took:.2f}s"
    assert line.startswith(f"agentbus: error [connection]: cannot reach Redis at {url}")
    assert "agentbus up" in line


def test_the_default_url_hint_names_the_url_agentbus_up_serves() -> None:
    unreachable = Settings(redis_url=f"redis://127.0.0.1:{free_port()}/0")
    with pytest.raises(ConnectionFailed) as caught:
        reach(unreachable, given=False)
    assert f"export AGENTBUS_REDIS_URL={UP_URL}" in caught.value.description
    assert "the default URL" in caught.value.description
    assert UP_URL == "redis://127.0.0.1:6390/0"  # what `agentbus up` prefers (DEFAULT_PORT)


def test_the_default_url_is_documented_in_help() -> None:
    text = CliRunner().invoke(cli, ["--help"], env={"COLUMNS": "200"}).output
    assert "redis://127.0.0.1:6379/0" in text
    assert UP_URL in text


async def test_no_live_agents_on_the_default_url_reminds_of_agentbus_up(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without --redis-url the CLI talks to Redis's own port, where an `agentbus up` bus is
    not: an empty answer there says where that bus is. (The real 6379 is never used: the
    settings are the test server's, only the user "gave" no URL.)"""
    given = await invoke(settings, "agents")
    assert "no live agents match" in given.stdout
    assert UP_URL not in given.stdout
    monkeypatch.setattr(CliState, "settings", lambda self, **overrides: settings)
    default = await asyncio.to_thread(CliRunner().invoke, cli, ["agents"])
    assert default.exit_code == 0, default.output
    assert f"bus started by `agentbus up` is at {UP_URL}" in default.stdout


async def test_agentbus_coordinator_says_once_that_it_runs(settings: Settings) -> None:
    from coordinator.settings import CoordinatorSettings

    s = CoordinatorSettings(
        redis_url=settings.url, namespace=settings.namespace, coordinator_id="said-so"
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "coordinator.cli", "coordinator",
        env={**os.environ, "AGENTBUS_REDIS_URL": s.url, "AGENTBUS_NAMESPACE": s.namespace,
             "AGENTBUS_COORDINATOR_ID": "said-so"},
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        assert proc.stderr is not None
        line = (await asyncio.wait_for(proc.stderr.readline(), 30)).decode()
    finally:
        proc.terminate()
        await proc.wait()
    assert line.startswith(f"agentbus coordinator said-so: running on {s.display_url}")
    assert f"namespace {s.namespace}" in line

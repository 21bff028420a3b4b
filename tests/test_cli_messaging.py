"""The CLI's data plane: send, request (and --all), broadcast, publish, subscribe, deadletter."""

from __future__ import annotations

import asyncio
import sys
from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis
from click.testing import CliRunner, Result

from agent_sdk import Agent, Bus
from agent_sdk.settings import Settings
from coordinator.cli import cli
from tests.support import wait_for

pytestmark = pytest.mark.usefixtures("coordinator")


async def invoke(settings: Settings, *args: str) -> Result:
    """Run the CLI in a thread (it has its own event loop) while this loop serves the agents."""
    argv = ["--redis-url", settings.url, "--namespace", settings.namespace, *args]
    return await asyncio.to_thread(CliRunner().invoke, cli, argv)


def _worker(settings: Settings, name: str, got: list[tuple[str, Any]]) -> Agent:
    agent = Agent(name, "worker", settings=settings)

    @agent.on("note")
    async def note(payload: Any) -> None:
        got.append((name, payload))

    @agent.on("double")
    async def double(payload: dict[str, int]) -> dict[str, int]:
        return {"n": payload["n"] * 2, "by": name}  # type: ignore[dict-item]

    @agent.on("fail")
    async def fail(payload: Any) -> None:
        raise ValueError("this handler always fails")

    return agent


async def test_send_to_a_name_and_to_a_role(settings: Settings) -> None:
    got: list[tuple[str, Any]] = []
    async with _worker(settings, "w1", got):
        sent = await invoke(settings, "send", "w1", "note", '{"text": "hi"}')
        assert sent.exit_code == 0, sent.output
        assert sent.stdout.strip()  # the message id
        anycast = await invoke(settings, "send", "--role", "worker", "note", "[1, 2]")
        assert anycast.exit_code == 0, anycast.output
        await wait_for(lambda: len(got) == 2, message="both messages handled")
        assert sorted(got, key=str) == sorted([("w1", {"text": "hi"}), ("w1", [1, 2])], key=str)

    gone = await invoke(settings, "send", "w1", "note")
    assert gone.exit_code == 1
    assert gone.stderr.startswith("agentbus: error [not_found]")
    bad = await invoke(settings, "send", "w1", "note", "{not json")
    assert bad.exit_code == 2
    assert "PAYLOAD must be JSON" in bad.output
    few = await invoke(settings, "send", "w1")
    assert few.exit_code == 2
    assert "expected NAME TYPE [PAYLOAD]" in few.output


async def test_request_prints_the_reply_or_the_error_code(settings: Settings) -> None:
    async with _worker(settings, "w1", []), _worker(settings, "w2", []):
        reply = await invoke(settings, "request", "w1", "double", '{"n": 21}')
        assert reply.exit_code == 0, reply.output
        assert orjson.loads(reply.stdout) == {"n": 42, "by": "w1"}

        by_role = await invoke(settings, "request", "--role", "worker", "double", '{"n": 1}')
        assert orjson.loads(by_role.stdout)["by"] in ("w1", "w2")

        gathered = await invoke(
            settings, "request", "--role", "worker", "--all", "double", '{"n": 2}'
        )
        assert gathered.exit_code == 0, gathered.output
        assert orjson.loads(gathered.stdout) == {
            "replies": {"w1": {"n": 4, "by": "w1"}, "w2": {"n": 4, "by": "w2"}},
            "errors": {},
            "missing": [],
        }

        failed = await invoke(settings, "request", "w1", "fail")
        assert failed.exit_code == 1
        assert failed.stderr.startswith("agentbus: error [handler_error]: ")
        assert "this handler always fails" in failed.stderr

        unknown = await invoke(settings, "request", "w1", "no-such-type")
        assert unknown.exit_code == 1
        assert unknown.stderr.startswith("agentbus: error [unknown_type]")

    nobody = await invoke(settings, "request", "--role", "worker", "double", '{"n": 1}')
    assert nobody.exit_code == 1
    assert nobody.stderr.startswith("agentbus: error [no_responders]")
    no_role = await invoke(settings, "request", "--all", "w1", "double")
    assert no_role.exit_code == 2
    assert "--all needs --role" in no_role.output


async def test_request_timeout_exits_with_the_timeout_code(settings: Settings) -> None:
    release = asyncio.Event()
    async with Agent("slow", "worker", settings=settings) as slow:

        @slow.on("wait")
        async def wait(payload: Any) -> str:
            await release.wait()
            return "late"

        result = await invoke(settings, "request", "--timeout", "0.3", "slow", "wait")
        release.set()
    assert result.exit_code == 1
    assert result.stderr.startswith("agentbus: error [timeout]")


async def test_broadcast_reaches_every_live_agent(settings: Settings) -> None:
    got: list[tuple[str, Any]] = []
    async with _worker(settings, "w1", got), _worker(settings, "w2", got):
        result = await invoke(settings, "broadcast", "note", '"all hands"')
        assert result.exit_code == 0, result.output
        assert int(result.stdout) >= 2
        await wait_for(lambda: len(got) == 2, message="both agents got the broadcast")
        assert sorted(got) == [("w1", "all hands"), ("w2", "all hands")]


async def test_subscribe_prints_what_publish_sends(settings: Settings, r: aioredis.Redis) -> None:
    # A subprocess: two CliRunners at once would share (swap) sys.stdout.
    listener = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "coordinator.cli",
        "--redis-url", settings.url, "--namespace", settings.namespace,
        "subscribe", "news.*", "--count", "2", "--json",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        await wait_for(
            lambda: _pattern_subscriber(r, settings.namespace),
            timeout=30,
            message="the CLI's pattern subscription",
        )
        first = await invoke(settings, "publish", "news.eu", '{"headline": "one"}')
        assert first.exit_code == 0, first.output
        assert int(first.stdout) >= 1
        async with Bus(settings) as bus:
            await bus.publish("sports.eu", {"headline": "not matched"})
            await bus.publish("news.us", {"headline": "two"})
        out, err = await asyncio.wait_for(listener.communicate(), 30)
    finally:
        if listener.returncode is None:
            listener.kill()
            await listener.communicate()
    assert listener.returncode == 0, err.decode()
    envelopes = [orjson.loads(line) for line in out.decode().splitlines()]
    assert [e["payload"]["headline"] for e in envelopes] == ["one", "two"]
    assert "subscribed to 'news.*'" in err.decode()


async def _pattern_subscriber(r: aioredis.Redis, namespace: str) -> bool:
    """A client of this namespace (agentbus names its connections) holds a pattern subscription."""
    clients = await r.client_list()
    return any(
        c.get("name") == f"agentbus:{namespace}" and int(c.get("psub", 0)) > 0 for c in clients
    )


async def test_deadletter_list_and_replay(settings: Settings) -> None:
    got: list[Any] = []
    async with Agent("w1", "worker", settings=settings) as agent:
        sent = await invoke(settings, "send", "w1", "later", '{"k": 1}')
        assert sent.exit_code == 0, sent.output

        async def letters() -> list[dict[str, Any]]:
            listed = await invoke(settings, "deadletter", "list", "--json")
            assert listed.exit_code == 0, listed.output
            return orjson.loads(listed.stdout)  # type: ignore[no-any-return]

        found = await wait_for(letters, message="the unhandled message is dead-lettered")
        assert [(d["type"], d["code"]) for d in found] == [("later", "unknown_type")]
        table = await invoke(settings, "deadletter", "list")
        assert "unknown_type" in table.stdout

        @agent.on("later")  # the fix: now there is a handler
        async def later(payload: Any) -> None:
            got.append(payload)

        replayed = await invoke(settings, "deadletter", "replay", found[0]["id"])
        assert replayed.exit_code == 0, replayed.output
        assert replayed.stdout.startswith(f"replayed {found[0]['id']} as ")
        await wait_for(lambda: got == [{"k": 1}], message="the replayed message is handled")
        assert await letters() == []

    usage = await invoke(settings, "deadletter", "replay")
    assert usage.exit_code == 2
    assert "give dead letter IDs or --all" in usage.output

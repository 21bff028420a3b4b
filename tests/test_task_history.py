"""Task history: each handled message's outcome in a bounded per-agent stream, written with the
usage stats' flush (no round trip of its own), read newest first with a cursor, CLI."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis
from click.testing import CliRunner

from agent_sdk import Agent, Bus, Settings
from agent_sdk.connection import make_client
from agent_sdk.task_history import TaskBuffer, read_tasks
from agent_sdk.usage import UsageRecorder
from coordinator import Coordinator
from coordinator.cli import cli
from schemas.errors import ConnectionFailed, InvalidInput, RemoteError
from schemas.keys import KeySpace
from tests.support import wait_for


async def test_every_handled_message_is_recorded_with_its_outcome(
    coordinator: Coordinator, settings: Settings, r: aioredis.Redis, keys: KeySpace
) -> None:
    async with (
        Agent("worker-1", "worker", settings=settings) as worker,
        Agent("caller", "client", settings=settings) as caller,
    ):

        @worker.on("work")
        async def work(payload: dict[str, bool]) -> str:
            if payload["fail"]:
                raise RuntimeError("boom")
            return "done"

        await caller.request("worker-1", "work", {"fail": False}, headers={"session": "chat-7"})
        with pytest.raises(RemoteError):
            await caller.request("worker-1", "work", {"fail": True})
        with pytest.raises(RemoteError):
            await caller.request("worker-1", "nothing-handles-this", {})
        await caller.send("worker-1", "work", {"fail": False})

        async def four() -> Any:
            found, _ = await read_tasks(r, settings, "worker-1")
            return found if len(found) == 4 else None

        tasks = await wait_for(four, message="four tasks flushed")
        instance = worker.instance_id
    newest_first = [(t.type, t.kind, t.outcome, t.ok) for t in tasks]
    assert newest_first == [
        ("work", "send", "ok", True),
        ("nothing-handles-this", "request", "unknown_type", False),
        ("work", "request", "handler_error", False),
        ("work", "request", "ok", True),
    ]
    assert {t.sender for t in tasks} == {"caller"}
    assert {t.instance for t in tasks} == {instance}
    assert [t.session for t in tasks] == [None, None, None, "chat-7"]
    assert all(t.duration_ms >= 0 and t.start.endswith("Z") for t in tasks)
    assert [t.start for t in tasks] == sorted((t.start for t in tasks), reverse=True)
    assert len({t.id for t in tasks}) == 4
    # readable in redis-cli: flat strings
    (entry,) = await r.xrevrange(keys.tasks("worker-1"), count=1)
    assert entry[1]["outcome"] == "ok"
    assert entry[1]["type"] == "work"


async def test_a_flush_writes_a_thousand_tasks_in_one_script_call(
    settings: Settings, r: aioredis.Redis, keys: KeySpace
) -> None:
    client = make_client(settings)
    try:
        rec = UsageRecorder(client, settings, "busy", interval=3600)
        await rec.flush()  # claims the hash (and loads the script)
        before = await _evalsha_calls(r)
        for i in range(1000):
            rec.record("t", 0.001)
            rec.tasks.add(f"m{i}", "t", "someone", "send", None, 1.7e9 + i, 0.001, None)
        await rec.flush()
        assert await _evalsha_calls(r) - before == 1
    finally:
        await client.aclose()
    assert await r.xlen(keys.tasks("busy")) == 1000
    tasks, cursor = await read_tasks(r, settings, "busy", limit=10)
    assert [t.id for t in tasks] == [f"m{i}" for i in range(999, 989, -1)]
    older, _ = await read_tasks(r, settings, "busy", limit=10, before=cursor)
    assert [t.id for t in older] == [f"m{i}" for i in range(989, 979, -1)]


async def _evalsha_calls(r: aioredis.Redis) -> int:
    stats: dict[str, Any] = await r.info("commandstats")
    return int(stats.get("cmdstat_evalsha", {}).get("calls", 0)) + int(
        stats.get("cmdstat_eval", {}).get("calls", 0)
    )


async def test_the_history_is_bounded(
    settings: Settings, r: aioredis.Redis, keys: KeySpace
) -> None:
    small = settings.model_copy(update={"task_history": 10})
    client = make_client(small)
    try:
        rec = UsageRecorder(client, small, "bounded", interval=3600)
        for flush in range(30):
            for i in range(50):  # more than the bound between two flushes: the newest 10 kept
                rec.tasks.add(f"m{flush}-{i}", "t", "x", "send", None, 1.7e9, 0.001, None)
            assert len(rec.tasks) == 10
            await rec.flush()
    finally:
        await client.aclose()
    # MAXLEN ~ trims whole stream nodes (up to 100 entries each): about the bound, never 300
    assert 10 <= await r.xlen(keys.tasks("bounded")) <= 10 + 100
    newest, _ = await read_tasks(r, settings, "bounded", limit=10)
    assert [t.id for t in newest] == [f"m29-{i}" for i in range(49, 39, -1)]


async def test_no_history_when_the_setting_is_zero(
    coordinator: Coordinator, settings: Settings, r: aioredis.Redis, keys: KeySpace
) -> None:
    off = settings.model_copy(update={"task_history": 0})
    async with Agent("quiet", "worker", settings=off) as agent, Bus(settings) as bus:

        @agent.on("ping")
        async def ping(payload: Any) -> str:
            return "pong"

        assert await bus.request("quiet", "ping", {}) == "pong"
        assert agent.usage is not None
        await agent.usage.flush()
        assert await r.hget(keys.stats("quiet"), "ping.invocations") == "1"
    assert not await r.exists(keys.tasks("quiet"))


async def test_a_failed_flush_keeps_the_tasks_for_the_next(
    settings: Settings, r: aioredis.Redis, keys: KeySpace
) -> None:
    dead = Settings(
        redis_url="redis://127.0.0.1:1/0", namespace=settings.namespace, retry_attempts=0
    )
    broken = make_client(dead)
    rec = UsageRecorder(broken, settings, "flaky", interval=3600)
    rec.tasks.add("m1", "t", "x", "send", None, 1.7e9, 0.001, None)
    try:
        with pytest.raises(ConnectionFailed):
            await rec.flush()
    finally:
        await broken.aclose()
    rec.tasks.add("m2", "t", "x", "send", None, 1.7e9, 0.001, "timeout")
    assert len(rec.tasks) == 2
    good = make_client(settings)
    try:
        rec._client = good  # the connection is back
        await rec.flush()
    finally:
        await good.aclose()
    tasks, _ = await read_tasks(r, settings, "flaky")
    assert [(t.id, t.outcome) for t in tasks] == [("m2", "timeout"), ("m1", "ok")]


def test_the_buffer_keeps_the_newest_and_puts_back_before_the_new() -> None:
    buf = TaskBuffer(3, "i")
    for n in range(5):
        buf.add(f"m{n}", "t", "x", "send", None, 1.7e9, 0.0, None)
    taken = buf.take()
    assert [t[0] for t in taken] == ["m2", "m3", "m4"]
    buf.add("m5", "t", "x", "send", None, 1.7e9, 0.0, None)
    buf.give_back(taken)
    assert [t[0] for t in buf.take()] == ["m3", "m4", "m5"]
    rows = orjson.loads(buf.wire([("m9", "t", "x", "send", "s-1", 0.0, 0.0123, "timeout")]))
    assert rows == [[
        "id", "m9", "type", "t", "sender", "x", "kind", "send",
        "start", "1970-01-01T00:00:00.000Z", "duration_ms", "12.300", "outcome", "timeout",
        "instance", "i", "session", "s-1",
    ]]  # fmt: skip


async def test_bad_limits_and_cursors_are_invalid_input(
    settings: Settings, r: aioredis.Redis
) -> None:
    with pytest.raises(InvalidInput):
        await read_tasks(r, settings, "x", limit=0)
    with pytest.raises(InvalidInput, match="cursor"):
        await read_tasks(r, settings, "x", before="yesterday")


async def test_cli_prints_the_history(
    coordinator: Coordinator, settings: Settings, r: aioredis.Redis
) -> None:
    async with Agent("cli-worker", "worker", settings=settings) as agent, Bus(settings) as bus:

        @agent.on("ping")
        async def ping(payload: Any) -> str:
            return "pong"

        for _ in range(3):
            await bus.request("cli-worker", "ping", {})
        assert agent.usage is not None
        await agent.usage.flush()
    base = ["--redis-url", settings.url, "--namespace", settings.namespace, "tasks"]
    runner = CliRunner()
    table = await asyncio.to_thread(runner.invoke, cli, [*base, "cli-worker", "-n", "2"])
    assert table.exit_code == 0, table.output
    assert "ping" in table.output
    assert "ok" in table.output
    assert "--before" in table.output  # a third, older task
    as_json = await asyncio.to_thread(runner.invoke, cli, [*base, "cli-worker", "--json"])
    assert as_json.exit_code == 0, as_json.output
    body = orjson.loads(as_json.output)
    assert [t["type"] for t in body["tasks"]] == ["ping"] * 3
    assert body["next"] is None
    none = await asyncio.to_thread(runner.invoke, cli, [*base, "nobody"])
    assert none.exit_code == 0
    assert "no tasks recorded for nobody" in none.output
    bad = await asyncio.to_thread(runner.invoke, cli, [*base, "bad name"])
    assert bad.exit_code == 2

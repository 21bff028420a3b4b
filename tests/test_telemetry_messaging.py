"""One trace across agents: request -> send -> process, hop after hop; usage stats of handlers."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import SpanKind, StatusCode

from agent_sdk import Agent, Bus, Settings
from agent_sdk.usage import read_usage
from coordinator import Coordinator
from schemas.errors import RemoteError
from tests.otel_support import Otel, otel
from tests.support import wait_for


@pytest.fixture(name="o")
def _otel() -> Iterator[Otel]:
    with otel() as o:
        yield o


def _by_name(spans: tuple[ReadableSpan, ...]) -> dict[str, ReadableSpan]:
    return {s.name: s for s in spans}


def _parent_is(child: ReadableSpan, parent: ReadableSpan) -> bool:
    return child.parent is not None and child.parent.span_id == parent.context.span_id


async def test_request_and_the_handlers_that_serve_it_form_one_trace(
    coordinator: Coordinator, settings: Settings, o: Otel
) -> None:
    async with (
        Agent("back", "lookup", settings=settings) as back,
        Agent("front", "frontend", settings=settings) as front,
        Bus(settings) as client,
    ):

        @back.on("lookup")
        async def lookup(payload: Any) -> dict[str, str]:
            return {"found": payload["q"]}

        @front.on("ask")
        async def ask(payload: Any) -> Any:  # a second hop, from inside the handler
            return await front.request("back", "lookup", {"q": payload["q"]})

        assert await client.request("front", "ask", {"q": "x"}) == {"found": "x"}
        # the responders end their spans after the reply is out: wait for all six
        await wait_for(lambda: len(o.spans.get_finished_spans()) >= 6, message="six spans")

    spans = _by_name(o.spans.get_finished_spans())
    req_front, send_front = spans["request front"], spans["send front"]
    proc_front = spans["process front"]
    req_back, send_back, proc_back = (
        spans["request back"],
        spans["send back"],
        spans["process back"],
    )
    assert len({s.context.trace_id for s in spans.values()}) == 1
    assert req_front.parent is None
    assert req_front.kind is SpanKind.CLIENT
    assert send_front.kind is SpanKind.PRODUCER
    assert proc_front.kind is SpanKind.CONSUMER
    assert _parent_is(send_front, req_front)
    assert _parent_is(proc_front, send_front)
    assert proc_front.parent is not None
    assert proc_front.parent.is_remote  # it came through the envelope headers, not memory
    assert _parent_is(req_back, proc_front)
    assert _parent_is(send_back, req_back)
    assert _parent_is(proc_back, send_back)
    attrs = dict(proc_back.attributes or {})
    assert attrs["messaging.operation.type"] == "process"
    assert attrs["messaging.destination.name"] == "back"
    assert attrs["messaging.message.conversation_id"] == attrs["messaging.message.id"]
    assert dict(send_back.attributes or {})["messaging.message.id"] == attrs["messaging.message.id"]


async def test_a_failing_handler_marks_both_sides_and_is_counted(
    coordinator: Coordinator, settings: Settings, o: Otel
) -> None:
    async with Agent("svc", "svc", settings=settings) as svc, Bus(settings) as client:

        @svc.on("tel-boom")
        async def boom(payload: Any) -> None:
            raise ValueError("no")

        with pytest.raises(RemoteError):
            await client.request("svc", "tel-boom", {})
        await wait_for(lambda: len(o.spans.get_finished_spans()) >= 3, message="three spans")
    spans = _by_name(o.spans.get_finished_spans())
    assert spans["process svc"].status.status_code is StatusCode.ERROR
    assert dict(spans["process svc"].attributes or {})["error.type"] == "handler_error"
    assert spans["request svc"].status.status_code is StatusCode.ERROR
    failed = [
        v
        for a, v in o.metric_points("agentbus.messages.failed")
        if a.get("agentbus.message.type") == "tel-boom"
    ]
    assert failed == [1.0]
    durations = [
        (a.get("agentbus.outcome"), v)
        for a, v in o.metric_points("agentbus.request.duration")
        if a.get("agentbus.message.type") == "tel-boom"
    ]
    assert durations == [("handler_error", 1.0)]


async def test_handlers_usage_is_kept_per_agent_and_type(
    coordinator: Coordinator, settings: Settings
) -> None:
    async with Agent("counted", "c", settings=settings) as agent, Bus(settings) as client:

        @agent.on("ok")
        async def ok(payload: Any) -> int:
            return 1

        @agent.on("bad")
        async def bad(payload: Any) -> None:
            raise RuntimeError("x")

        for _ in range(5):
            await client.request("counted", "ok", {})
        for _ in range(2):
            with pytest.raises(RemoteError):
                await client.request("counted", "bad", {})
        for invented in ("nope-1", "nope-2"):  # types without a handler share one row
            with pytest.raises(RemoteError, match="no handler"):
                await client.request("counted", invented, {})
    # stopping the agent flushed the stats
    async with Bus(settings) as reader:
        rows = {u.type: u for u in await read_usage(reader.client, settings, "counted")}
    assert (rows["ok"].invocations, rows["ok"].errors) == (5, 0)
    assert (rows["bad"].invocations, rows["bad"].errors) == (2, 2)
    assert sum(rows["ok"].buckets) == 5
    assert (rows["(unknown)"].invocations, rows["(unknown)"].errors) == (2, 2)
    assert set(rows) == {"ok", "bad", "(unknown)"}


async def test_the_trace_crosses_processes(
    coordinator: Coordinator, settings: Settings, o: Otel
) -> None:
    env = {
        **os.environ,
        "AGENTBUS_REDIS_URL": settings.url,
        "AGENTBUS_NAMESPACE": settings.namespace,
        "AGENTBUS_HEARTBEAT_INTERVAL": "0.1",
        "AGENTBUS_TTL": "0.5",
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.traced_agent", "remote-1",
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, env=env,
    )  # fmt: skip
    assert proc.stdin is not None
    assert proc.stdout is not None
    try:
        assert await asyncio.wait_for(proc.stdout.readline(), 30) == b"ready\n"
        async with Bus(settings) as client:
            assert await client.request("remote-1", "echo", {"n": 1}) == {"n": 1}
        proc.stdin.close()
        out, _ = await asyncio.wait_for(proc.communicate(), 30)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    remote = {s["name"]: s for s in map(orjson.loads, out.splitlines())}
    local = _by_name(o.spans.get_finished_spans())
    send = local["send remote-1"]
    process = remote["process remote-1"]
    assert process["kind"] == "CONSUMER"
    assert process["trace_id"] == f"{send.context.trace_id:032x}"
    assert process["parent_span_id"] == f"{send.context.span_id:016x}"
    assert process["parent_is_remote"] is True
    assert _parent_is(send, local["request remote-1"])

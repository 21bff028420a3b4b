"""agentbus data plane between two processes: request-reply, direct send, broadcast, tracing.

The receiving side is an ``Agent`` in a spawned process; the sending side a ``Bus`` (a client)
in another spawned process, so both run exactly the SDK code a user runs. ``tracing="on"``
installs the OpenTelemetry SDK with an in-memory exporter in both processes.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from bench.common import Sizes, command_calls, now_ns, per_op
from bench.procs import WorkerContext, spawn
from bench.stats import Latency, Throughput

__all__ = [
    "agentbus_broadcast",
    "agentbus_rr",
    "agentbus_send",
    "raw_pipelined_send_throughput",
    "raw_same_commands_rr",
]

PAYLOAD = {"text": "x" * 64, "n": 1}
WINDOW = 64  # sends in flight from the one sender (throughput runs)
RECEIVER_CONCURRENCY = 64  # the receiving agent's max_concurrency (throughput runs)


def _settings(url: str, ns: str) -> Any:
    from agent_sdk.settings import Settings

    return Settings(redis_url=url, namespace=ns)


def _tracing(mode: str) -> Any:
    """Install the OTel SDK with an in-memory exporter when ``mode == "on"``."""
    if mode != "on":
        return None
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    return exporter


async def receiver_worker(
    ctx: WorkerContext, url: str, ns: str, name: str, n: int, concurrency: int, tracing: str
) -> None:
    """An agent that answers ``echo`` requests and counts ``bench`` messages (send/broadcast)."""
    from agent_sdk.agent import Agent

    exporter = _tracing(tracing)
    agent = Agent(name, "bench", max_concurrency=concurrency, settings=_settings(url, ns))
    state = {"count": 0, "first": 0, "last": 0}
    done = asyncio.Event()

    @agent.on("echo")
    async def echo(payload: Any) -> Any:
        return payload

    @agent.on("bench")
    async def count(payload: Any) -> None:
        t = now_ns()
        if state["count"] == 0:
            state["first"] = t
        state["count"] += 1
        state["last"] = t
        if state["count"] >= n:
            done.set()

    async with agent:
        ctx.ready()
        if n <= 0:
            await asyncio.Event().wait()  # serve until terminated
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(done.wait(), timeout=120)
        spans = len(exporter.get_finished_spans()) if exporter else 0
        ctx.put({**state, "spans": spans})
        await asyncio.Event().wait()


async def client_worker(
    ctx: WorkerContext, url: str, ns: str, target: str, mode: str, n: int, warmup: int,
    tracing: str,
) -> None:  # fmt: skip
    """The sending side: ``rr`` (sequential requests); ``send`` or ``broadcast`` (``WINDOW``
    concurrent calls at a time); ``broadcast_many`` (``WINDOW`` payloads a call)."""
    from agent_sdk.bus import Bus

    exporter = _tracing(tracing)
    durable = mode != "rr_direct"
    async with Bus(_settings(url, ns)) as bus:
        if mode.startswith("rr"):  # starts the reply router
            await bus.request(target, "echo", PAYLOAD, timeout=5, durable=durable)
        ctx.ready()
        out: dict[str, Any] = {}
        if mode.startswith("rr"):
            samples = []
            for i in range(warmup + n):
                t0 = now_ns()
                await bus.request(target, "echo", PAYLOAD, timeout=5, durable=durable)
                if i >= warmup:
                    samples.append(now_ns() - t0)
            out["lat"] = samples
        else:
            t0 = now_ns()
            sent = 0
            while sent < n:
                k = min(WINDOW, n - sent)
                if mode == "send":
                    await asyncio.gather(*(bus.send(target, "bench", PAYLOAD) for _ in range(k)))
                elif mode == "broadcast_many":
                    await bus.broadcast_many("bench", [PAYLOAD] * k)
                else:
                    await asyncio.gather(*(bus.broadcast("bench", PAYLOAD) for _ in range(k)))
                sent += k
            out.update(t0=t0, t_end=now_ns())
        out["spans"] = len(exporter.get_finished_spans()) if exporter else 0
        ctx.put(out)


async def agentbus_rr(
    url: str, ns: str, sizes: Sizes, loop: str, tracing: str = "off", *, durable: bool = True,
    name: str | None = None,
) -> tuple[Latency, dict[str, Any]]:  # fmt: skip
    """Sequential request-reply: Bus.request in one process → Agent handler in another
    (``durable=False``: the direct, at-most-once mode). ``name``: the receiver's (a new one
    for each run in one namespace: a stopped receiver's name is held until its TTL ends)."""
    mode = "rr" if durable else "rr_direct"
    name = name or f"rx-{mode}-{tracing}"
    receiver = spawn(receiver_worker, url, ns, name, 0, 1, tracing, loop=loop)
    before = await command_calls(url)
    try:
        client = spawn(client_worker, url, ns, name, mode, sizes.samples, sizes.warmup,
                       tracing, loop=loop)  # fmt: skip
        try:
            res = client.result(timeout=300)
        finally:
            client.stop()
    finally:
        receiver.stop()
    cmds = per_op(before, await command_calls(url), sizes.samples + sizes.warmup + 1)
    return Latency.from_ns(res["lat"]), {"client_spans": res["spans"], "commands": cmds}


async def _one_way(
    url: str, ns: str, n: int, loop: str, mode: str
) -> tuple[Throughput, dict[str, float]]:
    name = f"rx-{mode}"
    receiver = spawn(receiver_worker, url, ns, name, n, RECEIVER_CONCURRENCY, "off",
                     loop=loop)  # fmt: skip
    before = await command_calls(url)
    try:
        client = spawn(client_worker, url, ns, name, mode, n, 0, "off", loop=loop)
        try:
            sent = client.result(timeout=300)
            got = receiver.result(timeout=120)
        finally:
            client.stop()
    finally:
        receiver.stop()
    cmds = per_op(before, await command_calls(url), n)
    return Throughput(got["count"], (got["last"] - sent["t0"]) / 1e9), cmds


async def agentbus_send(
    url: str, ns: str, sizes: Sizes, loop: str
) -> tuple[Throughput, dict[str, float]]:
    return await _one_way(url, ns, sizes.messages, loop, "send")


async def agentbus_broadcast(
    url: str, ns: str, sizes: Sizes, loop: str, *, many: bool = False
) -> tuple[Throughput, dict[str, float]]:
    """``Bus.broadcast`` calls, ``WINDOW`` at a time; or (``many``) ``Bus.broadcast_many`` with
    ``WINDOW`` payloads a call, the batch API that matches raw pipelined ``PUBLISH``."""
    return await _one_way(url, ns, sizes.messages, loop, "broadcast_many" if many else "broadcast")


# -- the same Redis commands as agentbus request-reply, from raw redis-py ------------------------
_SEND_LUA = """
if redis.call('EXISTS', KEYS[1]) == 0 then return false end
return redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[1], '*', unpack(ARGV, 2))
"""
_REPLY_LUA = """
redis.call('LPUSH', KEYS[1], ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
redis.call('XACK', KEYS[2], ARGV[3], ARGV[4])
return 1
"""


async def raw_pipelined_send_throughput(url: str, ns: str, sizes: Sizes, loop: str) -> Throughput:
    """What auto-pipelined sends could reach: the send script (EXISTS + XADD), 64 per pipeline,
    into an inbox read by the raw XREADGROUP → XACK consumer."""
    import orjson

    from bench.common import client
    from bench.raw import stream_consumer_worker
    from schemas.keys import AGENT_GROUP, KeySpace

    keys = KeySpace(ns)
    record, inbox = keys.record("raw-pipe-rx"), keys.inbox("raw-pipe-rx")
    r = client(url)
    await r.hset(record, mapping={"name": "raw-pipe-rx", "role": "bench"})
    await r.delete(inbox)
    await r.xgroup_create(inbox, AGENT_GROUP, id="$", mkstream=True)
    n = sizes.messages
    worker = spawn(stream_consumer_worker, url, inbox, n, "count", loop=loop)
    sha = await r.script_load(_SEND_LUA)
    payload = orjson.dumps(PAYLOAD)
    args: list[Any] = [
        max(10_000, n),
        "v",
        "1",
        "kind",
        "send",
        "type",
        "bench",
        "sender",
        "raw-tx",
        "target",
        "raw-pipe-rx",
        "sent_at",
        "2026-11-21T20:00:00.000Z",
        "payload",
        payload,
    ]
    try:
        t0 = now_ns()
        sent = 0
        while sent < n:
            k = min(WINDOW, n - sent)
            pipe = r.pipeline(transaction=False)
            for _ in range(k):
                pipe.evalsha(sha, 2, record, inbox, *args)
            await pipe.execute()
            sent += k
        res = worker.result(timeout=120)
        return Throughput(res["count"], (res["last"] - t0) / 1e9)
    finally:
        worker.stop()
        await r.aclose()


async def raw_responder_worker(ctx: WorkerContext, url: str, ns: str, name: str) -> None:
    """XREADGROUP BLOCK on the inbox → EVALSHA (LPUSH reply + PEXPIRE + XACK)."""
    import orjson

    from bench.common import client
    from schemas.keys import AGENT_GROUP, KeySpace

    keys = KeySpace(ns)
    r = client(url)
    inbox = keys.inbox(name)
    reply = r.register_script(_REPLY_LUA)
    await r.hset(keys.record(name), mapping={"name": name, "role": "bench"})
    await r.delete(inbox)
    await r.xgroup_create(inbox, AGENT_GROUP, id="$", mkstream=True)
    ctx.ready()
    while True:
        resp: Any = await r.xreadgroup(AGENT_GROUP, "raw", {inbox: ">"}, count=1, block=1000)
        if not resp:
            continue
        for entry_id, fields in resp[0][1]:
            answer = orjson.dumps(
                {"v": 1, "id": entry_id.decode(), "kind": "reply", "type": "echo",
                 "sender": name, "correlation_id": fields[b"id"].decode(),
                 "payload": orjson.loads(fields[b"payload"])}
            )  # fmt: skip
            await reply(
                keys=[fields[b"reply_to"], inbox], args=[answer, 5000, AGENT_GROUP, entry_id]
            )


async def raw_same_commands_rr(
    url: str, ns: str, sizes: Sizes, loop: str
) -> tuple[Latency, dict[str, float]]:
    """Requester: EVALSHA (EXISTS + XADD inbox) then BRPOP its reply list; no agentbus code."""
    import orjson

    from bench.common import client
    from schemas.envelope import new_id
    from schemas.keys import KeySpace

    keys = KeySpace(ns)
    responder = spawn(raw_responder_worker, url, ns, "raw-rx", loop=loop)
    before = await command_calls(url)
    r = client(url)
    send = r.register_script(_SEND_LUA)
    reply_to = keys.replies("raw-tx", new_id())
    record, inbox = keys.record("raw-rx"), keys.inbox("raw-rx")
    payload = orjson.dumps(PAYLOAD)
    try:
        samples = []
        for i in range(sizes.warmup + sizes.samples):
            mid = new_id()
            t0 = now_ns()
            await send(
                keys=[record, inbox],
                args=[10_000, "v", "1", "id", mid, "kind", "request", "type", "echo",
                      "sender", "raw-tx", "target", "raw-rx", "reply_to", reply_to,
                      "sent_at", "2026-11-21T20:00:00.000Z", "payload", payload],
            )  # fmt: skip
            got = await r.brpop([reply_to], timeout=5)
            t1 = now_ns()
            if got is None:
                raise RuntimeError("raw same-commands request-reply: no reply in 5 s")
            if orjson.loads(got[1])["correlation_id"] != mid:
                raise RuntimeError("raw same-commands request-reply: wrong correlation id")
            if i >= sizes.warmup:
                samples.append(t1 - t0)
        cmds = per_op(before, await command_calls(url), sizes.samples + sizes.warmup)
        return Latency.from_ns(samples), cmds
    finally:
        responder.stop()
        await r.aclose()

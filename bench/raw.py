"""Raw baselines: redis-py (and nats-py) doing the work with no agentbus code.

Every key and channel still comes from ``KeySpace`` so the work is the same as agentbus does.
Workers (``*_worker``) run in a spawned process; drivers (``async def``) run in the bench process.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import orjson

from bench.common import Sizes, body_envelope, client, now_ns
from bench.procs import WorkerContext, spawn
from bench.stats import Latency, Throughput
from schemas.envelope import encode_fields, encode_json, new_id
from schemas.keys import AGENT_GROUP, KeySpace

__all__ = [
    "lpush_blpop_rr",
    "nats_rr",
    "ping",
    "pubsub_oneway",
    "pubsub_rr",
    "pubsub_throughput",
    "pubsub_throughput_unbatched",
    "registry_write",
    "stream_oneway",
    "stream_throughput",
    "stream_throughput_unbatched",
]

_SPARSE_GAP = 0.001  # seconds between messages in "sparse traffic" one-way runs
_BATCH = 200  # pipelined commands per batch in throughput runs


def _stamp(body: bytes) -> bytes:
    return b"%d|" % now_ns() + body


def _unstamp(data: bytes) -> int:
    return int(data.split(b"|", 1)[0])


# -- PING ----------------------------------------------------------------------------------------
async def ping(url: str, sizes: Sizes) -> Latency:
    r = client(url)
    try:
        for _ in range(sizes.warmup):
            await r.ping()
        samples = []
        for _ in range(sizes.samples):
            t0 = now_ns()
            await r.ping()
            samples.append(now_ns() - t0)
        return Latency.from_ns(samples)
    finally:
        await r.aclose()


# -- pub/sub one way ---------------------------------------------------------------------------
async def pubsub_sub_worker(ctx: WorkerContext, url: str, channel: str, n: int, mode: str) -> None:
    """Subscribe; in ``latency`` mode return per-message latencies, else first/last times."""
    r = client(url)
    ps = r.pubsub(ignore_subscribe_messages=True)
    await ps.subscribe(channel)
    ctx.ready()
    got = 0
    lat: list[int] = []
    first = last = 0
    async for msg in ps.listen():
        if msg["type"] != "message":
            continue
        t = now_ns()
        if mode == "latency":
            lat.append(t - _unstamp(msg["data"]))
        if got == 0:
            first = t
        last = t
        got += 1
        if got >= n:
            break
    ctx.put({"lat": lat, "first": first, "last": last, "count": got})
    await ps.aclose()  # type: ignore[no-untyped-call]
    await r.aclose()


async def pubsub_oneway(url: str, keys: KeySpace, sizes: Sizes, loop: str) -> Latency:
    channel = keys.broadcast_channel()
    n = sizes.warmup + sizes.samples
    worker = spawn(pubsub_sub_worker, url, channel, n, "latency", loop=loop)
    r = client(url)
    body = encode_json(body_envelope())
    try:
        for _ in range(n):
            await r.publish(channel, _stamp(body))
            await asyncio.sleep(_SPARSE_GAP)
        res = worker.result(timeout=60)
        return Latency.from_ns(res["lat"][sizes.warmup :])
    finally:
        worker.stop()
        await r.aclose()


async def pubsub_throughput(url: str, keys: KeySpace, sizes: Sizes, loop: str) -> Throughput:
    channel = keys.broadcast_channel()
    n = sizes.messages
    worker = spawn(pubsub_sub_worker, url, channel, n, "count", loop=loop)
    r = client(url)
    body = encode_json(body_envelope())
    try:
        t0 = now_ns()
        sent = 0
        while sent < n:
            pipe = r.pipeline(transaction=False)
            for _ in range(min(_BATCH, n - sent)):
                pipe.publish(channel, body)
            await pipe.execute()
            sent += _BATCH
        res = worker.result(timeout=120)
        return Throughput(res["count"], (res["last"] - t0) / 1e9)
    finally:
        worker.stop()
        await r.aclose()


# -- streams: XADD -> XREADGROUP -> XACK -------------------------------------------------------
async def stream_consumer_worker(
    ctx: WorkerContext, url: str, stream: str, n: int, mode: str
) -> None:
    r = client(url)
    ctx.ready()
    got = 0
    lat: list[int] = []
    first = last = 0
    count = 1 if mode == "latency" else 1000
    while got < n:
        resp: Any = await r.xreadgroup(AGENT_GROUP, "raw", {stream: ">"}, count=count, block=5000)
        if not resp:
            break
        entries: list[tuple[bytes, dict[bytes, bytes]]] = resp[0][1]  # RESP2 reply shape
        t = now_ns()
        if mode == "latency":
            lat.extend(t - int(fields[b"t"]) for _, fields in entries)
        await r.xack(stream, AGENT_GROUP, *(eid for eid, _ in entries))
        if got == 0:
            first = t
        last = now_ns()
        got += len(entries)
    ctx.put({"lat": lat, "first": first, "last": last, "count": got})
    await r.aclose()


async def _fresh_group(url: str, stream: str) -> None:
    r = client(url)
    try:
        await r.delete(stream)
        await r.xgroup_create(stream, AGENT_GROUP, id="$", mkstream=True)
    finally:
        await r.aclose()


async def stream_oneway(url: str, keys: KeySpace, sizes: Sizes, loop: str) -> Latency:
    stream = keys.inbox("raw-rx")
    await _fresh_group(url, stream)
    n = sizes.warmup + sizes.samples
    worker = spawn(stream_consumer_worker, url, stream, n, "latency", loop=loop)
    r = client(url)
    fields: dict[Any, Any] = dict(encode_fields(body_envelope()))
    try:
        for _ in range(n):
            await r.xadd(stream, {**fields, "t": now_ns()}, maxlen=10_000, approximate=True)
            await asyncio.sleep(_SPARSE_GAP)
        res = worker.result(timeout=60)
        return Latency.from_ns(res["lat"][sizes.warmup :])
    finally:
        worker.stop()
        await r.aclose()


async def stream_throughput(url: str, keys: KeySpace, sizes: Sizes, loop: str) -> Throughput:
    """Pipelined XADD batches (``MAXLEN ~``) → XREADGROUP COUNT 1000 → one XACK per batch."""
    stream = keys.inbox("raw-rx")
    await _fresh_group(url, stream)
    n = sizes.messages
    worker = spawn(stream_consumer_worker, url, stream, n, "count", loop=loop)
    r = client(url)
    fields: dict[Any, Any] = dict(encode_fields(body_envelope()))
    maxlen = max(10_000, n)
    try:
        t0 = now_ns()
        sent = 0
        while sent < n:
            pipe = r.pipeline(transaction=False)
            for _ in range(min(_BATCH, n - sent)):
                pipe.xadd(stream, fields, maxlen=maxlen, approximate=True)
            await pipe.execute()
            sent += _BATCH
        res = worker.result(timeout=120)
        return Throughput(res["count"], (res["last"] - t0) / 1e9)
    finally:
        worker.stop()
        await r.aclose()


async def stream_throughput_unbatched(
    url: str, keys: KeySpace, sizes: Sizes, loop: str, window: int = 64
) -> Throughput:
    """One XADD call per message, ``window`` calls in flight (as a sender without batching)."""
    stream = keys.inbox("raw-rx")
    await _fresh_group(url, stream)
    n = sizes.messages
    worker = spawn(stream_consumer_worker, url, stream, n, "count", loop=loop)
    r = client(url)
    fields: dict[Any, Any] = dict(encode_fields(body_envelope()))
    maxlen = max(10_000, n)
    try:
        t0 = now_ns()
        sent = 0
        while sent < n:
            k = min(window, n - sent)
            await asyncio.gather(
                *(r.xadd(stream, fields, maxlen=maxlen, approximate=True) for _ in range(k))
            )
            sent += k
        res = worker.result(timeout=120)
        return Throughput(res["count"], (res["last"] - t0) / 1e9)
    finally:
        worker.stop()
        await r.aclose()


async def pubsub_throughput_unbatched(
    url: str, keys: KeySpace, sizes: Sizes, loop: str, window: int = 64
) -> Throughput:
    """One PUBLISH call per message, ``window`` calls in flight."""
    channel = keys.broadcast_channel()
    n = sizes.messages
    worker = spawn(pubsub_sub_worker, url, channel, n, "count", loop=loop)
    r = client(url)
    body = encode_json(body_envelope())
    try:
        t0 = now_ns()
        sent = 0
        while sent < n:
            k = min(window, n - sent)
            await asyncio.gather(*(r.publish(channel, body) for _ in range(k)))
            sent += k
        res = worker.result(timeout=120)
        return Throughput(res["count"], (res["last"] - t0) / 1e9)
    finally:
        worker.stop()
        await r.aclose()


# -- request-reply: LPUSH + BLPOP on a per-request reply key -----------------------------------
async def list_responder_worker(ctx: WorkerContext, url: str, request_list: str) -> None:
    r = client(url)
    ctx.ready()
    while True:
        item = await r.blpop([request_list], timeout=1)
        if item is None:
            continue
        req = orjson.loads(item[1])
        await r.lpush(req["reply_to"], item[1])


async def lpush_blpop_rr(url: str, keys: KeySpace, sizes: Sizes, loop: str) -> Latency:
    request_list = keys.replies("raw-server", "requests")
    worker = spawn(list_responder_worker, url, request_list, loop=loop)
    r = client(url)
    payload = orjson.loads(encode_json(body_envelope()))
    try:
        samples = []
        for i in range(sizes.warmup + sizes.samples):
            reply_to = keys.replies("raw-client", new_id())
            body = orjson.dumps({**payload, "reply_to": reply_to})
            t0 = now_ns()
            await r.lpush(request_list, body)
            got = await r.blpop([reply_to], timeout=5)
            t1 = now_ns()
            if got is None:
                raise RuntimeError("LPUSH/BLPOP baseline: no reply in 5 s")
            if i >= sizes.warmup:
                samples.append(t1 - t0)
        return Latency.from_ns(samples)
    finally:
        worker.stop()
        await r.aclose()


# -- request-reply: reply on a pub/sub channel -------------------------------------------------
async def pubsub_responder_worker(ctx: WorkerContext, url: str, channel: str) -> None:
    r = client(url)
    ps = r.pubsub(ignore_subscribe_messages=True)
    await ps.subscribe(channel)
    ctx.ready()
    async for msg in ps.listen():
        if msg["type"] == "message":
            req = orjson.loads(msg["data"])
            await r.publish(req["reply_to"], msg["data"])


async def next_message(ps: Any, timeout: float) -> Any:
    """The next published message (subscribe confirmations are skipped), or None."""
    deadline = now_ns() + int(timeout * 1e9)
    while True:
        left = (deadline - now_ns()) / 1e9
        if left <= 0:
            return None
        msg = await ps.get_message(ignore_subscribe_messages=True, timeout=left)
        if msg is not None and msg["type"] == "message":
            return msg


async def pubsub_rr(url: str, keys: KeySpace, sizes: Sizes, loop: str) -> Latency:
    request_channel = keys.topic_channel("raw.requests")
    reply_channel = keys.topic_channel(f"raw.replies.{new_id()}")
    worker = spawn(pubsub_responder_worker, url, request_channel, loop=loop)
    r = client(url)
    ps = r.pubsub(ignore_subscribe_messages=True)
    await ps.subscribe(reply_channel)
    body = orjson.dumps({**orjson.loads(encode_json(body_envelope())), "reply_to": reply_channel})
    try:
        samples = []
        for i in range(sizes.warmup + sizes.samples):
            t0 = now_ns()
            await r.publish(request_channel, body)
            msg = await next_message(ps, 5.0)
            t1 = now_ns()
            if msg is None:
                raise RuntimeError("pub/sub request-reply baseline: no reply in 5 s")
            if i >= sizes.warmup:
                samples.append(t1 - t0)
        return Latency.from_ns(samples)
    finally:
        worker.stop()
        await ps.aclose()  # type: ignore[no-untyped-call]
        await r.aclose()


# -- registry write: MULTI { HSET 10 fields + PEXPIRE } ------------------------------------------
def record_fields(name: str, role: str = "worker") -> dict[str, str]:
    """Ten flat string fields, shaped like a registry hash."""
    return {
        "name": name,
        "role": role,
        "version": "1.0.0",
        "description": "benchmark agent",
        "capabilities": '["summarize","translate"]',
        "tags": '["bench"]',
        "instance_id": new_id(),
        "status": "ready",
        "load": "0",
        "last_seen": "2026-11-21T20:00:00.000Z",
    }


async def registry_write(url: str, keys: KeySpace, sizes: Sizes) -> Latency:
    r = client(url)
    try:
        samples = []
        for i in range(sizes.warmup + sizes.samples):
            key = keys.record(f"raw-{i % 1000}")
            fields: dict[Any, Any] = record_fields(f"raw-{i % 1000}")
            t0 = now_ns()
            pipe = r.pipeline(transaction=True)
            pipe.hset(key, mapping=fields)
            pipe.pexpire(key, 3000)
            await pipe.execute()
            if i >= sizes.warmup:
                samples.append(now_ns() - t0)
        return Latency.from_ns(samples)
    finally:
        await r.aclose()


# -- NATS request-reply (a peer) ---------------------------------------------------------------
async def nats_responder_worker(ctx: WorkerContext, url: str, subject: str) -> None:
    import nats

    nc = await nats.connect(url)

    async def answer(msg: Any) -> None:
        await msg.respond(msg.data)

    await nc.subscribe(subject, cb=answer)
    await nc.flush()
    ctx.ready()
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.Event().wait()


async def nats_rr(nats_url: str, sizes: Sizes, loop: str) -> Latency:
    import nats

    subject = "bench.rr"
    worker = spawn(nats_responder_worker, nats_url, subject, loop=loop)
    nc = await nats.connect(nats_url)
    body = encode_json(body_envelope())
    try:
        samples = []
        for i in range(sizes.warmup + sizes.samples):
            t0 = now_ns()
            await nc.request(subject, body, timeout=5)
            if i >= sizes.warmup:
                samples.append(now_ns() - t0)
        return Latency.from_ns(samples)
    finally:
        worker.stop()
        await nc.close()

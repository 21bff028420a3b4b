"""Request-reply kinds compared in one client process, in alternating blocks.

Each kind (agentbus to a hosted agent, durable and ``durable=False``, to a lone agent, raw
redis-py pub/sub and ``LPUSH``/``BLPOP``, NATS request-reply) answers from a process of its own;
ONE client process asks them all, ``block`` requests at a time, each kind in turn, the order
rotated every cycle, until each kind has ``samples``. A machine whose speed drifts by tens of
percent within a minute (these do) then weighs on every kind alike: a kind's figure is the p50
of all its samples, and a comparison also gives the spread of its per-cycle ratios (each block
against the other kind's block of the same cycle, a few hundred milliseconds apart).

Where the time goes: the CPU each request costs the client, the answering process and the
broker (``redis-server``, or ``nats-server``), from their totals over all blocks of a kind; the
answering process's idle rate (heartbeats of a big host), measured for a second before the
blocks, is taken off. Each process's CPU is counted in clock ticks (10 ms), so only totals over
thousands of requests mean anything.
"""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
import psutil

from bench import messaging, raw
from bench.common import Sizes, body_envelope, client
from bench.procs import WorkerContext, spawn
from bench.stats import Latency
from schemas.envelope import encode_json, new_id
from schemas.keys import KeySpace

__all__ = ["block_ratios", "cpu_text", "rr_paired"]

#: Requests per block (fewer when ``samples`` is small: at least 4 cycles).
BLOCK = 100


class _Cpu:
    """CPU seconds of this process, each kind's answering process and its broker."""

    def __init__(self, pids: dict[str, tuple[int | None, int | None]]) -> None:
        self._procs = {
            kind: tuple(psutil.Process(p) if p else None for p in pair)
            for kind, pair in pids.items()
        }
        self.idle: dict[int, float] = {}  # answering process pid -> CPU seconds per second idle
        self.spent: dict[str, list[float]] = {}  # kind -> [client, server, broker, requests]

    @staticmethod
    def _of(proc: psutil.Process | None) -> float:
        if proc is None:
            return 0.0
        with contextlib.suppress(psutil.Error):
            t = proc.cpu_times()
            return float(t.user + t.system)
        return 0.0

    async def measure_idle(self, seconds: float = 1.0) -> None:
        servers = {p.pid: p for p, _ in self._procs.values() if p is not None}
        before = {pid: self._of(p) for pid, p in servers.items()}
        await asyncio.sleep(seconds)  # an idle window measured, not a wait for anything
        self.idle = {pid: (self._of(p) - before[pid]) / seconds for pid, p in servers.items()}

    def now(self, kind: str) -> tuple[float, float, float, float]:
        server, broker = self._procs.get(kind, (None, None))
        return time.process_time(), self._of(server), self._of(broker), time.perf_counter()

    def add(self, kind: str, before: tuple[float, float, float, float], n: int) -> None:
        after = self.now(kind)
        server = self._procs.get(kind, (None, None))[0]
        idle = self.idle.get(server.pid, 0.0) if server is not None else 0.0
        total = self.spent.setdefault(kind, [0.0, 0.0, 0.0, 0])
        total[0] += after[0] - before[0]
        total[1] += after[1] - before[1] - idle * (after[3] - before[3])
        total[2] += after[2] - before[2]
        total[3] += n

    def per_request_us(self) -> dict[str, dict[str, float]]:
        return {
            kind: {"client": c / n * 1e6, "server": max(0.0, s / n * 1e6), "broker": b / n * 1e6}
            for kind, (c, s, b, n) in self.spent.items() if n
        }  # fmt: skip


async def paired_client_worker(
    ctx: WorkerContext, url: str, ns: str, targets: dict[str, str], nats_url: str | None,
    samples: int, warmup: int, block: int,
    pids: dict[str, tuple[int | None, int | None]] | None = None,
) -> None:  # fmt: skip
    """Ask every kind of ``targets`` (kind -> agent name or raw channel/list) in blocks;
    ``pids``: each kind's answering process and broker, for the CPU per request."""
    from agent_sdk.bus import Bus
    from agent_sdk.settings import Settings

    keys = KeySpace(ns)
    payload = messaging.PAYLOAD
    r = client(url)
    reply_channel = keys.topic_channel(f"raw.replies.{new_id()}")
    ps = r.pubsub(ignore_subscribe_messages=True)
    await ps.subscribe(reply_channel)
    plain = orjson.loads(encode_json(body_envelope()))
    pubsub_body = orjson.dumps({**plain, "reply_to": reply_channel})
    nc: Any = None
    async with Bus(Settings(redis_url=url, namespace=ns)) as bus:

        async def agentbus(name: str, durable: bool) -> None:
            await bus.request(name, "echo", payload, timeout=5, durable=durable)

        async def pubsub() -> None:
            await r.publish(targets["pubsub_rr"], pubsub_body)
            if await raw.next_message(ps, 5.0) is None:
                raise RuntimeError("pub/sub request-reply baseline: no reply in 5 s")

        async def lists() -> None:
            reply_to = keys.replies("raw-client", new_id())
            await r.lpush(targets["lpush_blpop_rr"], orjson.dumps({**plain, "reply_to": reply_to}))
            if await r.blpop([reply_to], timeout=5) is None:
                raise RuntimeError("LPUSH/BLPOP baseline: no reply in 5 s")

        async def nats_request() -> None:
            await nc.request(targets["nats_rr"], pubsub_body, timeout=5)

        calls: dict[str, Callable[[], Awaitable[None]]] = {
            "host": lambda: agentbus(targets["host"], True),
            "host_direct": lambda: agentbus(targets["host"], False),
            "lone": lambda: agentbus(targets["lone"], True),
            "pubsub_rr": pubsub,
            "lpush_blpop_rr": lists,
        }
        if nats_url is not None:
            import nats

            nc = await nats.connect(nats_url)
            calls["nats_rr"] = nats_request
        try:
            for call in calls.values():
                for _ in range(warmup):
                    await call()
            ctx.ready()
            cpu = _Cpu(pids or {})
            await cpu.measure_idle()
            kinds = list(calls)
            lat: dict[str, list[int]] = {k: [] for k in kinds}
            blocks: dict[str, list[float]] = {k: [] for k in kinds}
            for cycle in range(max(1, samples // block)):
                shift = cycle % len(kinds)
                for kind in kinds[shift:] + kinds[:shift]:
                    call, got = calls[kind], []
                    before = cpu.now(kind)
                    for _ in range(block):
                        t0 = time.perf_counter_ns()
                        await call()
                        got.append(time.perf_counter_ns() - t0)
                    cpu.add(kind, before, block)
                    lat[kind] += got
                    blocks[kind].append(statistics.median(got) / 1000)
            ctx.put({"lat": lat, "blocks": blocks, "cpu_us": cpu.per_request_us()})
        finally:
            if nc is not None:
                await nc.close()
            await ps.aclose()
            await r.aclose()


def _listener(port: int) -> int | None:
    """The pid of the process listening on ``port`` (None if it cannot be told)."""
    with contextlib.suppress(psutil.Error, OSError):
        for c in psutil.net_connections("tcp"):
            if c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port and c.pid:
                return int(c.pid)
    return None


def _port(url: str) -> int:
    return int(url.rsplit(":", 1)[1].split("/", 1)[0])


async def rr_paired(
    url: str, ns: str, target: str, sizes: Sizes, loop: str, nats_url: str | None,
    host_pid: int | None = None,
) -> dict[str, Any]:  # fmt: skip
    """Request-reply to ``target`` (a hosted agent, in process ``host_pid``) and every
    baseline, measured by one client process in alternating blocks (module docstring). Each
    kind's ``Latency``; ``blocks``: each kind's per-block p50s (µs), in cycle order;
    ``cpu_us``: each kind's CPU per request (µs) of the client, the answering process and the
    broker."""
    keys = KeySpace(ns)
    lone = f"lone-{new_id()[-8:]}"
    targets = {
        "host": target, "lone": lone, "pubsub_rr": keys.topic_channel("raw.requests"),
        "lpush_blpop_rr": keys.replies("raw-server", "requests"), "nats_rr": "bench.rr",
    }  # fmt: skip
    responders = [
        spawn(messaging.receiver_worker, url, ns, lone, 0, 1, "off", loop=loop),
        spawn(raw.pubsub_responder_worker, url, targets["pubsub_rr"], loop=loop),
        spawn(raw.list_responder_worker, url, targets["lpush_blpop_rr"], loop=loop),
    ]
    if nats_url is not None:
        responders.append(spawn(raw.nats_responder_worker, nats_url, targets["nats_rr"], loop=loop))
    block = max(10, min(BLOCK, sizes.samples // 4))
    redis_pid = _listener(_port(url))
    pids: dict[str, tuple[int | None, int | None]] = {
        "host": (host_pid, redis_pid), "host_direct": (host_pid, redis_pid),
        "lone": (responders[0].pid, redis_pid), "pubsub_rr": (responders[1].pid, redis_pid),
        "lpush_blpop_rr": (responders[2].pid, redis_pid),
    }  # fmt: skip
    if nats_url is not None:
        pids["nats_rr"] = (responders[3].pid, _listener(_port(nats_url)))
    try:
        worker = spawn(paired_client_worker, url, ns, targets, nats_url, sizes.samples,
                       sizes.warmup, block, pids, loop=loop)  # fmt: skip
        try:
            res = await asyncio.to_thread(worker.result, 600)
        finally:
            worker.stop()
    finally:
        for responder in responders:
            responder.stop()
    out: dict[str, Any] = {k: Latency.from_ns(v) for k, v in res["lat"].items()}
    out["blocks"] = res["blocks"]
    out["cpu_us"] = res.get("cpu_us", {})
    out["block_size"] = block
    return out


def block_ratios(rr: dict[str, Any], kind: str, base: str) -> str:
    """The spread of ``kind``'s block p50 over ``base``'s, cycle by cycle (``rr_paired``)."""
    blocks = rr.get("blocks", {})
    pairs = zip(blocks.get(kind, []), blocks.get(base, []), strict=False)
    ratios = sorted(a / b for a, b in pairs if b)
    if not ratios:
        return "no blocks"
    q = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else [ratios[0]] * 3
    return (
        f"one client process, {len(ratios)} cycles of {rr.get('block_size')} requests per kind "
        f"in turn; per-cycle ratio median {q[1]:.2f} (quartiles {q[0]:.2f}-{q[2]:.2f})"
    )


def cpu_text(rr: dict[str, Any], kind: str, base: str) -> str:
    """CPU per request (µs) of ``kind`` beside ``base``: client, answering process, broker."""
    cpu = rr.get("cpu_us", {})
    a, b = cpu.get(kind), cpu.get(base)
    if not a or not b:
        return "CPU per request not measured"
    parts = (f"{side} {a[side]:.0f} vs {b[side]:.0f}" for side in ("client", "server", "broker"))
    return "CPU per request (µs): " + ", ".join(parts)

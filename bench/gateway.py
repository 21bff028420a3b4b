"""The gateway group's measures: HTTP against Python on the same Redis, SSE fan-out to many
clients from one Redis read, and the cost of the task history.

The gateway runs as ``agentbus gateway`` in its own process (watched with psutil); SSE clients
are raw sockets in a worker process (an HTTP library per connection would measure the library);
one-way delivery uses ``CLOCK_MONOTONIC`` (``time.monotonic_ns``), shared by all processes.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import resource
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import orjson
import psutil

from agent_sdk.embedded import free_port
from bench.common import Sizes, client, now_ns
from bench.procs import WorkerContext
from bench.stats import Latency, Throughput
from schemas.keys import KeySpace

__all__ = [
    "GatewayProcess",
    "http_vs_python_discover",
    "http_vs_python_request",
    "sse_fanout",
    "task_history_cost",
]

ROOT = Path(__file__).resolve().parent.parent
_NAME = re.compile(rb'"name":"ev(\d+)"')
PAYLOAD = {"text": "x" * 64, "n": 1}


def _more_files() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


class GatewayProcess:
    """``agentbus gateway`` on a free port for namespace ``ns``; ready once ``/healthz`` is."""

    def __init__(self, url: str, ns: str, root: Path = ROOT) -> None:
        self.url = url
        self.ns = ns
        self.root = root  # the checkout whose gateway runs (bench.gateway_ab compares two)
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None
        self.ps: psutil.Process | None = None

    def __enter__(self) -> GatewayProcess:
        _more_files()  # the child inherits the limit: 1,000 streams are 1,000 sockets
        env = {**os.environ, "AGENTBUS_REDIS_URL": self.url, "AGENTBUS_NAMESPACE": self.ns}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "coordinator.cli", "gateway", "--port", str(self.port)],
            cwd=self.root, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        self.ps = psutil.Process(self.process.pid)
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.base + "/healthz", timeout=1).status_code == 200:
                    return self
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.__exit__()
                raise RuntimeError("agentbus gateway did not start")
            time.sleep(0.05)  # polling a child process we started

    def __exit__(self, *exc: object) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def cpu_seconds(self) -> float:
        assert self.ps is not None
        t = self.ps.cpu_times()
        return float(t.user + t.system)

    def rss_mb(self) -> float:
        assert self.ps is not None
        return float(self.ps.memory_info().rss) / 1e6


# -- SSE fan-out -----------------------------------------------------------------------------
class _SseClient(asyncio.Protocol):
    """One EventSource-like client of ``/api/events``: the receive time of each event ``ev<i>``
    (appended to ``recv[i]``). An ``asyncio.Protocol`` (a callback per read) rather than a
    stream reader and a coroutine per client: 1,000 of them share one process and the machine's
    two cores with the gateway, and the cheaper each read is, the less the clients' own CPU
    shows up as delivery latency (a browser has its own)."""

    def __init__(self, expected: int, recv: list[list[int]], ready: asyncio.Event) -> None:
        self.expected = expected
        self.recv = recv
        self.ready = ready
        self.done: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self.buf = b""
        self.got = 0
        self.transport: asyncio.BaseTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # uvloop's is no asyncio.Transport subclass

    def data_received(self, data: bytes) -> None:
        t = time.monotonic_ns()
        buf = self.buf + data
        if not self.ready.is_set():
            if b"event: ready" not in buf:
                self.buf = buf
                return
            self.ready.set()
            buf = buf[buf.index(b"event: ready") :]
        end = 0
        for m in _NAME.finditer(buf):
            self.recv[int(m.group(1))].append(t)
            self.got += 1
            end = m.end()
        self.buf = buf[end:]
        if self.got >= self.expected and not self.done.done():
            self.done.set_result(self.got)
            assert self.transport is not None
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_result(self.got)


async def _sse_client(
    host: str, port: int, expected: int, recv: list[list[int]], ready: asyncio.Event
) -> int:
    """One client (``_SseClient``); returns how many events it got."""
    loop = asyncio.get_running_loop()
    transport, client = await loop.create_connection(
        lambda: _SseClient(expected, recv, ready), host, port
    )
    transport.write(
        f"GET /api/events HTTP/1.1\r\nHost: {host}:{port}\r\nAccept: text/event-stream\r\n"
        "\r\n".encode()
    )
    try:
        return await client.done
    finally:
        transport.close()


async def sse_clients_worker(
    ctx: WorkerContext, host: str, port: int, n: int, expected: int
) -> None:
    """``n`` SSE clients; ready once every one is subscribed; puts the receive times and the
    CPU the clients' process used while receiving."""
    _more_files()
    recv: list[list[int]] = [[] for _ in range(expected)]
    readies = [asyncio.Event() for _ in range(n)]
    tasks = []
    for i in range(n):
        tasks.append(asyncio.create_task(_sse_client(host, port, expected, recv, readies[i])))
        if i % 50 == 49:
            await asyncio.sleep(0)  # let the connections open in waves
    await asyncio.wait_for(asyncio.gather(*(r.wait() for r in readies)), 120)
    ctx.ready()
    cpu0, t0 = time.process_time(), time.monotonic()
    done, pending = await asyncio.wait(tasks, timeout=120)
    cpu_pct = 100.0 * (time.process_time() - cpu0) / max(time.monotonic() - t0, 1e-9)
    for task in pending:
        task.cancel()
    counts = [t.result() for t in done if not t.cancelled() and t.exception() is None]
    ctx.put({"recv": recv, "complete": sum(1 for c in counts if c == expected),
             "clients_cpu_pct": cpu_pct})  # fmt: skip


def _event_fields(i: int) -> dict[str, str]:
    at = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return {"type": "agent_updated", "name": f"ev{i}", "instance_id": "bench", "role": "bench",
            "at": at}  # fmt: skip


async def _blocked_xreads(url: str, ns: str) -> int:
    r = client(url)
    try:
        listed: Any = await r.client_list()
    finally:
        await r.aclose()
    return sum(1 for c in listed if c.get("name") == f"agentbus:{ns}" and c.get("cmd") == "xread")


async def sse_fanout(
    url: str, ns: str, gateway: GatewayProcess, clients: int, events: int, gap: float, loop: str
) -> dict[str, Any]:
    """``clients`` SSE clients on one gateway; ``events`` change-feed entries written ``gap``
    seconds apart; delivery latency from each write to each client's receipt, the gateway's CPU over
    the window and its RSS, and the Redis reads it made."""
    from bench.procs import spawn

    keys = KeySpace(ns)
    worker = spawn(sse_clients_worker, "127.0.0.1", gateway.port, clients, events, loop=loop,
                   wait=False)  # fmt: skip
    try:
        worker.wait_ready(timeout=180)
        r = client(url)
        try:
            readers = await _blocked_xreads(url, ns)
            before = await r.info("commandstats")
            cpu0, t0 = gateway.cpu_seconds(), time.monotonic()
            written: list[int] = []
            for i in range(events):
                written.append(time.monotonic_ns())
                await r.xadd(keys.events(), _event_fields(i))  # type: ignore[arg-type]
                await asyncio.sleep(gap)
            result = worker.result(timeout=180)
            cpu1, t1 = gateway.cpu_seconds(), time.monotonic()
            after = await r.info("commandstats")
        finally:
            await r.aclose()
    finally:
        worker.stop()
    samples = [t - written[i] for i, times in enumerate(result["recv"]) for t in times]
    xreads = int(after.get("cmdstat_xread", {}).get("calls", 0)) - int(
        before.get("cmdstat_xread", {}).get("calls", 0)
    )
    return {
        "latency": Latency.from_ns(samples),
        "delivered": len(samples),
        "expected": clients * events,
        "complete_clients": result["complete"],
        "cpu_pct": 100.0 * (cpu1 - cpu0) / (t1 - t0),
        "clients_cpu_pct": result.get("clients_cpu_pct"),
        "rss_mb": gateway.rss_mb(),
        "blocked_xread_connections": readers,
        "xread_calls": xreads,
        "window_s": t1 - t0,
    }


# -- HTTP against Python ----------------------------------------------------------------------
class RawHttp:
    """A minimal HTTP/1.1 keep-alive client (one connection, ``Content-Length`` bodies): the
    bench measures the gateway, not a client library (httpx adds ~1 ms a call)."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def __aenter__(self) -> RawHttp:
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.writer is not None:
            self.writer.close()

    async def call(self, method: str, path: str, body: bytes = b"") -> tuple[int, bytes]:
        assert self.reader is not None
        assert self.writer is not None
        head = f"{method} {path} HTTP/1.1\r\nHost: {self.host}\r\n"
        if body:
            head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        self.writer.write(head.encode() + b"\r\n" + body)
        status_line = await self.reader.readuntil(b"\r\n")
        length = 0
        while (line := await self.reader.readuntil(b"\r\n")) != b"\r\n":
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value.strip())
        return int(status_line.split()[1]), await self.reader.readexactly(length)


async def http_vs_python_discover(
    url: str, ns: str, gateway: GatewayProcess, sizes: Sizes
) -> tuple[Latency, Latency, int]:
    """``GET /api/agents?role=R&limit=1000`` against ``Bus.discover(role=R)``, in turn, a
    different role each call; (http, python, agents per answer)."""
    from agent_sdk.bus import Bus
    from agent_sdk.settings import Settings

    n = max(20, sizes.samples // 10)
    http_ns: list[int] = []
    py_ns: list[int] = []
    found = 0
    async with (
        Bus(Settings(redis_url=url, namespace=ns)) as bus,
        RawHttp("127.0.0.1", gateway.port) as web,
    ):
        for j in range(n + 5):
            role = f"role-{j % 10}"
            t0 = now_ns()
            status, raw = await web.call("GET", f"/api/agents?role={role}&limit=1000")
            body = orjson.loads(raw)
            t1 = now_ns()
            records = await bus.discover(role=role)
            t2 = now_ns()
            assert status == 200, raw
            if j >= 5:
                http_ns.append(t1 - t0)
                py_ns.append(t2 - t1)
                found = len(records)
                assert len(body["agents"]) == found, (len(body["agents"]), found)
    return Latency.from_ns(http_ns), Latency.from_ns(py_ns), found


async def http_vs_python_request(
    url: str, ns: str, gateway: GatewayProcess, sizes: Sizes, loop: str, name: str = "rx-gateway"
) -> tuple[Latency, Latency]:
    """``POST /api/agents/{name}/requests`` against ``Bus.request``, in turn, to an ``echo``
    agent ``name`` in another process; (http, python)."""
    from agent_sdk.bus import Bus
    from agent_sdk.settings import Settings
    from bench.messaging import receiver_worker
    from bench.procs import spawn

    receiver = spawn(receiver_worker, url, ns, name, 0, 1, "off", loop=loop)
    n = max(20, sizes.samples // 5)
    http_ns: list[int] = []
    py_ns: list[int] = []
    try:
        async with (
            Bus(Settings(redis_url=url, namespace=ns)) as bus,
            RawHttp("127.0.0.1", gateway.port) as web,
        ):
            body = orjson.dumps({"type": "echo", "payload": PAYLOAD})
            for j in range(n + sizes.warmup // 10 + 5):
                t0 = now_ns()
                status, raw = await web.call("POST", f"/api/agents/{name}/requests", body)
                reply = orjson.loads(raw)
                t1 = now_ns()
                await bus.request(name, "echo", PAYLOAD, timeout=5)
                t2 = now_ns()
                assert status == 200, raw
                assert reply["reply"] == PAYLOAD
                if j >= sizes.warmup // 10 + 5:
                    http_ns.append(t1 - t0)
                    py_ns.append(t2 - t1)
    finally:
        receiver.stop()
    return Latency.from_ns(http_ns), Latency.from_ns(py_ns)


# -- the task history's cost --------------------------------------------------------------------
async def counting_worker(
    ctx: WorkerContext, url: str, ns: str, name: str, n: int, task_history: int
) -> None:
    """An agent (``max_concurrency`` 64) counting ``bench`` messages, with ``task_history``."""
    from agent_sdk.agent import Agent
    from agent_sdk.settings import Settings

    settings = Settings(redis_url=url, namespace=ns, task_history=task_history)
    agent = Agent(name, "bench", max_concurrency=64, settings=settings)
    state = {"count": 0, "last": 0}
    done = asyncio.Event()

    @agent.on("bench")
    async def count(payload: Any) -> None:
        state["count"] += 1
        state["last"] = now_ns()
        if state["count"] >= n:
            done.set()

    async with agent:
        ctx.ready()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(done.wait(), timeout=120)
        assert agent.usage is not None
        await agent.usage.flush()
        ctx.put(state)
        await asyncio.Event().wait()


async def task_history_cost(url: str, ns: str, sizes: Sizes, loop: str) -> dict[str, Any]:
    """Direct send throughput to an agent recording its task history (default bound) and to
    one recording none, in turn (twice each); the stream's length afterwards."""
    from bench.messaging import client_worker
    from bench.procs import spawn

    n = sizes.messages
    rates: dict[int, list[float]] = {1000: [], 0: []}
    r = client(url)
    lengths = []
    try:
        for turn in range(4):
            history = 1000 if turn % 2 == 0 else 0
            name = f"rx-history-{turn}"
            receiver = spawn(counting_worker, url, ns, name, n, history, loop=loop)
            try:
                sender = spawn(client_worker, url, ns, name, "send", n, 0, "off", loop=loop)
                try:
                    sent = sender.result(timeout=300)
                    got = receiver.result(timeout=120)
                finally:
                    sender.stop()
            finally:
                receiver.stop()
            rates[history].append(Throughput(got["count"], (got["last"] - sent["t0"]) / 1e9).rate)
            if history:
                lengths.append(int(await r.xlen(KeySpace(ns).tasks(name))))
    finally:
        await r.aclose()
    return {"with": max(rates[1000]), "without": max(rates[0]), "lengths": lengths, "n": n}

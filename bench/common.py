"""Shared pieces: sizes, clients, the message body every benchmark sends, clocks."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from pathlib import Path

import redis.asyncio as aioredis

from schemas.envelope import Envelope, Kind

__all__ = [
    "Sizes", "body_envelope", "callgrind_total", "client", "command_calls", "now_ns", "per_op",
]  # fmt: skip

#: CLOCK_MONOTONIC: one clock for every process on the machine, so one-way latencies between
#: processes can be taken from a timestamp carried in the message.
now_ns = time.perf_counter_ns


@dataclass(frozen=True, slots=True)
class Sizes:
    """How much work each benchmark does (``--quick`` shrinks everything)."""

    samples: int = 5000  # sequential latency samples
    warmup: int = 300
    messages: int = 50_000  # throughput runs
    agents: int = 10_000  # fleet / discovery
    duration: float = 60.0  # heartbeat fleet window, seconds
    kills: int = 20  # failure detection
    scaling: tuple[int, ...] = (100, 1000, 10_000)
    scaling_window: float = 10.0  # heartbeat CPU window per scaling point
    fleet_procs: int = 3
    settle: float = 2.0  # seconds between a fleet's registration burst and its measured window
    hosts: tuple[int, ...] = (100, 1000, 10_000)  # agents per host (the host group)
    host_added: int = 100  # agents added at once to a running host
    host_bursts: int = 5  # times ``host_added`` are added at once (one burst is noisy)
    host_kill: int = 1000  # agents of the host that is SIGKILLed
    host_spread: tuple[int, int] = (4462, 100)  # agents over 3 hosts, single-agent processes
    host_ttl: tuple[float, float] = (1.0, 3.0)  # heartbeat interval and TTL of the host group
    sse_clients: int = 1000  # SSE clients of one gateway (the gateway group)
    sse_events: int = 50  # change-feed events they all receive

    @classmethod
    def quick(cls) -> Sizes:
        return cls(
            samples=40,
            warmup=5,
            messages=300,
            agents=200,
            duration=0.5,
            kills=2,
            scaling=(30,),
            scaling_window=0.3,
            fleet_procs=2,
            settle=0.2,
            hosts=(20,),
            host_added=10,
            host_bursts=2,
            host_kill=6,
            host_spread=(30, 2),
            host_ttl=(0.2, 0.6),
            sse_clients=20,
            sse_events=5,
        )


def client(url: str, *, max_connections: int | None = None) -> aioredis.Redis:
    """A plain redis-py asyncio client: no ``socket_timeout`` (it costs 7-16 µs a call)."""
    return aioredis.Redis.from_url(url, socket_timeout=None, max_connections=max_connections)


async def command_calls(url: str) -> dict[str, int]:
    """Redis ``INFO commandstats`` call counts per command (to count commands per operation)."""
    r = client(url)
    try:
        info = await r.info("commandstats")
    finally:
        await r.aclose()
    return {k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in info.items()}


def per_op(before: dict[str, int], after: dict[str, int], ops: int) -> dict[str, float]:
    """Commands per operation between two ``command_calls`` snapshots (≥ 0.05 shown)."""
    out = {}
    for name, calls in after.items():
        d = (calls - before.get(name, 0)) / max(ops, 1)
        if d >= 0.05 and name not in ("info", "ping"):
            out[name] = round(d, 2)
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))


def body_envelope(sender: str = "bench-tx", target: str = "bench-rx") -> Envelope:
    """The message every benchmark sends: a small realistic envelope (~250 bytes as JSON)."""
    return Envelope(
        kind=Kind.SEND,
        type="bench",
        sender=sender,
        target=target,
        payload={"text": "x" * 64, "n": 1},
    )


def callgrind_total(out: Path) -> int | None:
    """The instructions a callgrind output file counted (``totals:``, else ``summary:``, which
    is 0 when counting started off); ``None`` if it holds neither."""
    text = out.read_text()
    found = re.search(r"^totals:\s*(\d+)", text, re.MULTILINE) or re.search(
        r"^summary:\s*(\d+)", text, re.MULTILINE
    )
    return int(found.group(1)) if found is not None else None

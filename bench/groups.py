"""Benchmark groups: each measures its figures and adds rows to the context."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from bench import raw
from bench.cli import Context
from bench.stats import Latency, Row, Value
from schemas.keys import KeySpace

__all__ = [
    "failure_group",
    "fleet_group",
    "messaging_group",
    "raw_group",
    "registry_group",
    "scaling_group",
    "tracing_group",
]


async def _flush(url: str) -> None:
    """Empty our own throwaway server between groups (never a shared one)."""
    from bench.common import client

    r = client(url)
    try:
        await r.flushdb()
    finally:
        await r.aclose()


async def raw_group(ctx: Context) -> None:
    """Baselines: raw redis-py doing the work with no agentbus code, and NATS as a peer."""
    keys = KeySpace("bench")
    s, url, loop = ctx.sizes, ctx.url, ctx.loop
    measures: list[tuple[str, str, Callable[[], Awaitable[Value]]]] = [
        ("ping", "raw: PING round trip, 1 connection", lambda: raw.ping(url, s)),
        ("pubsub_oneway", "raw: pub/sub one-way, 2 processes",
         lambda: raw.pubsub_oneway(url, keys, s, loop)),
        ("stream_oneway", "raw: stream XADD→XREADGROUP→XACK one-way, 2 processes",
         lambda: raw.stream_oneway(url, keys, s, loop)),
        ("lpush_blpop_rr", "raw: request-reply LPUSH + BLPOP (per-request key), 2 processes",
         lambda: raw.lpush_blpop_rr(url, keys, s, loop)),
        ("pubsub_rr", "raw: request-reply over pub/sub, 2 processes",
         lambda: raw.pubsub_rr(url, keys, s, loop)),
        ("registry_write", "raw: registry write MULTI{HSET 10 fields + PEXPIRE}",
         lambda: raw.registry_write(url, keys, s)),
        ("pubsub_throughput", "raw: pub/sub throughput to 1 subscriber (pipelined)",
         lambda: raw.pubsub_throughput(url, keys, s, loop)),
        ("stream_throughput", "raw: stream XADD→XREADGROUP→XACK throughput (batched)",
         lambda: raw.stream_throughput(url, keys, s, loop)),
    ]  # fmt: skip
    for key, title, make in measures:
        value = await make()
        ctx.raw[key] = value
        ctx.add(Row(key=f"raw.{key}", title=title, value=value))
        await _flush(url)
    if ctx.nats_url:
        value = await raw.nats_rr(ctx.nats_url, s, loop)
        ctx.raw["nats_rr"] = value
        ctx.add(Row(key="raw.nats_rr", title="peer: NATS request-reply (nats-py), 2 processes",
                    value=value))  # fmt: skip
    else:
        ctx.add(Row(key="raw.nats_rr", title="peer: NATS request-reply", value=None,
                    note="skipped: nats-server or nats-py not installed"))  # fmt: skip


def _missing(ctx: Context, key: str, title: str, why: str) -> None:
    ctx.add(Row(key=key, title=title, value=None, note=f"not measured: {why}"))


async def registry_group(ctx: Context) -> None:
    _missing(ctx, "register", "register: announce → accepted", "pending")


async def messaging_group(ctx: Context) -> None:
    _missing(ctx, "request_reply", "request-reply", "pending")


async def failure_group(ctx: Context) -> None:
    _missing(ctx, "failure", "failure detection", "pending")


async def fleet_group(ctx: Context) -> None:
    _missing(ctx, "fleet", "fleet", "pending")


async def scaling_group(ctx: Context) -> None:
    _missing(ctx, "scaling", "scaling", "pending")


async def tracing_group(ctx: Context) -> None:
    _missing(ctx, "tracing", "tracing", "pending")


_ = Latency

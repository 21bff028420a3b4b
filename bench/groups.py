"""Benchmark groups: each measures its figures and adds rows to the context."""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable
from typing import Any

from bench import discovery, failure, fleet, messaging, raw
from bench.cli import Context
from bench.coord import CoordinatorProcess
from bench.stats import Latency, Row, Scalar, Throughput, Value
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
        (
            "pubsub_oneway",
            "raw: pub/sub one-way, 2 processes",
            lambda: raw.pubsub_oneway(url, keys, s, loop),
        ),
        (
            "stream_oneway",
            "raw: stream XADD→XREADGROUP→XACK one-way, 2 processes",
            lambda: raw.stream_oneway(url, keys, s, loop),
        ),
        (
            "lpush_blpop_rr",
            "raw: request-reply LPUSH + BLPOP (per-request key), 2 processes",
            lambda: raw.lpush_blpop_rr(url, keys, s, loop),
        ),
        (
            "pubsub_rr",
            "raw: request-reply over pub/sub, 2 processes",
            lambda: raw.pubsub_rr(url, keys, s, loop),
        ),
        (
            "registry_write",
            "raw: registry write MULTI{HSET 10 fields + PEXPIRE}",
            lambda: raw.registry_write(url, keys, s),
        ),
        (
            "pubsub_throughput",
            "raw: pub/sub throughput to 1 subscriber (pipelined)",
            lambda: raw.pubsub_throughput(url, keys, s, loop),
        ),
        (
            "stream_throughput",
            "raw: stream XADD→XREADGROUP→XACK throughput (batched)",
            lambda: raw.stream_throughput(url, keys, s, loop),
        ),
        (
            "pubsub_throughput_unbatched",
            "raw: pub/sub throughput, 1 PUBLISH per call, 64 in flight",
            lambda: raw.pubsub_throughput_unbatched(url, keys, s, loop),
        ),
        (
            "stream_throughput_unbatched",
            "raw: stream throughput, 1 XADD per call, 64 in flight",
            lambda: raw.stream_throughput_unbatched(url, keys, s, loop),
        ),
    ]
    for key, title, make in measures:
        value = await make()
        ctx.raw[key] = value
        ctx.add(Row(key=f"raw.{key}", title=title, value=value))
        await _flush(url)
    if ctx.nats_url:
        value = await raw.nats_rr(ctx.nats_url, s, loop)
        ctx.raw["nats_rr"] = value
        ctx.add(
            Row(
                key="raw.nats_rr",
                title="peer: NATS request-reply (nats-py), 2 processes",
                value=value,
            )
        )
    else:
        ctx.add(
            Row(
                key="raw.nats_rr",
                title="peer: NATS request-reply",
                value=None,
                note="skipped: nats-server or nats-py not installed",
            )
        )


def _missing(ctx: Context, key: str, title: str, why: str) -> None:
    ctx.add(Row(key=key, title=title, value=None, note=f"not measured: {why}"))


def _lat_met(value: Latency, p50_us: float, p99_us: float) -> bool:
    return value.n > 0 and value.p50 <= p50_us and value.p99 <= p99_us


def _raw(ctx: Context, key: str) -> Value | None:
    value = ctx.raw.get(key)
    return value if isinstance(value, Latency | Throughput | Scalar) else None


async def registry_group(ctx: Context) -> None:
    """Register (announce → accepted) and discovery among ``sizes.agents`` agents."""
    s, url = ctx.sizes, ctx.url
    ns = "reg"
    with CoordinatorProcess(url, ns):
        value = await fleet.register_latency(url, KeySpace(ns), s)
        sdk, sdk_cmds = await fleet.sdk_start_latency(url, ns, max(5, min(s.samples // 10, 200)))
    ctx.add(
        Row(
            key="register_sdk",
            title="Agent.start(): connect + reply router + announce → accepted",
            value=sdk,
            note="one new Agent at a time, in the bench process; stopped (leave) after each; "
            f"Redis commands per start + stop: {sdk_cmds}",
        )
    )
    ctx.add(
        Row(
            key="register",
            title="register: announce → accepted by the coordinator",
            value=value,
            baseline_name="raw registry write",
            baseline=_raw(ctx, "registry_write"),
            target="≤ 1 ms / ≤ 3 ms",
            met=_lat_met(value, 1000, 3000),
            note="simulated agent speaking the protocol: XADD announce, BRPOP announce_result",
        )
    )
    await _flush(url)

    ns = "disc"
    with CoordinatorProcess(url, ns):
        reg = await fleet.bulk_register(url, KeySpace(ns), s.agents)
        ctx.details["bulk_register"] = reg
        ctx.add(
            Row(
                key="register_bulk",
                title=f"registration throughput, {s.agents} pipelined announces",
                value=Throughput(reg["accepted"], reg["seconds"], "agents/s"),
                note=f"{reg['registered']} registered, {reg['refused']} refused",
            )
        )
        side = await discovery.discover_side_by_side(url, ns, s)
    (ab, found), (raw_value, raw_found) = side["agentbus"], side["raw"]
    raw_json, raw_json_found = side["raw_json"]
    ctx.add(
        Row(
            key="discover",
            title=f"discover role + 2 capabilities among {s.agents} agents",
            value=ab,
            baseline_name="raw SINTER+HGETALL Lua",
            baseline=raw_value,
            target="≤ 2 ms / ≤ 5 ms",
            met=_lat_met(ab, 2000, 5000),
            note=f"{found} matches per query (raw: {raw_found}); agentbus and both raw "
            "baselines measured in turn, a different query each call",
        )
    )
    ctx.add(
        Row(
            key="discover_raw_json",
            title="raw: discover's own reads (SINTER + HMGET of 18 fields → one JSON reply)",
            value=raw_json,
            note=f"{raw_json_found} matches per query; orjson → dicts of strings: the floor "
            "for agentbus, which builds AgentRecords from the same rows",
        )
    )
    await _flush(url)


async def messaging_group(ctx: Context) -> None:
    """Request-reply, direct send and broadcast between two processes."""
    s, url, loop = ctx.sizes, ctx.url, ctx.loop
    ns = "msg"
    with CoordinatorProcess(url, ns):
        rr, info = await messaging.agentbus_rr(url, ns, s, loop)
        same, same_cmds = await messaging.raw_same_commands_rr(url, ns, s, loop)
        ctx.raw["same_commands_rr"] = same
        ctx.details["commands_per_request"] = {"agentbus": info["commands"], "raw": same_cmds}
        ratio_ok = rr.p50 <= 1.5 * same.p50
        ctx.add(
            Row(
                key="request_reply",
                title="request-reply, 2 processes, sequential",
                value=rr,
                baseline_name="raw redis-py, same commands",
                baseline=same,
                target="≤ 1.5× raw / p99 ≤ 1 ms",
                met=ratio_ok and rr.p99 <= 1000,
                note=f"Redis commands per request: agentbus {info['commands']}; raw {same_cmds}",
            )
        )
        for key, name in (
            ("lpush_blpop_rr", "raw LPUSH+BLPOP"),
            ("pubsub_rr", "raw pub/sub reply"),
            ("nats_rr", "NATS nats-py"),
        ):
            base = _raw(ctx, key)
            if base is not None:
                ctx.add(
                    Row(
                        key=f"request_reply.vs.{key}",
                        title="request-reply, 2 processes, sequential",
                        value=rr,
                        baseline_name=name,
                        baseline=base,
                    )
                )
        direct, direct_info = await messaging.agentbus_rr(url, ns, s, loop, durable=False)
        nats = _raw(ctx, "nats_rr")
        ctx.add(
            Row(
                key="request_reply_direct",
                title="request-reply durable=False (direct), 2 processes, sequential",
                value=direct,
                baseline_name="NATS nats-py",
                baseline=nats,
                target="p50 ahead of NATS request-reply",
                met=isinstance(nats, Latency) and direct.p50 < nats.p50,
                note=f"Redis commands per request: {direct_info['commands']}",
            )
        )
        send, send_cmds = await messaging.agentbus_send(url, ns, s, loop)
        ctx.details["commands_per_send"] = send_cmds
        base = _raw(ctx, "stream_throughput")
        ctx.add(
            Row(
                key="send_throughput",
                title="direct send throughput, 1 sender → 1 receiver",
                value=send,
                baseline_name="raw XADD→XREADGROUP→XACK, batched",
                baseline=base,
                target="≥ 50 % of raw",
                met=_ratio_at_least(send, base, 0.5),
                note=f"{messaging.WINDOW} sends in flight; receiver max_concurrency "
                f"{messaging.RECEIVER_CONCURRENCY}; Redis commands per message {send_cmds}",
            )
        )
        base = _raw(ctx, "stream_throughput_unbatched")
        if base is not None:
            ctx.add(
                Row(
                    key="send_throughput.vs.unbatched",
                    title="direct send throughput, 1 sender → 1 receiver",
                    value=send,
                    baseline_name="raw, 1 XADD per call, 64 in flight",
                    baseline=base,
                )
            )
        piped = await messaging.raw_pipelined_send_throughput(url, ns, s, loop)
        ctx.raw["pipelined_send_script"] = piped
        ctx.add(
            Row(
                key="send_throughput.vs.pipelined_script",
                title="direct send throughput, 1 sender → 1 receiver",
                value=send,
                baseline_name="raw send script, 64 per pipeline (auto-pipelining bound)",
                baseline=piped,
            )
        )
        many, many_cmds = await messaging.agentbus_broadcast(url, ns, s, loop, many=True)
        base = _raw(ctx, "pubsub_throughput")
        ctx.add(
            Row(
                key="broadcast_throughput",
                title="broadcast throughput to 1 subscriber (broadcast_many)",
                value=many,
                baseline_name="raw PUBLISH, pipelined",
                baseline=base,
                target="≥ 60 % of raw",
                met=_ratio_at_least(many, base, 0.6),
                note=f"Bus.broadcast_many, {messaging.WINDOW} payloads a call (one pipeline); "
                f"commands per message {many_cmds}",
            )
        )
        bcast, bcast_cmds = await messaging.agentbus_broadcast(url, ns, s, loop)
        base = _raw(ctx, "pubsub_throughput_unbatched")
        if base is not None:
            ctx.add(
                Row(
                    key="broadcast_throughput.calls",
                    title="broadcast throughput to 1 subscriber (one call a message)",
                    value=bcast,
                    baseline_name="raw, 1 PUBLISH per call, 64 in flight",
                    baseline=base,
                    note=f"{messaging.WINDOW} Bus.broadcast calls in flight (auto-pipelined); "
                    f"commands per message {bcast_cmds}",
                )
            )
        base = _raw(ctx, "pubsub_throughput")
        ctx.add(
            Row(
                key="broadcast_throughput.calls.vs.pipelined",
                title="broadcast throughput to 1 subscriber (one call a message)",
                value=bcast,
                baseline_name="raw PUBLISH, pipelined",
                baseline=base,
            )
        )
    await _flush(url)


def _ratio_at_least(value: Throughput, base: Value | None, fraction: float) -> bool | None:
    if not isinstance(base, Throughput) or base.rate <= 0:
        return None
    return value.rate >= fraction * base.rate


async def failure_group(ctx: Context) -> None:
    """SIGKILL → agent_expired, default settings (heartbeat 1 s, TTL 3 s; quick: 0.1 s / 0.3 s)."""
    s, url = ctx.sizes, ctx.url
    heartbeat, ttl = (0.1, 0.3) if s.kills < 5 else (1.0, 3.0)
    ns = "fail"
    env = {"heartbeat_interval": str(heartbeat), "ttl": str(ttl)}
    with CoordinatorProcess(url, ns, **env):
        value, info = await failure.failure_detection(url, ns, s.kills, ctx.loop, heartbeat, ttl)
    ctx.details["failure"] = info
    met = value.n == s.kills and value.p50 <= (ttl + 0.5) * 1e6 and value.max <= 4e6
    ctx.add(
        Row(
            key="failure_detection",
            title=f"failure detection: SIGKILL → agent_expired ({s.kills} kills, TTL {ttl:g} s)",
            value=value,
            target="≤ TTL + 0.5 s, max ≤ 4 s",
            met=met,
            note=f"max {value.max / 1e6:.2f} s, missed {info['missed']}",
        )
    )
    await _flush(url)


def _fleet_rows(ctx: Context, res: dict[str, Any], label: str) -> None:
    n = res["agents"]
    cpu = float(res["cpu_percent"])
    rss = float(res["rss_peak_mb"])
    expired = int(res["expired_in_window"])
    expired_total = int(res["expired_total"])
    per_agent = float(res["redis_bytes_per_agent"])
    registry = float(res["redis_registry_bytes_per_agent"])
    ctx.add(
        Row(
            key=f"{label}.cpu",
            title=f"{n} agents heartbeating 1/s: coordinator CPU",
            value=Scalar(cpu, "% of a core"),
            target="≤ 50 %",
            met=cpu <= 50,
            note=f"window {res['window_s']} s, {res['heartbeats_sent']} heartbeats, "
            f"simulators late ≤ {res['simulator_max_late_ms']} ms; control stream lag ≤ "
            f"{res['control_lag_max']} entries; redis-server CPU {res['redis_cpu_percent']:.0f} %",
        )
    )
    ctx.add(
        Row(
            key=f"{label}.false_expiry",
            title=f"{n} agents heartbeating: false expiries",
            value=Scalar(expired, "", "{:.0f}"),
            target="0",
            met=expired == 0 and expired_total == 0,
            note=f"{res['registered_at_end']} registered at the end; {expired_total} expired "
            f"over the whole run, {res['simulator_reannounces']} announces repeated; "
            f"registration of all {n} took {res['register_seconds']:.1f} s (≤ 500 announces in "
            f"flight per simulator process; join p50 {res['join_p50_s']:.2f} s, max "
            f"{res['join_max_s']:.2f} s); "
            f"coordinator counters "
            f"{res.get('coordinator_stats')}",
        )
    )
    ctx.add(
        Row(
            key=f"{label}.rss",
            title=f"{n} agents: coordinator RSS (peak)",
            value=Scalar(rss, "MB"),
            target="≤ 100 MB",
            met=rss <= 100,
        )
    )
    ctx.add(
        Row(
            key=f"{label}.redis_memory",
            title=f"{n} agents: Redis memory per agent",
            value=Scalar(per_agent, "B"),
            note=f"registry only {registry:.0f} B/agent; the rest is the control stream "
            f"backlog ({int(res['redis_control_stream_bytes']) / 1e6:.1f} MB) and "
            f"change feed",
        )
    )


async def fleet_group(ctx: Context) -> None:
    """``sizes.agents`` simulated agents heartbeating for ``sizes.duration`` seconds.

    The fleet rolls out with at most 500 announcements in flight per simulator process (as a
    deployment would); a second, short run starts every agent at the same instant (mass start).
    """
    s = ctx.sizes
    res = await fleet.fleet_run(
        ctx.url, "fleet", s.agents, s.duration, s.fleet_procs, ctx.loop, settle=s.settle
    )
    ctx.details["fleet"] = res
    _fleet_rows(ctx, res, "fleet")
    await _flush(ctx.url)
    window = min(s.duration, 10.0)
    mass = await fleet.fleet_run(
        ctx.url, "mass", s.agents, window, s.fleet_procs, ctx.loop, settle=s.settle, ramp=0
    )
    ctx.details["fleet_mass_start"] = mass
    ctx.add(
        Row(
            key="fleet.mass_start",
            title=f"{s.agents} agents announcing at the same instant: agents expired",
            value=Scalar(float(mass["expired_total"]), "", "{:.0f}"),
            note=f"{mass['registered_at_end']} registered after {window:g} s of heartbeats; "
            f"first announce → announce_result p50 {mass['join_p50_s']:.1f} s, max "
            f"{mass['join_max_s']:.1f} s (reply lists polled once a second: up to 1 s late), "
            f"{mass['joins_over_5s']} over the SDK's 5 s announce_timeout; "
            f"{mass['simulator_reannounces']} announces repeated (unanswered in 5 s, or asked "
            f"by the coordinator); control lag ≤ "
            f"{mass['control_lag_max']} entries; coordinator counters "
            f"{mass.get('coordinator_stats')}",
        )
    )
    await _flush(ctx.url)


async def scaling_group(ctx: Context) -> None:
    """Registration throughput, heartbeat CPU and discovery latency at each fleet size."""
    s, url = ctx.sizes, ctx.url
    curves: list[dict[str, object]] = []
    small = dataclasses.replace(s, samples=min(s.samples, 1000))
    for n in s.scaling:
        ns = f"scale-{n}"
        with CoordinatorProcess(url, ns):
            reg = await fleet.bulk_register(url, KeySpace(ns), n)
            disc, found = await discovery.agentbus_discover(url, ns, small)
        await _flush(url)
        res = await fleet.fleet_run(
            url, f"scale-hb-{n}", n, s.scaling_window, s.fleet_procs, ctx.loop, settle=s.settle
        )
        await _flush(url)
        point = {
            "agents": n,
            "register_per_s": reg["per_second"],
            "hb_cpu_percent": res["cpu_percent"],
            "rss_peak_mb": res["rss_peak_mb"],
            "discover_p50_us": disc.p50,
            "discover_p99_us": disc.p99,
            "matches": found,
            "false_expiries": res["expired_in_window"],
        }
        curves.append(point)
        ctx.add(
            Row(
                key=f"scaling.{n}.register",
                title=f"scaling {n}: registration throughput",
                value=Throughput(reg["accepted"], reg["seconds"], "agents/s"),
            )
        )
        ctx.add(
            Row(
                key=f"scaling.{n}.cpu",
                title=f"scaling {n}: heartbeat CPU (coordinator)",
                value=Scalar(float(res["cpu_percent"]), "% of a core"),
                note=f"{res['expired_in_window']} false expiries",
            )
        )
        ctx.add(
            Row(
                key=f"scaling.{n}.discover",
                title=f"scaling {n}: discover (≈{found} matches)",
                value=disc,
            )
        )
    ctx.details["scaling"] = curves


async def tracing_group(ctx: Context) -> None:
    """Request-reply with tracing off vs on (OTel SDK, in-memory exporter, both processes)."""
    s, url, loop = ctx.sizes, ctx.url, ctx.loop
    ns = "trace"
    with CoordinatorProcess(url, ns):
        off, _ = await messaging.agentbus_rr(url, ns, s, loop, tracing="off")
        on, info = await messaging.agentbus_rr(url, ns, s, loop, tracing="on")
    ctx.add(
        Row(
            key="tracing",
            title="request-reply with tracing on (OTel SDK, in-memory)",
            value=on,
            baseline_name="tracing off",
            baseline=off,
            note=f"{info['client_spans']} client spans recorded",
        )
    )
    await _flush(url)

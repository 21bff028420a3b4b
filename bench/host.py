"""The ``host`` group: the targets of the Host issue, each beside its baseline of the same run.

* Hosts of 100, 1,000 and 10,000 agents (``BENCH_HOST_SIZES``), each in a worker process
  against a real coordinator (``bench.host_runs.size_run``): all registered after
  ``async with host``; an idle window of ``min(duration, 60)`` s (``BENCH_HOST_WINDOW``) with
  heartbeat 1 s / TTL 3 s: host and coordinator CPU, host RSS, connections held, false
  expiries; request-reply to one hosted agent beside a lone agent, raw redis-py and NATS;
  100 agents started at once on the running host, with where their ``start()`` spent its time.
* A host SIGKILLed while its agents hold role-queue items (``kill_run``).
* 4,462 agents over 3 hosts plus 100 single-agent processes: discovery (``spread_run``).

A lone ``Agent.start()``, one at a time, is the per-agent baseline.
"""

from __future__ import annotations

import os
import statistics
import time
from typing import Any

from bench.cli import Context
from bench.coord import CoordinatorProcess
from bench.host_runs import kill_run, size_run, spread_run
from bench.host_workers import PHASES, settings
from bench.rr_paired import block_ratios, cpu_text
from bench.stats import Latency, Row, Scalar

__all__ = ["host_group", "phase_shares"]

_AT_SCALE = 10_000  # the size the per-host targets are set for
_WAVE = 500  # agents started at a time when a host cannot start all at once


async def _lone_start(url: str, ns: str, samples: int, heartbeat: float, ttl: float) -> Latency:
    """``Agent.start()`` of a lone agent, one after another: the per-agent baseline."""
    from agent_sdk import Agent

    times = []
    for i in range(samples):
        agent = Agent(f"lone-{i}", "lone", settings=settings(url, ns, heartbeat, ttl))
        t = time.perf_counter()
        await agent.start()
        times.append(time.perf_counter() - t)
        await agent.stop()
    return Latency.from_us([t * 1e6 for t in times])


def phase_shares(phases: list[dict[str, float]], totals: list[float]) -> dict[str, Any]:
    """Mean milliseconds per agent in each timed phase of ``start()`` and its share of the
    mean ``start()`` time (the rest: CPU and waits between them)."""
    mean_total = statistics.fmean(totals) if totals else 0.0
    out: dict[str, Any] = {"mean_start_ms": round(mean_total * 1e3, 2)}
    timed = 0.0
    for phase in PHASES:
        spent = [p.get(phase, 0.0) for p in phases]
        mean = statistics.fmean(spent) if spent else 0.0
        timed += mean
        out[phase] = {
            "mean_ms": round(mean * 1e3, 2),
            "p50_ms": round(statistics.median(spent) * 1e3, 2) if spent else 0.0,
            "share": round(mean / mean_total, 3) if mean_total else 0.0,
        }
    rest = mean_total - timed
    out["other"] = {"mean_ms": round(rest * 1e3, 2),
                    "share": round(rest / mean_total, 3) if mean_total else 0.0}  # fmt: skip
    return out


def _wall(wall: float | None, cpu: float) -> str:
    """``; wall 18.0 ms, 84 % on CPU`` (nothing for results that did not time it)."""
    if not wall:
        return ""
    return f"; wall {wall * 1e3:.1f} ms, {min(1.0, cpu / wall) * 100:.0f} % on CPU"


def _shares_text(shares: dict[str, Any]) -> str:
    parts = [
        f"{name} {shares[name]['mean_ms']:.1f} ms ({shares[name]['share'] * 100:.0f} %)"
        for name in (*PHASES, "other")
    ]
    return f"mean start() {shares['mean_start_ms']:.1f} ms: " + ", ".join(parts)


def _size_rows(ctx: Context, res: dict[str, Any], lone: Latency) -> None:
    n = res["agents"]
    at_scale = n >= _AT_SCALE

    def target(text: str) -> str:
        return text if at_scale else ""

    def met(ok: bool) -> bool | None:
        return ok if at_scale else None

    idle = (
        f"idle window {res['window_s']:g} s, heartbeat {res['heartbeat_s']:g} s / "
        f"TTL {res['ttl_s']:g} s"
    )
    wave = res["wave"]
    ctx.add(Row(
        key=f"host.{n}.register" + (".waves" if wave else ""),
        title=f"host of {n} agents: all registered after `async with host`"
        + (f", {wave} at a time" if wave else ""),
        value=Scalar(res["register_s"], "s", "{:.2f}"), target="" if wave else target("≤ 10 s"),
        met=None if wave else met(res["register_s"] <= 10 and res["registered"] >= n),
        note=f"{res['registered']} in the registry after start"
        + ("; the host started empty, then its agents in waves: all at once failed (above), "
           "the figures below are of this host" if wave else ""),
    ))  # fmt: skip
    ctx.add(Row(
        key=f"host.{n}.connections", title=f"host of {n} agents: Redis connections of the process",
        value=Scalar(res["host_connections"], "", "{:.0f}"), target=target("≤ 8"),
        met=met(res["host_connections"] <= 8),
        note=f"psutil; CLIENT LIST agrees on {res['redis_clients']} of them",
    ))  # fmt: skip
    ctx.add(Row(
        key=f"host.{n}.host_cpu", title=f"host of {n} agents idle: host process CPU",
        value=Scalar(res["host_cpu_pct"], "% of a core"), target=target("≤ 10 %"),
        met=met(res["host_cpu_pct"] <= 10), note=idle,
    ))  # fmt: skip
    ctx.add(Row(
        key=f"host.{n}.coordinator_cpu", title=f"host of {n} agents idle: coordinator CPU",
        value=Scalar(res["coordinator_cpu_pct"], "% of a core"), target=target("≤ 10 %"),
        met=met(res["coordinator_cpu_pct"] <= 10),
        note=f"{idle}; coordinator RSS {res['coordinator_rss_mb']:.0f} MB",
    ))  # fmt: skip
    ctx.add(Row(
        key=f"host.{n}.rss", title=f"host of {n} agents: host RSS",
        value=Scalar(res["host_rss_mb"], "MB", "{:.0f}"), target=target("≤ 300 MB"),
        met=met(res["host_rss_mb"] <= 300),
    ))  # fmt: skip
    ctx.add(Row(
        key=f"host.{n}.false_expiry", title=f"host of {n} agents: false expiries",
        value=Scalar(res["expired_in_window"], "", "{:.0f}"), target=target("0"),
        met=met(res["expired_in_window"] == 0 and res["expired_total"] == 0),
        note=f"{idle}; {res['expired_total']} expired from the start to the end of the run "
        f"(the host's agents, after the ones added, before stop); {res['registered_end']} "
        "registered at the end",
    ))  # fmt: skip
    added: Latency = res["added"]
    p50s, cpus = res["added_burst_p50s_s"], res["added_burst_cpu_s"]
    walls = res.get("added_burst_wall_s") or [None] * len(p50s)  # results before session 17
    bursts = zip(p50s, cpus, walls, strict=True)
    shares = phase_shares(res["added_phases"], res["added_s_list"])
    ctx.details[f"host_{n}_add_phases"] = shares
    ctx.add(Row(
        key=f"host.{n}.add", title=f"{ctx.sizes.host_added} agents added at once to a running "
        f"host of {n}: host.agent() + start() p50 / p99",
        value=added, baseline_name="a lone Agent.start(), one at a time", baseline=lone,
        target="p50 ≤ 10 ms, p99 ≤ 25 ms", met=added.p50 <= 10_000 and added.p99 <= 25_000,
        note=f"{len(p50s)} bursts, p50 of each (host CPU per start; the burst's wall time, "
        "of which on the host's CPU): "
        + ", ".join(f"{p * 1e3:.1f} ms ({c * 1e6:.0f} µs{_wall(w, c * ctx.sizes.host_added)})"
                    for p, c, w in bursts)
        + f"; {_shares_text(shares)}; host CPU during the {len(res['added_s_list'])} starts "
        f"{res['add_cpu_s'] * 1e3:.0f} ms; the host's event loop blocked "
        f"{res['loop_blocked_s']:.2f} s in all (sleeps late by > 10 ms), at most "
        f"{res['loop_lag_max_s'] * 1e3:.0f} ms at once",
    ))  # fmt: skip
    rr: dict[str, Any] = res["rr"]
    host_rr, lone_rr = rr["host"], rr["lone"]
    title = f"request-reply to one agent of a host of {n}, 2 processes, sequential"
    ctx.add(Row(
        key=f"host.{n}.rr", title=title, value=host_rr,
        baseline_name="a lone agent, same run", baseline=lone_rr,
        target=target("≤ 1.1× a lone agent"), met=met(host_rr.p50 <= 1.1 * lone_rr.p50),
    ))  # fmt: skip
    nats = rr.get("nats_rr")
    if nats is not None:
        ctx.add(Row(
            key=f"host.{n}.rr.vs.nats_rr", title=title, value=host_rr,
            baseline_name="NATS request-reply (nats-py)", baseline=nats,
            target=target("ahead of NATS (p50)"), met=met(host_rr.p50 < nats.p50),
            note=f"a lone agent: {lone_rr.text()} ({lone_rr.p50 / nats.p50:.2f}× NATS); "
            + block_ratios(rr, "host", "nats_rr") + "; " + cpu_text(rr, "host", "nats_rr"),
        ))  # fmt: skip
    for key, name in (("pubsub_rr", "raw pub/sub reply"), ("lpush_blpop_rr", "raw LPUSH+BLPOP")):
        ctx.add(Row(key=f"host.{n}.rr.vs.{key}", title=title, value=host_rr,
                    baseline_name=name, baseline=rr[key]))  # fmt: skip
    direct = rr.get("host_direct")
    if direct is not None and nats is not None:
        ctx.add(Row(
            key=f"host.{n}.rr_direct.vs.nats_rr",
            title=f"request-reply durable=False to one agent of a host of {n}",
            value=direct, baseline_name="NATS request-reply (nats-py)", baseline=nats,
            target=target("ahead of NATS (p50)"), met=met(direct.p50 < nats.p50),
            note="the non-durable request mode (pub/sub both ways, at-most-once); "
            + block_ratios(rr, "host_direct", "nats_rr") + "; "
            + cpu_text(rr, "host_direct", "nats_rr"),
        ))  # fmt: skip


def _failed_row(ctx: Context, res: dict[str, Any]) -> None:
    n = res["agents"]
    ctx.add(Row(
        key=f"host.{n}.register", title=f"host of {n} agents: all registered after "
        "`async with host`",
        value=None, target="≤ 10 s", met=False,
        note=f"failed after {res['register_fail_s']:.1f} s ({res['registered']} in the "
        f"registry then): {res['register_error']}",
    ))  # fmt: skip


def _kill_rows(ctx: Context, res: dict[str, Any]) -> None:
    ttl = res["ttl_s"]
    expiry: Latency = res["expiry"]
    n = res["agents"]
    ctx.add(Row(
        key="host.kill.expiry",
        title=f"host of {n} agents SIGKILLed: kill → each agent_expired (TTL {ttl:g} s)",
        value=expiry, target="all ≤ TTL + 0.5 s",
        met=res["expired"] == n and expiry.max <= (ttl + 0.5) * 1e6,
        note=f"{res['expired']} of {n} reported expired; last after {expiry.max / 1e6:.2f} s",
    ))  # fmt: skip
    redelivery: Latency = res["redelivery"]
    ctx.add(Row(
        key="host.kill.redelivery",
        title=f"host SIGKILLed holding {res['items']} role-queue items: kill → redelivered "
        "to the other host",
        value=redelivery, target="all redelivered, none lost", met=res["lost"] == 0,
        note=f"{res['held_by_victim']} held by the killed host, {res['redelivered']} "
        f"redelivered, {res['lost']} lost; last after {redelivery.max / 1e6:.2f} s",
    ))  # fmt: skip


def _spread_rows(ctx: Context, res: dict[str, Any]) -> None:
    disc: Latency = res["discover"]
    ctx.add(Row(
        key="host.spread.discover",
        title=f"discover role + 2 capabilities among {res['hosted']} agents on 3 hosts + "
        f"{res['solos']} single-agent processes",
        value=disc, baseline_name="raw SINTER+HGETALL Lua", baseline=res["raw"],
        target="p50 ≤ 2 ms", met=disc.p50 <= 2000,
        note=f"{res['registered']} registered; {res['matches']} matches per query (raw "
        f"{res['raw_matches']}); raw JSON reads {res['raw_json'].text()}; 3 hosts registered "
        f"in {res['hosts_register_s']:.1f} s, {res['solos']} processes started in "
        f"{res['solos_start_s']:.1f} s",
    ))  # fmt: skip


async def host_group(ctx: Context) -> None:
    """The Host issue's targets (module docstring)."""
    s = ctx.sizes
    env = os.environ.get("BENCH_HOST_SIZES", "")
    sizes = [int(x) for x in env.split(",") if x] or list(s.hosts)
    window = float(os.environ.get("BENCH_HOST_WINDOW") or min(s.duration, 60.0))
    heartbeat, ttl = s.host_ttl
    with CoordinatorProcess(ctx.url, "hostlone", heartbeat_interval=str(heartbeat), ttl=str(ttl)):
        lone = await _lone_start(ctx.url, "hostlone", min(30, s.samples), heartbeat, ttl)
    ctx.details["host_lone_start"] = lone.as_dict()
    for n in sizes:
        res = await size_run(ctx.url, n, s, ctx.loop, ctx.nats_url, window)
        if "register_error" in res:  # the other figures, of a host started in waves
            _failed_row(ctx, res)
            ctx.details[f"host_{n}_all_at_once"] = _plain(res)
            res = await size_run(ctx.url, n, s, ctx.loop, ctx.nats_url, window, wave=_WAVE)
            if "register_error" in res:
                _failed_row(ctx, res)
                continue
        _size_rows(ctx, res, lone)
        ctx.details[f"host_{n}"] = _plain(res)
    res = await kill_run(ctx.url, s, ctx.loop)
    _kill_rows(ctx, res)
    ctx.details["host_kill"] = _plain(res)
    res = await spread_run(ctx.url, s, ctx.loop)
    _spread_rows(ctx, res)
    ctx.details["host_spread"] = _plain(res)


def _plain(res: dict[str, Any]) -> dict[str, Any]:
    """``res`` for the JSON file: summaries as dicts, the per-agent phases left out."""
    out: dict[str, Any] = {}
    for key, value in res.items():
        if key in ("added_phases", "added_s_list"):
            continue
        if isinstance(value, Latency):
            out[key] = value.as_dict()
        elif isinstance(value, dict):
            out[key] = _plain(value)
        else:
            out[key] = value
    return out

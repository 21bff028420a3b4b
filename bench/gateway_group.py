"""The gateway group (issue 13's targets): SSE fan-out to ``sizes.sse_clients`` clients from
one Redis read, ``GET /api/agents?role=`` against ``discover`` among ``sizes.agents`` agents,
HTTP request-reply against ``Bus.request``, and the task history's cost on direct sends."""

from __future__ import annotations

from typing import Any

from bench import fleet
from bench.cli import Context
from bench.coord import CoordinatorProcess
from bench.gateway import (
    GatewayProcess,
    http_vs_python_discover,
    http_vs_python_request,
    sse_fanout,
    task_history_cost,
)
from bench.stats import Row, Scalar, Throughput
from schemas.keys import KeySpace

__all__ = ["gateway_group"]


async def gateway_group(ctx: Context) -> None:
    s, url, loop = ctx.sizes, ctx.url, ctx.loop
    ns = "gw"
    with CoordinatorProcess(url, ns), GatewayProcess(url, ns) as gateway:
        for gap, label in ((0.1, ""), (0.02, ".burst")):
            fan = await sse_fanout(url, ns, gateway, s.sse_clients, s.sse_events, gap, loop)
            _sse_rows(ctx, fan, s.sse_clients, s.sse_events, gap, label)
        reg = await fleet.bulk_register(url, KeySpace(ns), s.agents)
        http, py, found = await http_vs_python_discover(url, ns, gateway, s)
        ctx.add(
            Row(
                key="gateway.agents_by_role",
                title=f"GET /api/agents?role=R&limit=1000 among {reg['registered']} agents",
                value=http,
                baseline_name="Bus.discover(role=R), same run",
                baseline=py,
                target="p50 ≤ 2× discover",
                met=http.n > 0 and http.p50 <= 2 * py.p50,
                note=f"{found} agents an answer (with health); in turn; raw keep-alive client",
            )
        )
        http_rr, py_rr = await http_vs_python_request(url, ns, gateway, s, loop)
        ctx.add(
            Row(
                key="gateway.request_reply",
                title="POST /api/agents/{name}/requests (HTTP request-reply)",
                value=http_rr,
                baseline_name="Bus.request, same run",
                baseline=py_rr,
                target="p50 ≤ 2× Bus.request",
                met=http_rr.n > 0 and http_rr.p50 <= 2 * py_rr.p50,
                note="echo agent in another process; in turn; a raw keep-alive HTTP/1.1 client",
            )
        )
        cost = await task_history_cost(url, ns, s, loop)
        with_, without = cost["with"], cost["without"]
        ctx.add(
            Row(
                key="gateway.task_history_cost",
                title="direct send throughput, agent recording its task history",
                value=Throughput(cost["n"], cost["n"] / with_ if with_ else 0.0),
                baseline_name="AGENTBUS_TASK_HISTORY=0",
                baseline=Throughput(cost["n"], cost["n"] / without if without else 0.0),
                note=f"best of 2 runs each, in turn; stream lengths after: {cost['lengths']} "
                "(MAXLEN ~ 1000)",
            )
        )


def _sse_rows(
    ctx: Context, fan: dict[str, Any], clients: int, events: int, gap: float, label: str
) -> None:
    ctx.details[f"sse_fanout{label}"] = {k: v for k, v in fan.items() if k != "latency"}
    lat = fan["latency"]
    rate = 1 / gap
    target = not label  # the target is stated for the steady rate; the burst is a stress figure
    ctx.add(
        Row(
            key=f"gateway.sse_delivery{label}",
            title=f"SSE: change-feed write → {clients} clients, {rate:.0f} events/s",
            value=lat,
            target="p99 ≤ 100 ms" if target else "",
            met=(lat.n > 0 and lat.p99 <= 100_000 and fan["delivered"] == fan["expected"])
            if target
            else None,
            note=f"{events} events {gap * 1000:.0f} ms apart; {fan['delivered']}/"
            f"{fan['expected']} deliveries; Redis connections blocked in XREAD: "
            f"{fan['blocked_xread_connections']}; XREAD calls in the window: {fan['xread_calls']}; "
            f"the clients' process: {fan['clients_cpu_pct']:.0f} % of a core",
        )
    )
    per_second = fan["delivered"] / max(fan["window_s"], 1e-9)
    ctx.add(
        Row(
            key=f"gateway.sse_cpu{label}",
            title=f"SSE: gateway CPU, {clients} clients, {rate:.0f} events/s",
            value=Scalar(fan["cpu_pct"], "% of a core"),
            target="≤ 50 %" if target else "",
            met=fan["cpu_pct"] <= 50 if target else None,
            note=f"over {fan['window_s']:.1f} s: {per_second:.0f} deliveries/s",
        )
    )
    if target:
        ctx.add(
            Row(
                key="gateway.sse_rss",
                title=f"SSE: gateway RSS with {clients} clients",
                value=Scalar(fan["rss_mb"], "MB"),
                target="≤ 300 MB",
                met=fan["rss_mb"] <= 300,
            )
        )

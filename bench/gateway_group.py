"""The gateway group (issue 13's targets): SSE fan-out to ``sizes.sse_clients`` clients from
one Redis read, ``GET /api/agents?role=`` against ``discover`` among ``sizes.agents`` agents,
HTTP request-reply against ``Bus.request``, and the task history's cost on direct sends."""

from __future__ import annotations

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
        fan = await sse_fanout(url, ns, gateway, s.sse_clients, s.sse_events, loop)
        ctx.details["sse_fanout"] = {k: v for k, v in fan.items() if k != "latency"}
        lat = fan["latency"]
        ctx.add(
            Row(
                key="gateway.sse_delivery",
                title=f"SSE: change-feed write → {s.sse_clients} clients, one gateway",
                value=lat,
                target="p99 ≤ 100 ms",
                met=lat.n > 0 and lat.p99 <= 100_000 and fan["delivered"] == fan["expected"],
                note=f"{s.sse_events} events 20 ms apart; {fan['delivered']}/{fan['expected']} "
                f"deliveries; Redis connections blocked in XREAD: "
                f"{fan['blocked_xread_connections']}; XREAD calls in the window: "
                f"{fan['xread_calls']}",
            )
        )
        rate = fan["delivered"] / max(fan["window_s"], 1e-9)
        ctx.add(
            Row(
                key="gateway.sse_cpu",
                title=f"SSE: gateway CPU while fanning out to {s.sse_clients} clients",
                value=Scalar(fan["cpu_pct"], "% of a core"),
                target="≤ 50 %",
                met=fan["cpu_pct"] <= 50,
                note=f"over {fan['window_s']:.1f} s: {rate:.0f} deliveries/s",
            )
        )
        ctx.add(
            Row(
                key="gateway.sse_rss",
                title=f"SSE: gateway RSS with {s.sse_clients} clients",
                value=Scalar(fan["rss_mb"], "MB"),
                target="≤ 300 MB",
                met=fan["rss_mb"] <= 300,
            )
        )
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

"""``GET /metrics``: the fleet for Prometheus, computed from Redis at each scrape.

Every series comes from what the registry and the agents' usage hashes hold at scrape time,
so any gateway behind a load balancer gives the same answer (the ``agentbus_gateway_*`` series
are the answering gateway's own). Handler counters are per agent instance: they restart from 0
when an agent restarts, which Prometheus's ``rate()`` handles as a counter reset.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

from fastapi import APIRouter, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from agent_sdk.usage import BUCKETS_MS
from gateway.auth import Viewer, gateway_of
from gateway.fleet import FleetStats, fleet_stats
from gateway.health import health
from gateway.state import Gateway
from schemas.agent import AgentStatus

__all__ = ["render_metrics", "router"]

router = APIRouter(tags=["metrics"])


class _Snapshot(Collector):
    """One scrape's worth of series, from a ``FleetStats`` taken just before."""

    def __init__(self, stats: FleetStats, gateway: Gateway) -> None:
        self.stats = stats
        self.gateway = gateway

    def collect(self) -> Iterator[Metric]:
        s = self.stats
        agents = GaugeMetricFamily(
            "agentbus_agents", "Live agents by role and status.", labels=["role", "status"]
        )
        counts = Counter((a.role, a.status.value) for a in s.agents)
        for role in sorted({a.role for a in s.agents}):
            for status in AgentStatus:
                agents.add_metric([role, status.value], counts.get((role, status.value), 0))
        yield agents
        load = GaugeMetricFamily(
            "agentbus_agent_load", "Work in progress per agent.", labels=["agent", "role"]
        )
        capacity = GaugeMetricFamily(
            "agentbus_agent_capacity", "max_concurrency per agent.", labels=["agent", "role"]
        )
        score = GaugeMetricFamily(
            "agentbus_agent_health_score", "Health score 0-100 (docs/GATEWAY.md).",
            labels=["agent", "role"],
        )  # fmt: skip
        for a in s.agents:
            load.add_metric([a.name, a.role], a.load)
            capacity.add_metric([a.name, a.role], a.max_concurrency)
            score.add_metric([a.name, a.role], health(a, s.usage.get(a.name, [])).score)
        yield load
        yield capacity
        yield score
        yield from self._handlers()
        c = s.control
        yield GaugeMetricFamily(
            "agentbus_deadletters", "Entries in the dead-letter stream.", value=c.deadletters
        )
        yield GaugeMetricFamily(
            "agentbus_control_stream_length", "Entries in the control stream.", value=c.length
        )
        if c.lag is not None:
            yield GaugeMetricFamily(
                "agentbus_control_stream_lag",
                "Control entries the coordinators have not read yet.",
                value=c.lag,
            )
        yield GaugeMetricFamily(
            "agentbus_control_stream_pending",
            "Control entries read but not yet acknowledged by a coordinator.",
            value=c.pending,
        )
        yield GaugeMetricFamily(
            "agentbus_coordinators_alive", "Coordinators whose health key is present.",
            value=len(c.coordinators),
        )  # fmt: skip
        g = self.gateway
        clients = GaugeMetricFamily(
            "agentbus_gateway_stream_clients", "Clients following a stream on this gateway.",
            labels=["stream"],
        )  # fmt: skip
        clients.add_metric(["registry"], len(g.registry.subscribers))
        clients.add_metric(["sessions"], sum(len(h.subscribers) for h in g.sessions.values()))
        yield clients
        cutoffs = (
            g.registry.cutoffs + g.session_cutoffs + sum(h.cutoffs for h in g.sessions.values())
        )
        yield CounterMetricFamily(
            "agentbus_gateway_stream_cutoffs", "Stream clients cut off for being too slow.",
            value=cutoffs,
        )  # fmt: skip

    def _handlers(self) -> Iterator[Metric]:
        labels = ["agent", "type"]
        calls = CounterMetricFamily(
            "agentbus_handler_invocations", "Handled messages by agent and type.", labels=labels
        )
        errors = CounterMetricFamily(
            "agentbus_handler_errors", "Failed handlings by agent and type.", labels=labels
        )
        latency = HistogramMetricFamily(
            "agentbus_handler_latency_seconds", "Handler time by agent and type.", labels=labels
        )
        for name, rows in sorted(self.stats.usage.items()):
            for u in rows:
                calls.add_metric([name, u.type], u.invocations)
                errors.add_metric([name, u.type], u.errors)
                cumulative, buckets = 0, []
                for bound, count in zip((*BUCKETS_MS, None), u.buckets, strict=True):
                    cumulative += count
                    le = "+Inf" if bound is None else repr(bound / 1000)
                    buckets.append((le, float(cumulative)))
                latency.add_metric([name, u.type], buckets, u.latency_ms_sum / 1000)
        yield calls
        yield errors
        yield latency


async def render_metrics(gateway: Gateway) -> bytes:
    """The Prometheus text exposition of the fleet now."""
    agents = await gateway.bus.discover()
    stats = await fleet_stats(gateway.bus.client, gateway.lanes, gateway.settings, agents)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Snapshot(stats, gateway))
    return generate_latest(registry)


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
async def metrics(request: Request, who: Viewer) -> Response:
    return Response(await render_metrics(gateway_of(request)), media_type=CONTENT_TYPE_LATEST)

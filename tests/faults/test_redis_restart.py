"""Scenarios 1 and 2: Redis SIGKILLed and restarted on the same port, with and without its data."""

from __future__ import annotations

import asyncio
import time

import pytest

from agent_sdk import Bus
from schemas.errors import AgentbusError
from tests.faults.harness import Cluster, Traffic, report, run_traffic
from tests.support import wait_for

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

NAMES_A = ["a0", "a1", "a2"]
NAMES_B = ["b0", "b1"]


@pytest.mark.parametrize("down", [1.0, 8.0], ids=["1s", "8s"])
async def test_redis_sigkill_with_aof_loses_nothing_acknowledged(
    cluster: Cluster, down: float
) -> None:
    """1 s: within the client's retry budget (calls block, then succeed); 8 s: beyond it (calls
    fail with ConnectionFailed and every background loop must reconnect on its own)."""
    coordinator = cluster.coordinator("c1")
    fa = cluster.fleet(NAMES_A, concurrency=4, topic="news.*")
    fb = cluster.fleet(NAMES_B, concurrency=4)
    names = NAMES_A + NAMES_B
    await cluster.wait_ready(fa)
    await cluster.wait_ready(fb)
    traffic, stop = Traffic(), asyncio.Event()
    async with Bus(cluster.settings) as bus:
        sender = asyncio.create_task(run_traffic(bus, traffic, stop, names, topic="news.x"))
        await wait_for(lambda: len(traffic.acked) >= 150, timeout=60, message="traffic flows")
        before = len(traffic.acked)
        outage = await asyncio.to_thread(cluster.restart_redis, down)  # SIGKILL, then down
        restarted = time.monotonic()

        # every process reconnects: the sender's calls succeed again ...
        await wait_for(
            lambda: len(traffic.acked) >= before + 150, timeout=90, message="traffic resumed"
        )
        resumed_after = time.monotonic() - restarted
        # ... the registry is whole (AOF kept it; liveness never expired anyone) ...
        await wait_for(lambda: cluster.registered() == set(names), timeout=30)
        # ... and topic subscriptions are back: a topic message sent now is received
        seen_topics = len(cluster.ledger().of("topic"))
        await wait_for(
            lambda: _more_topics(cluster, seen_topics, bus), timeout=60, message="topics resumed"
        )
        stop.set()
        await sender

    durable = set(traffic.acked)
    await wait_for(
        lambda: durable <= set(cluster.ledger().done_ids()),
        timeout=90,
        message="every acknowledged message handled",
    )
    ledger = cluster.ledger()
    done = ledger.done_ids()
    lost = durable - set(done)
    live_expired = [e.name for e in cluster.expired()]
    report(
        f"redis_restart_aof_{down:g}s",
        outage_s=round(outage, 2),
        sent_acked=len(durable),
        refused_during_outage=dict(traffic.refused),
        requests_answered=traffic.answered,
        handled=len(set(done) & durable),
        duplicated=sum(done[m] - 1 for m in durable if done[m] > 1),
        lost=len(lost),
        traffic_resumed_s=round(resumed_after, 2),
        expired_live_agents=live_expired,
    )
    assert not lost
    assert live_expired == []  # no live agent expired by the outage
    assert coordinator.alive, cluster.diagnostics()
    assert cluster.sync.exists(cluster.keys.coordinator_health("c1"))  # still reporting health
    assert fa.alive, cluster.diagnostics()
    assert fb.alive, cluster.diagnostics()


async def _more_topics(cluster: Cluster, seen: int, bus: Bus) -> bool:
    try:
        await bus.publish("news.after", {"probe": True})
    except AgentbusError:
        return False
    return len(cluster.ledger().of("topic")) > seen


async def test_redis_restart_empty_fleet_reannounces(volatile_cluster: Cluster) -> None:
    cluster = volatile_cluster
    coordinator = cluster.coordinator("c1")
    fa = cluster.fleet(NAMES_A, concurrency=4, topic="news.*")
    fb = cluster.fleet(NAMES_B, concurrency=4)
    names = NAMES_A + NAMES_B
    ready = {**await cluster.wait_ready(fa), **await cluster.wait_ready(fb)}
    traffic, stop = Traffic(), asyncio.Event()
    async with Bus(cluster.settings) as bus:
        sender = asyncio.create_task(run_traffic(bus, traffic, stop, names))
        await wait_for(lambda: len(traffic.acked) >= 150, timeout=60, message="traffic flows")
        outage = await asyncio.to_thread(cluster.restart_redis, 0.5)  # comes back EMPTY
        restarted = time.monotonic()
        after_restart = len(traffic.acked)
        assert cluster.registered() <= set(names)
        # the registry is rebuilt from the live agents (heartbeat of an unknown instance ->
        # reannounce), with the same instances: nobody restarted
        await wait_for(lambda: cluster.registered() == set(names), timeout=60, message="rebuilt")
        rebuilt_after = time.monotonic() - restarted
        holders = {n: cluster.sync.hget(cluster.keys.record(n), "instance_id") for n in names}
        assert holders == ready
        await wait_for(
            lambda: len(traffic.acked) >= after_restart + 150, timeout=60, message="traffic"
        )
        # no process stuck: every agent answers a request
        for n in names:
            assert await bus.request(n, "ask", {"probe": True}, timeout=30) == n
        stop.set()
        await sender
    # every message acknowledged after the restart is handled (groups recreated on NOGROUP)
    later = set(list(traffic.acked)[after_restart:])
    await wait_for(
        lambda: later <= set(cluster.ledger().done_ids()), timeout=60, message="all handled"
    )
    done = cluster.ledger().done_ids()
    report(
        "redis_restart_empty",
        outage_s=round(outage, 2),
        registry_rebuilt_s=round(rebuilt_after, 2),
        sent_acked_after_restart=len(later),
        lost_after_restart=len(later - set(done)),
        lost_before_restart_unpersisted=len(set(list(traffic.acked)[:after_restart]) - set(done)),
        duplicated=sum(n - 1 for n in done.values() if n > 1),
        refused=dict(traffic.refused),
    )
    assert coordinator.alive, cluster.diagnostics()
    assert cluster.sync.exists(cluster.keys.coordinator_health("c1"))  # still reporting health
    assert fa.alive, cluster.diagnostics()
    assert fb.alive, cluster.diagnostics()

"""Scenario 5: coordinators SIGKILLed repeatedly; the only coordinator down for 10 s."""

from __future__ import annotations

import asyncio
import time

import pytest

from agent_sdk import Bus
from tests.faults.harness import Cluster, Traffic, report, run_traffic
from tests.support import wait_for

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

LIVE = ["a0", "a1", "a2", "a3"]
ROUNDS = 6


@pytest.mark.parametrize("cluster", ["off", "acl"], indirect=True)  # acl: each its own user
async def test_coordinator_crashes_expire_only_the_dead(cluster: Cluster) -> None:
    coords = [cluster.coordinator("c1"), cluster.coordinator("c2")]
    live = cluster.fleet(LIVE, concurrency=4)
    doomed = [cluster.fleet([f"d{i}"], label=f"doomed{i}") for i in range(2)]
    await cluster.wait_ready(live)
    for d in doomed:
        await cluster.wait_ready(d)
    traffic, stop = Traffic(), asyncio.Event()
    detections: list[float] = []
    async with Bus(cluster.settings) as bus:
        sender = asyncio.create_task(run_traffic(bus, traffic, stop, LIVE))
        # -- part 1: two coordinators, either SIGKILLed and restarted, over and over ---------
        for i in range(ROUNDS):
            victim = coords[i % 2]
            victim.kill()
            if i in (1, 4):  # an agent dies while a coordinator is down too
                d = doomed[0 if i == 1 else 1]
                d.kill()
                killed_at = time.monotonic()
                name = d.names[0]
                await wait_for(
                    lambda n=name: n in {e.name for e in cluster.expired()},
                    timeout=30,
                    message=f"{name} expired",
                )
                detections.append(time.monotonic() - killed_at)
            else:
                await asyncio.sleep(0.7)  # the coordinator stays down: the fault
            victim.start()
        # -- part 2: every coordinator down for 10 s ------------------------------------------
        extra = cluster.fleet(["e0"], label="extra")
        await cluster.wait_ready(extra)
        for c in coords:
            c.kill()
        acked_before = len(traffic.acked)
        extra.kill()  # a registered agent dies while nobody watches
        late = cluster.fleet(["late0"], label="late")  # a new one waits to join
        await asyncio.sleep(10)  # the outage
        assert "late0" not in cluster.registered()  # nobody could register it
        sent_during_outage = len(traffic.acked) - acked_before
        coords[0].start()
        health = cluster.keys.coordinator_health(coords[0].id)
        await wait_for(lambda: cluster.sync.exists(health), timeout=30, message="c1 is back")
        back = time.monotonic()
        await wait_for(lambda: cluster.registered() == {*LIVE, "late0"}, timeout=30)
        right_after = time.monotonic() - back
        assert late.alive
        stop.set()
        await sender
    durable = set(traffic.acked)
    await wait_for(
        lambda: durable <= set(cluster.ledger().done_ids()), timeout=60, message="all handled"
    )
    events = cluster.expired()
    expired = [e.name for e in events]
    # how long after its last heartbeat each dead agent was expired (the Redis clock)
    lag = {e.name: (e.at - e.last_seen).total_seconds() for e in events if e.last_seen}
    report(
        "coordinator_crash",
        coordinator_kills=ROUNDS + 2,
        dead_agent_detection_s=[round(x, 2) for x in detections],
        sent_acked=len(durable),
        sent_while_no_coordinator=sent_during_outage,
        lost=len(durable - set(cluster.ledger().done_ids())),
        registry_right_after_ready_s=round(right_after, 2),
        expired=expired,
        expired_after_last_heartbeat_s={k: round(v, 2) for k, v in lag.items()},
    )
    assert sent_during_outage > 0  # messaging went on without any coordinator
    assert sorted(expired) == ["d0", "d1", "e0"]  # no live agent was ever expired
    assert live.alive, cluster.diagnostics()

"""Scenario 7: 100 agents in 4 processes, 20,000 mixed messages (the size the issue asks for).

Rounds of the same run, repeated to watch memory over time, are ``bench/soak.py``
(docs/RELIABILITY.md).
"""

from __future__ import annotations

import time

import pytest

from agent_sdk import Bus
from tests.faults.harness import Cluster, report
from tests.faults.load import mixed_load
from tests.support import wait_for

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

PROCESSES = 4
PER_PROCESS = 25
MESSAGES = 20_000


@pytest.fixture(params=["off", "acl"])
def load_cluster(request: pytest.FixtureRequest) -> Cluster:
    # 100 agents on 2 shared cores: a calmer heartbeat than the other scenarios; acl: the fleet,
    # the coordinator and the test's sender each as their own Redis user
    c = Cluster(heartbeat_interval=0.5, ttl=3.0, request_timeout=30.0, security=request.param)
    yield c  # type: ignore[misc]
    c.close()


async def test_100_agents_mixed_load_nothing_lost_nothing_twice(load_cluster: Cluster) -> None:
    cluster = load_cluster
    cluster.coordinator("c1")
    roles = {f"r{p}": [f"p{p}-{i}" for i in range(PER_PROCESS)] for p in range(PROCESSES)}
    fleets = [
        cluster.fleet(members, role=role, concurrency=4, topic="news.*" if p == 0 else "")
        for p, (role, members) in enumerate(roles.items())
    ]
    for f in fleets:
        await cluster.wait_ready(f, timeout=120)
    assert len(cluster.registered()) == PROCESSES * PER_PROCESS
    if cluster.settings.secure:  # every process but the test's admin client has its own user
        users = {c["user"] for c in cluster.sync.client_list()} - {"default"}
        assert users == {
            cluster.settings.redis_username,
            cluster.coordinator_settings.redis_username,
        }, users
    t0 = time.monotonic()
    async with Bus(cluster.settings) as bus:
        result = await mixed_load(bus, MESSAGES, roles)
    sent_s = time.monotonic() - t0

    def durable_done() -> bool:
        done = cluster.ledger().done_ids()
        copies = sum(1 for ln in cluster.ledger().of("done") if ln[4] == "bcast")
        return result.durable_ids <= set(done) and copies >= result.durable_broadcast_copies

    await wait_for(durable_done, timeout=120, interval=0.2, message="all durable handled")
    drained_s = time.monotonic() - t0
    ledger = cluster.ledger()
    done = ledger.done_ids()
    topics_received = len(ledger.of("topic"))
    live_received = len(ledger.of("live"))
    copies = sum(1 for ln in ledger.of("done") if ln[4] == "bcast")
    report(
        "load",
        agents=PROCESSES * PER_PROCESS,
        processes=PROCESSES,
        messages=MESSAGES,
        **result.figures(),
        durable_lost=len(result.durable_ids - set(done)),
        durable_broadcast_copies_handled=copies,
        duplicated=ledger.duplicates(),
        topic_deliveries_received=topics_received,
        live_broadcast_deliveries_received=live_received,
        send_s=round(sent_s, 2),
        all_durable_handled_s=round(drained_s, 2),
        msgs_per_s=round(MESSAGES / sent_s),
        expired=[e.name for e in cluster.expired()],
    )
    assert not result.durable_ids - set(done)  # zero lost among durable kinds
    assert result.answered + sum(result.failed.values()) == result.requests  # every request
    assert copies == result.durable_broadcast_copies
    assert ledger.duplicates() == 0  # nothing crashed, so no handler ran twice
    assert cluster.expired() == []
    assert all(f.alive for f in fleets), cluster.diagnostics()

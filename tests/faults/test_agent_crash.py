"""Scenario 4: role members SIGKILLed (repeatedly) while they hold role-queue work."""

from __future__ import annotations

import time

import pytest

from agent_sdk import Bus
from tests.faults.harness import Cluster, FleetProc, report
from tests.support import wait_for

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

JOBS = 300
KILLS = 4
CONCURRENCY = 3


def holding(fleet: FleetProc) -> set[str]:
    """Message ids the fleet's agent started and has not finished."""
    ledger = fleet.ledger()
    return {ln[1] for ln in ledger.of("start")} - {ln[1] for ln in ledger.of("done")}


@pytest.mark.parametrize("cluster", ["off", "acl"], indirect=True)  # acl: each its own user
async def test_sigkilled_members_work_redelivered_duplicates_bounded(cluster: Cluster) -> None:
    cluster.coordinator("c1")
    workers = [cluster.fleet([f"w{i}"], concurrency=CONCURRENCY, hold=0.05) for i in range(3)]
    for w in workers:
        await cluster.wait_ready(w)
    killed: list[str] = []
    next_name = len(workers)
    async with Bus(cluster.settings) as bus:
        ids: list[str] = []
        t0 = time.monotonic()
        for k in range(KILLS):
            # a batch before each kill, so there is always work to hold
            ids += [
                await bus.send(role="pool", type="job", payload={"i": i})
                for i in range(JOBS // KILLS)
            ]
            victim = workers[k % len(workers)]
            await wait_for(lambda v=victim: holding(v), timeout=60, message="victim holds work")
            victim.kill()
            killed.append(victim.names[0])
            # a replacement joins under a new name (the old one is held until it expires)
            workers[k % len(workers)] = cluster.fleet(
                [f"w{next_name}"], concurrency=CONCURRENCY, hold=0.05
            )
            next_name += 1
            await cluster.wait_ready(workers[k % len(workers)])
        await wait_for(
            lambda: set(ids) <= set(cluster.ledger().done_ids()),
            timeout=120,
            message="every job handled",
        )
        all_done_s = time.monotonic() - t0
    ledger = cluster.ledger()
    done_by = ledger.done_by()
    duplicated = ledger.duplicates()
    redelivered = {ln[1] for ln in ledger.of("start") if int(ln[3]) > 1}
    # every duplicate run has a crash behind it: all but the last run were by killed agents
    unexplained = {m: by for m, by in done_by.items() if any(a not in killed for a in by[:-1])}

    def all_expired() -> bool:
        return {e.name for e in cluster.expired()} >= set(killed)

    await wait_for(all_expired, timeout=30, message="killed members expired")
    live_expired = {e.name for e in cluster.expired()} - set(killed)
    report(
        "agent_crash",
        jobs=JOBS,
        kills=KILLS,
        handled=len(set(ids) & set(done_by)),
        lost=len(set(ids) - set(done_by)),
        redelivered=len(redelivered),
        duplicated=duplicated,
        duplicate_bound=KILLS * CONCURRENCY,
        all_done_s=round(all_done_s, 2),
        live_expired=sorted(live_expired),
    )
    assert set(ids) <= set(done_by)
    assert not unexplained, unexplained
    assert duplicated <= KILLS * CONCURRENCY
    assert redelivered  # the killed members' work was taken over
    assert not live_expired

"""Scenario 9: SIGTERM to an agent during work."""

from __future__ import annotations

import signal
import time

import pytest

from agent_sdk import Bus
from schemas.events import RegistryEventType
from tests.faults.harness import Cluster, FleetProc, report
from tests.support import wait_for

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

JOBS = 60
CONCURRENCY = 3


def deregistered(cluster: Cluster, name: str) -> bool:
    return any(
        e.name == name and e.type == RegistryEventType.AGENT_DEREGISTERED for e in cluster.events()
    )


def after_term(fleet: FleetProc, word: str) -> list[list[str]]:
    lines = fleet.ledger().lines
    at = next(i for i, ln in enumerate(lines) if ln[0] == "term")
    return [ln[1:] for ln in lines[at:] if ln[0] == word]


@pytest.mark.parametrize("victim_hold", [0.5, 60.0], ids=["finishes", "returns"])
async def test_sigterm_drains_deregisters_and_loses_nothing(
    cluster: Cluster, victim_hold: float
) -> None:
    """0.5 s jobs finish within the grace period (5 s); 60 s jobs are returned to the queue."""
    cluster.coordinator("c1")
    victim = cluster.fleet(["w0"], concurrency=CONCURRENCY, label="victim")
    other = cluster.fleet(["w1"], concurrency=CONCURRENCY, label="other")
    await cluster.wait_ready(victim)
    await cluster.wait_ready(other)
    hold = {"w0": victim_hold, "w1": 0.05}
    async with Bus(cluster.settings) as bus:
        ids = [
            await bus.send(role="pool", type="job", payload={"i": i, "hold": hold})
            for i in range(JOBS)
        ]
        await wait_for(lambda: len(victim.ledger().of("start")) >= CONCURRENCY, timeout=30)
        victim.signal(signal.SIGTERM)
        t0 = time.monotonic()
        code = await victim.wait(timeout=cluster.settings.shutdown_grace + 30)
        exited_s = time.monotonic() - t0
        await wait_for(lambda: deregistered(cluster, "w0"), timeout=10, message="w0 left")
        await wait_for(
            lambda: set(ids) <= set(cluster.ledger().done_ids()), timeout=60, message="all done"
        )
    ledger = victim.ledger()
    started = {ln[1] for ln in ledger.of("start")}
    finished = {ln[1] for ln in ledger.of("done")}
    returned = started - finished
    dup = cluster.ledger().duplicates()
    report(
        f"graceful_shutdown_{'finishes' if victim_hold < 1 else 'returns'}",
        jobs=JOBS,
        exit_code=code,
        sigterm_to_exit_s=round(exited_s, 2),
        in_flight_finished=len(finished),
        in_flight_returned=len(returned),
        lost=len(set(ids) - set(cluster.ledger().done_ids())),
        duplicated=dup,
        expired=[e.name for e in cluster.expired()],
    )
    assert code == 0, victim.stderr()
    assert ledger.of("stopped")  # agent.stop() returned: the leave was acknowledged
    assert not after_term(victim, "start")[CONCURRENCY:]  # took no new work after SIGTERM
    assert cluster.expired() == []  # it left; it was not expired
    if victim_hold < 1:
        assert not returned
        assert dup == 0
    else:
        assert returned
        assert len(returned) <= CONCURRENCY


async def test_sigterm_while_redis_is_down_still_exits(cluster: Cluster) -> None:
    """No process stuck: the leave cannot reach Redis, the agent says so and exits 0, within
    the bound of its stop (each step that needs Redis waits at most ``announce_timeout``)."""
    bound = 3.0
    cluster.coordinator("c1")
    fleet = cluster.fleet(["a0", "a1"], env={"AGENTBUS_ANNOUNCE_TIMEOUT": str(bound)})
    await cluster.wait_ready(fleet)
    cluster.redis.kill()
    try:
        fleet.signal(signal.SIGTERM)
        t0 = time.monotonic()
        code = await fleet.wait(timeout=120)
        exited_s = time.monotonic() - t0
    finally:
        cluster.redis.start()
    report("sigterm_redis_down", exit_code=code, sigterm_to_exit_s=round(exited_s, 2))
    assert code == 0, fleet.stderr()
    assert "could not leave the registry cleanly" in fleet.stderr()
    assert {ln[0] for ln in fleet.ledger().of("stopped")} == {"a0", "a1"}
    # draining report, two components (handlers drained for the grace, then bounded), the leave
    grace = cluster.settings.shutdown_grace
    limit = bound + 2 * (grace + bound) + bound + 1.0
    assert exited_s < limit + 10.0, f"stopped after {exited_s:.1f}s, bound {limit:.1f}s"

"""Scenario 6: an agent whose event loop blocks past its TTL; Redis blocked by DEBUG SLEEP."""

from __future__ import annotations

import asyncio
import signal
import time

import pytest

from agent_sdk import Bus
from tests.faults.harness import TTL, Cluster, report
from tests.support import deadline_of_sync, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]


async def test_stalled_agent_is_expired_then_reannounces(cluster: Cluster) -> None:
    cluster.coordinator("c1")
    stalled = cluster.fleet(["s0"], label="stalled")
    bystanders = cluster.fleet(["b0", "b1"])
    instance = (await cluster.wait_ready(stalled))["s0"]
    await cluster.wait_ready(bystanders)
    async with Bus(cluster.settings) as bus:
        await bus.send("s0", "stall", {"seconds": 1.5 * TTL})  # blocks s0's loop for 1.5 TTLs
        await wait_for(
            lambda: any(e.name == "s0" for e in cluster.expired()), timeout=30, message="expiry"
        )
        assert "s0" not in cluster.registered()
        # it wakes up, notices, and announces again (same instance): not a ghost
        await wait_for(lambda: stalled.ledger().of("done"), timeout=30, message="s0 woke")
        woke = time.monotonic()
        await wait_for(lambda: "s0" in cluster.registered(), timeout=30, message="reannounced")
        back_after = time.monotonic() - woke
        assert cluster.sync.hget(cluster.keys.record("s0"), "instance_id") == instance
        assert await bus.request("s0", "ask", {}, timeout=30) == "s0"
    # the stall message ran once: waking up, s0 must not re-claim (and re-run) its own entry
    stall_runs = [ln for ln in stalled.ledger().of("start") if ln[4] == "stall"]
    assert len(stall_runs) == 1, stall_runs
    expired = [e.name for e in cluster.expired()]
    report("agent_stall", stall_s=1.5 * TTL, reregistered_after_wake_s=round(back_after, 2),
           expired=expired)  # fmt: skip
    assert expired == ["s0"]  # the bystanders were never expired


async def test_redis_debug_sleep_does_not_expire_the_fleet(cluster: Cluster) -> None:
    cluster.coordinator("c1")
    names = [f"a{i}" for i in range(8)]
    fleets = [cluster.fleet(names[:4]), cluster.fleet(names[4:])]
    for f in fleets:
        await cluster.wait_ready(f)
    sleep_s = 1.5 * TTL
    await asyncio.to_thread(cluster.sync.execute_command, "DEBUG", "SLEEP", str(sleep_s))
    redis_now_ms = int(cluster.sync.time()[0]) * 1000  # the stall is over

    def everyone_heartbeated_since() -> bool:
        deadlines = [deadline_of_sync(cluster.sync, cluster.keys, n) for n in names]
        return all(d is not None and d - cluster.settings.ttl_ms > redis_now_ms for d in deadlines)

    t0 = time.monotonic()
    await wait_for(everyone_heartbeated_since, timeout=30, message="fleet heartbeats again")
    recovered = time.monotonic() - t0
    async with Bus(cluster.settings) as bus:
        for n in names:
            assert await bus.request(n, "ask", {}, timeout=30) == n
    expired = [e.name for e in cluster.expired()]
    report("redis_debug_sleep", sleep_s=sleep_s, agents=len(names), expired=expired,
           all_heartbeating_after_s=round(recovered, 2))  # fmt: skip
    assert expired == []
    assert cluster.registered() == set(names)


async def test_frozen_member_sigstop_work_taken_over_then_it_rejoins(cluster: Cluster) -> None:
    """A whole process paused (SIGSTOP: a VM or GC pause) while it holds role-queue work."""
    cluster.coordinator("c1")
    frozen = cluster.fleet(["w0"], concurrency=3, label="frozen")
    other = cluster.fleet(["w1"], concurrency=3, label="other")
    instance = (await cluster.wait_ready(frozen))["w0"]
    await cluster.wait_ready(other)
    hold = {"w0": 0.5, "w1": 0.05}
    async with Bus(cluster.settings) as bus:
        ids = [
            await bus.send(role="pool", type="job", payload={"i": i, "hold": hold})
            for i in range(30)
        ]
        await wait_for(lambda: frozen.ledger().of("start"), timeout=30, message="w0 busy")
        frozen.signal(signal.SIGSTOP)
        await asyncio.sleep(2 * TTL)  # the pause itself
        frozen.signal(signal.SIGCONT)
        await wait_for(
            lambda: set(ids) <= set(cluster.ledger().done_ids()), timeout=60, message="all done"
        )
        await wait_for(lambda: "w0" in cluster.registered(), timeout=30, message="w0 rejoined")
        assert cluster.sync.hget(cluster.keys.record("w0"), "instance_id") == instance
        assert await bus.request("w0", "ask", {}, timeout=30) == "w0"
    ledger = cluster.ledger()
    done_by = ledger.done_by()
    dups = {m: by for m, by in done_by.items() if len(by) > 1}
    report(
        "member_sigstop",
        jobs=len(ids),
        paused_s=2 * TTL,
        lost=len(set(ids) - set(done_by)),
        duplicated=ledger.duplicates(),
        expired=[e.name for e in cluster.expired()],
    )
    # every duplicate has the pause behind it: one of its runs was the frozen member's
    assert all("w0" in by for by in dups.values()), dups
    assert ledger.duplicates() <= 3  # at most what w0 held when it was frozen
    assert [e.name for e in cluster.expired()] == ["w0"]

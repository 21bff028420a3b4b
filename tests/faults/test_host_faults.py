"""Scenario 12: faults of a ``Host`` (many agents in one process, run by ``agentbus run``).

a. the host SIGKILLed while it holds role-queue work; b. Redis restarted under a host of 1,000
agents; c. every connection of the host cut (``CLIENT KILL``) during traffic; d. SIGTERM during
load. The hosts are real processes (``tests.faults.host_target``) whose ledgers live outside
Redis; the test compares what the bus acknowledged with what the agents handled.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import random
import signal
import time

import pytest

from agent_sdk import Bus
from schemas.errors import AgentbusError
from schemas.events import ExpiryReason, RegistryEvent, RegistryEventType
from tests.faults.harness import Cluster, Traffic, report, run_traffic
from tests.faults.host_harness import (
    HostProc,
    host_connections,
    kill_connections,
    registry_leftovers,
    unfinished,
)
from tests.support import wait_for

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

EXPIRED = RegistryEventType.AGENT_EXPIRED
LEFT = RegistryEventType.AGENT_DEREGISTERED


async def wait_running(cluster: Cluster, hosts: list[HostProc], timeout: float = 60) -> None:
    """Until each host says it runs (``Host.start`` returned) and the registry holds them all."""
    names = {n for h in hosts for n in h.names}

    def running() -> bool:
        for h in hosts:
            assert h.alive, f"{h.label} died:\n{cluster.diagnostics()}"
        return all(h.running for h in hosts) and names <= cluster.registered()

    await wait_for(running, timeout=timeout, interval=0.05, message="the hosts running")


def events_of(cluster: Cluster, names: set[str], kind: RegistryEventType) -> list[RegistryEvent]:
    return [e for e in cluster.events() if e.type == kind and e.name in names]


# -- a. SIGKILL -------------------------------------------------------------------------------
@pytest.mark.parametrize("cluster", ["off", "acl"], indirect=True)  # acl: each its own user
async def test_sigkilled_host_expires_every_agent_and_its_role_work_is_redone(
    cluster: Cluster,
) -> None:
    """A host of 50 (10 of them role ``worker``) SIGKILLed while it holds role-queue jobs: all
    50 expire (``heartbeat_missed``), no index keeps any, and the jobs it held are redelivered
    to, and done by, the workers of another host."""
    cluster.coordinator("c1")
    victim = HostProc(cluster, "ha", 50, workers=10, concurrency=2)
    other = HostProc(cluster, "hb", 5, workers=5, concurrency=4)
    await wait_running(cluster, [victim, other])
    hold = {"ha": 60.0, "hb": 0.05}  # the victim never finishes what it takes
    async with Bus(cluster.settings) as bus:
        ids = [
            await bus.send(role="worker", type="job", payload={"i": i, "hold": hold})
            for i in range(40)
        ]

        def settled() -> set[str]:
            """Every job is done or held by the victim, and the victim holds some."""
            held = victim.holding()
            done = set(cluster.ledger().done_ids())
            return held if held and set(ids) <= held | done else set()

        held = await wait_for(settled, timeout=30, message="the victim holds role work")
        victim.kill()  # SIGKILL: no leave, no ack
        killed_ms = time.time() * 1000
        # work sent after the kill is done too, and a request to the role is answered
        ids += [
            await bus.send(role="worker", type="job", payload={"i": i, "hold": hold})
            for i in range(40, 60)
        ]
        assert await bus.request(role="worker", type="ask", payload={}, timeout=30) in other.names

        gone = set(victim.names)
        await wait_for(
            lambda: {e.name for e in events_of(cluster, gone, EXPIRED)} == gone,
            timeout=30,
            message="every agent of the killed host expired",
        )
        await wait_for(
            lambda: set(ids) <= set(cluster.ledger().done_ids()),
            timeout=30,
            message="every acknowledged job done",
        )
    expired = events_of(cluster, gone, EXPIRED)
    last_expiry_ms = max(int(str(e.revision).partition("-")[0]) for e in expired)
    ledger = cluster.ledger()
    done_by = ledger.done_by()
    redone = [ln for ln in ledger.of("done") if ln[1] in held]
    report(
        "host_sigkill",
        agents=len(gone),
        jobs=len(ids),
        held_by_victim=len(held),
        last_expired_after_kill_s=round((last_expiry_ms - killed_ms) / 1000, 2),
        ttl_s=cluster.settings.ttl,
        lost=len(set(ids) - set(done_by)),
        duplicated=ledger.duplicates(),
    )
    assert {e.reason for e in expired} == {ExpiryReason.HEARTBEAT_MISSED}
    assert len(expired) == len(gone)  # each once
    assert registry_leftovers(cluster, gone) == {}
    assert {e.name for e in cluster.expired()} == gone  # no agent of the live host expired
    # what the victim held was redelivered (delivery count > 1) to the other host's workers
    assert {ln[1] for ln in redone} == held
    assert all(ln[0] in other.workers and int(ln[3]) > 1 for ln in redone), redone
    assert ledger.duplicates() == 0  # the victim finished none of what it held
    assert other.alive, cluster.diagnostics()


# -- b. Redis restart -------------------------------------------------------------------------
@pytest.mark.parametrize("persistent", [True, False], ids=["aof", "empty"])
async def test_redis_restart_under_a_host_of_1000_agents(
    request: pytest.FixtureRequest, persistent: bool
) -> None:
    """Redis SIGKILLed and restarted on the same port (with its AOF, or empty): the host's
    1,000 agents are all registered again by the same instances, requests to them are
    answered, nobody was refused its name, and the host did not crash."""
    cluster: Cluster = request.getfixturevalue("cluster" if persistent else "volatile_cluster")
    cluster.coordinator("c1")
    host = HostProc(cluster, "hk", 1000, concurrency=1)
    await wait_running(cluster, [host], timeout=90)
    instances = host.instances()
    outage = await asyncio.to_thread(cluster.restart_redis, 0.5)
    restarted = time.monotonic()

    def whole() -> bool:
        assert host.alive, cluster.diagnostics()
        return cluster.registered() == set(host.names)

    await wait_for(whole, timeout=90, interval=0.05, message="the host's agents registered again")
    registered_s = time.monotonic() - restarted
    pipe = cluster.sync.pipeline(transaction=False)
    for name in host.names:
        pipe.hget(cluster.keys.record(name), "instance_id")
    holders = dict(zip(host.names, pipe.execute(), strict=True))
    sample = host.names[::50]  # 20 agents across the host
    async with Bus(cluster.settings) as bus:
        replies = await asyncio.gather(
            *(bus.request(n, "ask", {"probe": True}, timeout=30) for n in sample)
        )
    answered_s = time.monotonic() - restarted
    stderr = host.stderr_all()
    report(
        f"host_redis_restart_{'aof' if persistent else 'empty'}",
        agents=len(host.names),
        outage_s=round(outage, 2),
        registered_again_s=round(registered_s, 2),
        requests_answered_s=round(answered_s, 2),
        expired=len(cluster.expired()),
    )
    assert replies == sample
    assert holders == instances  # the same instances: nobody restarted or was replaced
    for sign in ("name_taken", "NameTaken", "lost its name", "Traceback"):
        assert sign not in stderr, stderr[-3000:]
    assert cluster.expired() == []  # the outage expired nobody
    assert host.alive, cluster.diagnostics()


# -- c. CLIENT KILL -------------------------------------------------------------------------
CUTS = 10
EVERY = 0.3  # seconds between cuts
#: Commands a connection waiting for messages is parked in (blocking reads, pub/sub doorbells).
READS = {"xreadgroup", "xread", "blpop", "brpop", "blmpop", "blmove", "subscribe", "psubscribe",
         "ssubscribe"}  # fmt: skip


async def test_client_kill_of_every_host_connection_loses_nothing(cluster: Cluster) -> None:
    """Every Redis connection of the host process (found by its sockets, so its readers
    whatever they are) is killed 10 times, 300 ms apart, while direct sends, role sends and
    requests flow: everything acknowledged before, during and after is handled."""
    coordinator = cluster.coordinator("c1")
    host = HostProc(cluster, "hc", 20, workers=5, concurrency=4)
    await wait_running(cluster, [host])
    traffic, stop = Traffic(), asyncio.Event()
    killed: list[int] = []
    commands: collections.Counter[str] = collections.Counter()
    progress: list[int] = []
    async with Bus(cluster.settings) as bus:
        sender = asyncio.create_task(run_traffic(bus, traffic, stop, host.names, role="worker"))
        await wait_for(lambda: len(traffic.acked) >= 100, timeout=30, message="traffic flows")
        for _ in range(CUTS):
            conns = await asyncio.to_thread(host_connections, cluster.sync, host.pid)
            commands.update(c["cmd"] for c in conns)
            killed.append(await asyncio.to_thread(kill_connections, cluster.sync, conns))
            progress.append(len(traffic.acked))
            await asyncio.sleep(EVERY)  # the fault's period
        after_cuts = len(traffic.acked)
        await wait_for(
            lambda: len(traffic.acked) >= after_cuts + 100, timeout=30, message="traffic after"
        )
        for name in host.names:  # every agent answers after the cuts
            assert await bus.request(name, "ask", {"probe": True}, timeout=30) == name
        stop.set()
        await sender
    durable = set(traffic.acked)
    await wait_for(
        lambda: durable <= set(cluster.ledger().done_ids()), timeout=30, message="all handled"
    )
    done = cluster.ledger().done_ids()
    duplicated = sum(done[m] - 1 for m in durable if done[m] > 1)
    moved = sum(1 for a, b in itertools.pairwise(progress) if b > a)
    report(
        "host_client_kill",
        cuts=CUTS,
        connections_killed=sum(killed),
        killed_per_cut=killed,
        commands_of_killed=dict(commands),
        sent_acked=len(durable),
        requests_answered=traffic.answered,
        failed_with_reason=dict(traffic.refused),
        duplicated=duplicated,
        lost=len(durable - set(done)),
        intervals_with_progress=f"{moved}/{len(progress) - 1}",
    )
    assert all(k >= 1 for k in killed), killed  # every cut found the host's connections
    assert READS & set(commands), commands  # and among them the ones it reads with
    assert not durable - set(done)
    assert duplicated <= CUTS  # a send retried after its reply was cut (scenario 3)
    assert cluster.expired() == []
    assert coordinator.alive, cluster.diagnostics()
    assert host.alive, cluster.diagnostics()


# -- d. SIGTERM during load -----------------------------------------------------------------
async def steady_load(
    bus: Bus, traffic: Traffic, stop: asyncio.Event, host: HostProc, seed: int
) -> None:
    """Direct sends, role sends and requests (one in four) until ``stop``; a call that raised
    is counted by exception type (its fate is unknown to the sender, so it is not checked)."""
    rng = random.Random(seed)
    i = 0
    while not stop.is_set():
        i += 1
        name = rng.choice(host.names)
        try:
            if i % 4 == 0:
                assert await bus.request(name, "ask", {}, timeout=3) == name
                traffic.answered += 1
            elif i % 2:
                traffic.ok("send", await bus.send(name, "job", {"i": i}))
            else:
                traffic.ok("role", await bus.send(role="worker", type="job", payload={"i": i}))
        except AgentbusError as e:
            traffic.failed(e)
        await asyncio.sleep(0.002)  # pacing the load, not synchronising


@pytest.mark.parametrize("cluster", ["off", "acl"], indirect=True)  # acl: each its own user
async def test_sigterm_during_load_every_agent_leaves_and_nothing_is_lost(
    cluster: Cluster,
) -> None:
    """SIGTERM to a host of 20 agents under load (0.2 s handlers): exit 0, no traceback, every
    agent left (never expired), in-flight handlers finished, every acknowledged message handled
    or still waiting in Redis; a new host with the same names starts at once and handles it."""
    cluster.coordinator("c1")
    host = HostProc(cluster, "ht", 20, workers=5, concurrency=2, hold=0.2)
    await wait_running(cluster, [host])
    names = set(host.names)
    traffic, stop = Traffic(), asyncio.Event()
    async with Bus(cluster.settings) as bus:
        senders = [
            asyncio.create_task(steady_load(bus, traffic, stop, host, seed)) for seed in range(4)
        ]
        await wait_for(
            lambda: len(traffic.acked) >= 80 and len(host.holding()) >= 3,
            timeout=30,
            message="load flowing, handlers in flight",
        )
        host.signal(signal.SIGTERM)
        t0 = time.monotonic()
        code = await host.wait(timeout=cluster.settings.shutdown_grace + 20)
        exited_s = time.monotonic() - t0
        stop.set()
        await asyncio.gather(*senders)
    stderr = host.stderr_all()
    acked = set(traffic.acked)
    done = set(host.ledger().done_ids())
    waiting = await asyncio.to_thread(unfinished, cluster.sync, cluster.settings.namespace)
    left = events_of(cluster, names, LEFT)
    report(
        "host_sigterm_load",
        exit_code=code,
        sigterm_to_exit_s=round(exited_s, 2),
        sent_acked=len(acked),
        requests_answered=traffic.answered,
        refused=dict(traffic.refused),
        handled=len(acked & done),
        waiting_in_redis=len(acked & waiting - done),
        lost=len(acked - done - waiting),
    )
    assert code == 0, stderr[-3000:]
    assert "Traceback" not in stderr, stderr[-3000:]
    assert {e.name for e in left} == names  # every agent left ...
    assert events_of(cluster, names, EXPIRED) == []  # ... none expired
    assert registry_leftovers(cluster, names) == {}
    assert host.holding() == set()  # in-flight handlers finished within the grace
    assert not acked - done - waiting  # nothing acknowledged lost

    # a restart right away is not refused, and it handles what was left waiting
    again = HostProc(cluster, "ht", 20, workers=5, concurrency=2)
    await wait_running(cluster, [again], timeout=30)
    await wait_for(
        lambda: acked <= set(cluster.ledger().done_ids()),
        timeout=30,
        message="what waited handled after the restart",
    )

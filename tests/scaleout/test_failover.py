"""A master SIGKILLed under load, on a Redis Cluster (the master holding the registry and some
inboxes) and under Sentinel: with ``replica_acks=1`` every message whose send returned is
handled, requests are answered again once a replica took over, and no agent expires.

Each test starts its own topology (about 2 s): the kill changes it for good."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from agent_sdk import Agent, Bus, Settings
from agent_sdk.connection import make_client
from agent_sdk.messaging import Message
from coordinator import Coordinator
from schemas.errors import AgentbusError
from tests.scaleout.conftest import coordinator_settings_for
from tests.support import wait_for
from tests.topologies import LocalCluster, LocalSentinel

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(params=["cluster", "sentinel"])
def fresh(request: pytest.FixtureRequest) -> Iterator[LocalCluster | LocalSentinel]:
    deployment = LocalCluster() if request.param == "cluster" else LocalSentinel()
    deployment.start()
    try:
        yield deployment
    finally:
        deployment.stop()


def _names(topo: LocalCluster | LocalSentinel, ns: str) -> list[str]:
    """Four agent names; on a cluster two whose inboxes share the registry's master, two not."""
    if isinstance(topo, LocalSentinel):
        return [f"svc-{i}" for i in range(4)]
    victim = topo.master_of(f"{ns}:{{registry}}:agents").port
    same: list[str] = []
    other: list[str] = []
    for i in range(200):
        name = f"svc-{i}"
        port = topo.master_of(f"{ns}:agent:{{{name}}}:inbox").port
        (same if port == victim else other).append(name)
    return same[:2] + other[:2]


async def test_master_killed_under_load(fresh: LocalCluster | LocalSentinel) -> None:
    ns = f"t{uuid.uuid4().hex[:10]}"
    settings = Settings(
        redis_url=fresh.url, namespace=ns, heartbeat_interval=0.5, ttl=3.0,
        announce_timeout=15, request_timeout=10, claim_interval=0.2, shutdown_grace=2,
        replica_acks=1, retry_attempts=12, retry_max_backoff=0.5,
    )  # fmt: skip
    names = _names(fresh, ns)
    handled: set[int] = set()
    agents = [Agent(n, "svc", settings=settings) for n in names]
    for a in agents:

        @a.on("note")
        async def note(payload: Any, msg: Message) -> None:
            handled.add(payload["seq"])

        @a.on("echo")
        async def echo(payload: Any, msg: Message) -> Any:
            return payload

    acked: set[int] = set()
    failures: list[str] = []
    answered_at: list[float] = []
    stop = asyncio.Event()

    async def load(bus: Bus) -> None:
        seq = 0
        while not stop.is_set():
            seq += 1
            name = names[seq % len(names)]
            try:
                if seq % 10 == 0:
                    assert await bus.request(name, "echo", seq, timeout=10) == seq
                    answered_at.append(time.monotonic())
                await bus.send(name, "note", {"seq": seq})
                acked.add(seq)
            except AgentbusError as e:  # not acknowledged: may be lost, must not be counted
                failures.append(f"{type(e).__name__}: {e}")
            await asyncio.sleep(0.005)

    r = make_client(settings, decode_responses=True)
    async with Coordinator(coordinator_settings_for(settings)):
        await asyncio.gather(*(a.start() for a in agents))
        try:
            async with Bus(settings) as bus:
                task = asyncio.create_task(load(bus))
                await wait_for(lambda: len(acked) >= 200, timeout=30, message="load running")
                if isinstance(fresh, LocalCluster):
                    victim = fresh.master_of(f"{ns}:{{registry}}:agents")
                    took = await asyncio.to_thread(fresh.kill_and_wait_failover, victim)
                else:
                    took = await asyncio.to_thread(fresh.kill_and_wait_failover)
                failed_over = time.monotonic()
                await wait_for(
                    lambda: [t for t in answered_at if t > failed_over + 0.5],
                    timeout=30,
                    message="requests answered after the failover",
                )
                await wait_for(
                    lambda: len(acked) >= 800,
                    timeout=60,
                    message=f"more load (failures: {failures[-3:]})",
                )
                stop.set()
                await task
                await wait_for(
                    lambda: acked <= handled,
                    timeout=30,
                    message=f"every acknowledged message handled ({len(acked - handled)} left)",
                )
                found = {a.name for a in await bus.discover(role="svc")}
                assert found == set(names)
                events: Any = await r.xrange(settings.keys.events())
                expired = [f["name"] for _, f in events if f["type"] == "agent_expired"]
                assert expired == []
                print(f"failover took {took:.2f}s; {len(acked)} acked, {len(failures)} failed")
        finally:
            stop.set()
            await asyncio.gather(*(a.stop() for a in agents), return_exceptions=True)
            with contextlib.suppress(Exception):
                await r.aclose()


async def test_command_in_flight_when_the_master_dies_is_retried_on_the_new_master() -> None:
    """A blocking read in flight when the master is SIGKILLed is retried on the promoted
    replica: redis-py alone retries it on the dead master's address until its retries run out
    (it asks the sentinels only for a connection taken from the pool), which left a
    coordinator's control reader seconds behind its sweeper after a failover."""
    deployment = LocalSentinel()
    deployment.start()
    try:
        settings = Settings(  # a retry budget (≈ 20 s) well past a failover on a busy machine
            redis_url=deployment.url, namespace=f"t{uuid.uuid4().hex[:10]}",
            retry_attempts=40, retry_max_backoff=0.5,
        )  # fmt: skip
        reader: Any = make_client(settings)
        writer = make_client(settings)
        try:
            stream = f"{settings.namespace}:in-flight"
            await reader.ping()
            read = asyncio.create_task(reader.xread({stream: "$"}, block=0))
            await wait_for(
                lambda: _blocked(deployment), timeout=10, message="the read blocking on the master"
            )
            await asyncio.to_thread(deployment.kill_and_wait_failover)
            # retried on the dead master's address, it never blocks on the new one (and raises
            # ConnectionError once its retries are spent)
            await wait_for(
                lambda: read.done() or _blocked(deployment),
                timeout=30,
                message="the read retried on the new master",
            )
            if read.done():  # its retries ran out before it reached the new master
                raise AssertionError(f"the read failed instead: {read.exception()!r}")
            entry_id = await writer.xadd(stream, {"n": "1"})
            got = await asyncio.wait_for(read, 10)
            assert got[0][1][0][0] == entry_id
        finally:
            await reader.aclose()
            await writer.aclose()
    finally:
        deployment.stop()


def _blocked(deployment: LocalSentinel) -> bool:
    """Whether a client of the master is blocked in a command."""
    info = redis.Redis(port=deployment.master().port, decode_responses=True)
    try:
        return int(info.info("clients")["blocked_clients"]) > 0
    finally:
        info.close()

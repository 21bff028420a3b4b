"""Regressions of four bugs a chaos run found (heartbeat 1 s / TTL 3 s there), made deterministic.

1. A zombie keeps serving a name it lost: frozen (SIGSTOP) past its TTL, replaced by a new
   instance, resumed: it was refused ``name_taken`` on every re-announce but kept consuming the
   name's inbox. Fixed: after SIGCONT only the replacement handles the name's messages; the
   zombie stops itself (``agent.name_lost``, code ``name_lost``).
2. A live holder was expired as ``replaced`` after a Redis outage: the announce path judged the
   holder's deadline on the Redis clock of the moment, ignoring the stall grace the sweeper
   applies. Fixed: the announce path uses the sweeper's fair cutoff; the other instance is
   refused ``name_taken``.
3. A SIGKILLed agent stayed listed long past its TTL while one of three coordinators was frozen:
   the sweep cutoff waits for the frozen peer's pending control entries, which peers claim only
   once its health key has expired plus ``claim_idle``. Fixed: faster hand-over (shorter health
   key TTL and claim idle); the record is gone within TTL + 1 s of the kill.
4. A cleanly departed agent came back: a frozen coordinator held its announce, a peer claimed and
   applied it, the agent left, the frozen coordinator resumed and applied the announce again.
   Fixed: a left instance is tombstoned; its late announce is refused ``stale``.

Each test sets up the bug's exact interleaving by hand (no timing race): a fault is a real
SIGSTOP, SIGKILL or ``DEBUG SLEEP``; a coordinator that holds an entry is played by a consumer of
the group that read it (``XREADGROUP``) and applies it later (``ControlConsumer.process``).
"""

from __future__ import annotations

import asyncio
import signal
import time
import uuid
from typing import Any

import orjson
import pytest
import redis
import redis.asyncio as aioredis

from agent_sdk import Agent, Bus
from agent_sdk.connection import make_client
from agent_sdk.settings import Settings
from coordinator import Coordinator, CoordinatorSettings
from coordinator.control import ControlConsumer, Entry
from coordinator.registry import Registry
from coordinator.stats import CoordinatorStats
from schemas.envelope import decode_fields
from schemas.events import RegistryEvent, RegistryEventType
from schemas.keys import COORDINATOR_GROUP, KeySpace
from tests.faults.harness import TTL, Cluster, report
from tests.support import deadline_of_sync, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

EXPIRED = RegistryEventType.AGENT_EXPIRED
REGISTERED = RegistryEventType.AGENT_REGISTERED
DEREGISTERED = RegistryEventType.AGENT_DEREGISTERED


def control_fields(type: str, sender: str, payload: Any, **extra: str) -> dict[str, str]:
    """A control envelope as stream fields, written by hand (docs/PROTOCOL.md)."""
    return {
        "v": "1",
        "kind": "control",
        "type": type,
        "sender": sender,
        "payload": orjson.dumps(payload).decode(),
        **extra,
    }


def redis_ms(client: redis.Redis) -> int:
    seconds, micros = client.time()
    return int(seconds) * 1000 + int(micros) // 1000


# -- 1 ----------------------------------------------------------------------------------------
async def test_zombie_stops_serving_a_name_it_lost(cluster: Cluster) -> None:
    cluster.coordinator("c1")
    zombie = cluster.fleet(["z0"], label="zombie")
    old = (await cluster.wait_ready(zombie))["z0"]
    zombie.signal(signal.SIGSTOP)  # frozen past its TTL: expired
    await wait_for(
        lambda: old in {e.instance_id for e in cluster.expired()},
        timeout=30,
        interval=0.05,
        message="the frozen z0 expired",
    )
    replacement = cluster.fleet(["z0"], label="replacement")
    new = (await cluster.wait_ready(replacement))["z0"]
    assert new != old
    async with Bus(cluster.settings) as bus:
        probes = [await bus.send("z0", "job", {"probe": i}) for i in range(3)]  # still frozen
        zombie.signal(signal.SIGCONT)
        t_cont = time.monotonic()
        for i in range(3, 23):
            probes.append(await bus.send("z0", "job", {"probe": i}))
            await asyncio.sleep(0.1)  # pacing: the probes span 8 heartbeats of the zombie
        await wait_for(
            lambda: set(probes) <= set(cluster.ledger().done_ids()),
            timeout=30,
            interval=0.05,
            message="every probe handled",
        )
    seen_by_zombie = {ln[1] for ln in zombie.ledger().of("start") + zombie.ledger().of("done")}
    by_zombie = sorted(seen_by_zombie & set(probes))
    report(
        "chaos_zombie",
        probes=len(probes),
        handled_by_zombie=len(by_zombie),
        since_sigcont_s=round(time.monotonic() - t_cont, 2),
    )
    assert not by_zombie, (
        f"the zombie {old} handled {len(by_zombie)} of {len(probes)} probes sent to z0 after "
        f"{new} registered the name: {by_zombie}"
    )
    # it stopped itself: agent.name_lost is set (code name_lost) and its Agent stopped
    lost = await wait_for(
        lambda: zombie.ledger().of("lost"), timeout=15, interval=0.05, message="zombie stopped"
    )
    assert lost == [["z0", old, "name_lost"]]
    # the replacement was never expired nor replaced, and still holds the name
    ended = [
        e for e in cluster.events() if e.instance_id == new and e.type in (EXPIRED, DEREGISTERED)
    ]
    assert [(e.type, e.reason) for e in ended] == []
    assert cluster.sync.hget(cluster.keys.record("z0"), "instance_id") == new
    assert replacement.alive


# -- 2 ----------------------------------------------------------------------------------------
async def test_redis_outage_does_not_hand_a_live_name_to_another_instance(
    cluster: Cluster,
) -> None:
    cluster.coordinator("c1")
    holder = cluster.fleet(["h0"], label="holder")
    inst = (await cluster.wait_ready(holder))["h0"]
    keys, s = cluster.keys, cluster.settings
    other = f"other-{uuid.uuid4().hex[:12]}"  # another instance announcing the same name
    reply_to = keys.replies("h0", other)
    card = {"name": "h0", "role": "pool"}
    payload = {"card": card, "instance_id": other, "heartbeat_ms": s.heartbeat_ms,
               "ttl_ms": s.ttl_ms}  # fmt: skip
    announce = control_fields("announce", "h0", payload, id=uuid.uuid4().hex, reply_to=reply_to)
    outage = 1.75 * TTL

    def outage_then_announce() -> None:
        # One write on one connection: Redis runs the XADD the moment DEBUG SLEEP returns,
        # before any other client's command, so this announce is the first control entry after
        # the outage (the holder's next heartbeat comes after it in the stream).
        with redis.Redis(port=cluster.redis.port) as conn:
            pipe = conn.pipeline(transaction=False)
            pipe.execute_command("DEBUG", "SLEEP", str(outage))  # the outage itself
            pipe.xadd(keys.control(), announce)
            pipe.execute()

    await asyncio.to_thread(outage_then_announce)
    woke_ms = redis_ms(cluster.sync)
    popped: Any = await asyncio.to_thread(cluster.sync.blpop, [reply_to], 30)
    assert popped is not None, "the announce was never answered"
    answer = orjson.loads(popped[1])
    expiries = [(e.instance_id, e.reason) for e in cluster.expired() if e.name == "h0"]
    report("chaos_outage_announce", outage_s=outage, holder_expired=expiries,
           answer=answer.get("error", {}).get("code", "accepted"))  # fmt: skip
    assert expiries == [], (
        f"the live holder {inst} of h0 was expired after a {outage:g}s Redis outage "
        f"(instance, reason): {expiries}; the announce of {other} was answered {answer}"
    )
    assert answer.get("error", {}).get("code") == "name_taken", answer

    # the holder heartbeats again after the outage, and still holds its name
    def beat_since_outage() -> bool:
        score = deadline_of_sync(cluster.sync, keys, "h0")
        return score is not None and score - s.ttl_ms > woke_ms

    await wait_for(beat_since_outage, timeout=15, interval=0.02, message="h0 beats after outage")
    assert cluster.sync.hget(keys.record("h0"), "instance_id") == inst
    assert [e for e in cluster.expired() if e.name == "h0"] == []


# -- 3 ----------------------------------------------------------------------------------------
async def test_killed_agent_expires_in_time_while_a_coordinator_is_frozen(
    cluster: Cluster,
) -> None:
    # The product's own hand-over settings (health key TTL, claim idle), not the harness's
    # faster ones: the hand-over delay after a coordinator froze is what is under test.
    product_defaults: dict[str, str | None] = {
        "AGENTBUS_CLAIM_IDLE": None,
        "AGENTBUS_HEALTH_INTERVAL": None,
    }
    coords = [cluster.coordinator(f"c{i}", env=product_defaults) for i in (1, 2, 3)]
    frozen = coords[1]
    bystanders = cluster.fleet(["b0", "b1"], label="bystanders")
    victim = cluster.fleet(["k0"], label="victim")
    ready = await cluster.wait_ready(bystanders)
    await cluster.wait_ready(victim)
    keys, sync = cluster.keys, cluster.sync
    control = keys.control()
    await wait_for(
        lambda: all(sync.exists(keys.coordinator_health(c.id)) for c in coords),
        timeout=30,
        message="three coordinators up",
    )

    def deadline() -> float:
        score = deadline_of_sync(sync, keys, "k0")
        assert score is not None
        return score

    # SIGKILL k0 right after one of its heartbeats was applied: its deadline is then kill + TTL
    before = deadline()
    await wait_for(lambda: deadline() != before, timeout=10, interval=0.005, message="a beat")
    victim.kill()
    killed = time.monotonic()
    # freeze a coordinator just before k0's deadline (the worst moment: the cutoff stops there)
    await wait_for(
        lambda: redis_ms(sync) >= deadline() - 300, timeout=10, interval=0.01, message="freeze"
    )
    frozen.signal(signal.SIGSTOP)
    frozen_at = time.monotonic()

    def held() -> list[Any]:
        rows: Any = sync.xpending_range(
            control, COORDINATOR_GROUP, min="-", max="+", count=100, consumername=frozen.id
        )
        return list(rows)

    naturally = bool(held())
    if not naturally:
        # It was frozen between batches: make it hold one, as if frozen just after its read.
        # In MULTI no blocked reader (a peer) is served before our XREADGROUP takes the entry.
        beat = {"instance_id": ready["b0"], "load": 0, "status": "ready"}
        pipe = sync.pipeline(transaction=True)
        pipe.xadd(control, control_fields("heartbeat", "b0", beat))  # type: ignore[arg-type]
        pipe.xreadgroup(COORDINATOR_GROUP, frozen.id, {control: ">"}, count=1)
        pipe.execute()
    assert held(), "the frozen coordinator holds no control entry"
    await wait_for(
        lambda: not sync.exists(keys.record("k0")),
        timeout=4 * TTL,
        interval=0.02,
        message="k0 expired",
    )
    listed_for = time.monotonic() - killed
    remaining = 2 * TTL - (time.monotonic() - frozen_at)
    if remaining > 0:
        await asyncio.sleep(remaining)  # the freeze itself lasts 2 x TTL
    frozen.signal(signal.SIGCONT)
    expired = cluster.expired()
    report("chaos_frozen_coordinator", ttl_s=TTL, killed_listed_for_s=round(listed_for, 2),
           held_naturally=naturally, expired=[e.name for e in expired])  # fmt: skip
    assert listed_for <= TTL + 1.0, (
        f"k0 stayed listed {listed_for:.2f}s after its SIGKILL (TTL {TTL:g}s) while coordinator "
        f"{frozen.id} was frozen holding control entries; allowed: TTL + 1.0s"
    )
    assert [(e.name, e.reason) for e in expired] == [("k0", "heartbeat_missed")]
    assert all(c.alive for c in coords), cluster.diagnostics()


# -- 4 ----------------------------------------------------------------------------------------
async def test_departed_agent_does_not_come_back_from_a_late_announce(
    settings: Settings,
    coordinator_settings: CoordinatorSettings,
    r: aioredis.Redis,
    keys: KeySpace,
) -> None:
    control = keys.control()
    await r.xgroup_create(control, COORDINATOR_GROUP, id="0", mkstream=True)
    # long announce deadline: the late copy must still be valid when it is applied again
    agent = Agent("d0", "worker", settings=settings.model_copy(update={"announce_timeout": 30.0}))
    starting = asyncio.create_task(agent.start())
    raw = make_client(settings)  # bytes, as coordinators read
    # a coordinator that then froze (its health key is gone) reads the announce and holds it
    frozen_id = f"frozen-{uuid.uuid4().hex[:8]}"
    try:

        async def take() -> list[Entry]:
            got: Any = await raw.xreadgroup(COORDINATOR_GROUP, frozen_id, {control: ">"})
            return list(got[0][1]) if got else []

        held = await wait_for(take, timeout=10, interval=0.01, message="the announce")
        assert len(held) == 1, held
        eid, fields = held[0]
        assert fields is not None
        announce = decode_fields(fields, eid.decode())
        assert announce.type == "announce"
        async with Coordinator(coordinator_settings) as coordinator:
            # a live coordinator claims it from the frozen one (after claim_idle) and applies it
            await asyncio.wait_for(starting, 20)
            assert coordinator.stats.claimed == 1
            assert await r.hget(keys.record("d0"), "instance_id") == agent.instance_id
            await agent.stop()  # a clean leave: gone from the registry
            assert not await r.exists(keys.record("d0"))
            # the frozen coordinator resumes and applies the announce it held
            assert not announce.expired()  # still valid: not dropped as too old
            late_settings = coordinator_settings.model_copy(update={"coordinator_id": frozen_id})
            late = ControlConsumer(raw, Registry(raw, late_settings), late_settings,
                                   CoordinatorStats())  # fmt: skip
            await late.process(held)
            pipe = r.pipeline(transaction=True)
            pipe.exists(keys.record("d0"))
            pipe.sismember(keys.agents(), "d0")
            pipe.sismember(keys.role_index("worker"), "d0")
            pipe.xrange(keys.events())
            record, in_agents, in_role, feed = await pipe.execute()
    finally:
        if not starting.done():
            starting.cancel()
            await asyncio.gather(starting, return_exceptions=True)
        await agent.stop()
        await raw.aclose()
    events = [RegistryEvent.from_fields(eid, f) for eid, f in feed]
    mine = [e.type.value for e in events if e.instance_id == agent.instance_id]
    state = {
        "record": bool(record),
        "in agents": bool(in_agents),
        "in role": bool(in_role),
        "registered events": mine.count(REGISTERED.value),
        "last event": mine[-1],
    }
    assert state == {
        "record": False,
        "in agents": False,
        "in role": False,
        "registered events": 1,
        "last event": DEREGISTERED.value,
    }, f"d0 came back after it left, from an announce applied late: {state}; feed: {mine}"

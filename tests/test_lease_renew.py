"""Lease renewals (protocol 1.2): a host's ``lease`` entry renews the names its lease holds by
name, without a per-agent script step or record write.

An agent announced with ``lease`` = ``<host>:<instance>`` joins that lease's set
(``R:lease:<lease>``); a ``renew`` pair of a name in the set moves its deadline to the entry's
time + ``ttl_ms`` (never back); any other pair is answered as a heartbeat of an unknown
instance is, on the host's reply list. Leaving or expiring takes the name out of the set.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis

from agent_sdk import Bus, Host, Settings
from agent_sdk.connection import make_client
from coordinator import Coordinator, CoordinatorSettings
from coordinator.registry import ControlBatch, Registry
from coordinator.validation import PreparedAnnounce, fast_lease, prepare_announce
from schemas.agent import Lease
from schemas.keys import KeySpace
from tests.fake_agents import FakeAgent, xadd_control
from tests.support import wait_for

LEASE = "host-r:h1"


def _renewal(
    host: str, renew: list[list[str]], lease: str = LEASE, ttl_ms: int = 600, **extra: Any
) -> dict[str, str]:
    payload = {"host": host, "beats": [], "lease": lease, "ttl_ms": ttl_ms, "renew": renew}
    return {
        "v": "1", "kind": "control", "type": "lease", "sender": host,
        "payload": orjson.dumps(payload).decode(), **extra,
    }  # fmt: skip


def _raw(fields: dict[str, str]) -> dict[bytes, bytes]:
    return {k.encode(): v.encode() for k, v in fields.items()}


def test_fast_lease_parses_a_renewal() -> None:
    lease = fast_lease("7-0", _raw(_renewal("host-r", [["a", "i1"], ["b", "i2"]])))
    assert lease is not None
    assert (lease.lease, lease.ttl_ms, lease.renew) == (LEASE, 600, [("a", "i1"), ("b", "i2")])
    assert lease.beats == []


@pytest.mark.parametrize(
    ("host", "renew", "lease", "ttl"),
    [
        ("other", [["a", "i1"]], LEASE, 600),  # the lease of another host
        ("host-r", [["a b", "i1"]], LEASE, 600),  # not a name
        ("host-r", [["a"]], LEASE, 600),  # one item
        ("host-r", [["a", "i1"]], "host-r", 600),  # no instance in the lease id
        ("host-r", [["a", "i1"]], LEASE, 10),  # TTL under the least the schema takes
    ],
)
def test_fast_lease_leaves_odd_renewals_to_the_full_check(
    host: str, renew: list[list[str]], lease: str, ttl: int
) -> None:
    assert fast_lease("7-0", _raw(_renewal(host, renew, lease, ttl))) is None


def test_the_schema_refuses_a_renewal_without_its_lease_or_of_another_host() -> None:
    with pytest.raises(ValueError, match="renew needs the lease id"):
        Lease(host="h", renew=[("a", "i1")])
    with pytest.raises(ValueError, match="not a lease of host"):
        Lease(host="h", lease="other:1", ttl_ms=600, renew=[("a", "i1")])


async def _registered(agents: list[FakeAgent]) -> None:
    for agent in agents:
        reply = await agent.register()
        assert "error" not in reply, reply


async def test_renewals_keep_the_leases_names_alive_without_writing_their_records(
    coordinator: Coordinator, r: aioredis.Redis, keys: KeySpace, settings: Settings
) -> None:
    agents = [FakeAgent(r, keys, f"leased-{i}", ttl_ms=600, lease=LEASE) for i in range(3)]
    await _registered(agents)
    assert await r.smembers(keys.lease_members(LEASE)) == {a.name for a in agents}
    seen = await r.hget(keys.record(agents[0].name), "last_seen")
    # the names live by the lease's deadline: none has one of its own
    first = await r.zscore(keys.leases(), LEASE)
    assert first is not None
    assert [await r.zscore(keys.deadlines(), a.name) for a in agents] == [None] * 3
    renew = [[a.name, a.instance_id] for a in agents]
    host_reply = keys.replies("host-r", "h1")
    # renewal-only entries for more than two TTLs
    for _ in range(14):
        await xadd_control(r, keys, _renewal("host-r", renew, reply_to=host_reply))
        await _paced()
    for agent in agents:
        assert await r.exists(keys.record(agent.name)), f"{agent.name} expired under its lease"
    last = await r.zscore(keys.leases(), LEASE)
    assert last is not None
    assert last > first + 600
    assert [await r.zscore(keys.deadlines(), a.name) for a in agents] == [None] * 3
    # no record was written: its last_seen is the announcement's; readers derive the renewal
    assert await r.hget(keys.record(agents[0].name), "last_seen") == seen
    async with Bus(settings) as bus:
        record = await bus.get(agents[0].name)
        found = {x.name: x for x in await bus.discover(role="worker")}
    assert record is not None
    renewed_at = (last - 600) / 1000
    assert abs(record.last_seen.timestamp() - renewed_at) < 0.002
    assert found[agents[0].name].last_seen == record.last_seen
    assert await r.llen(host_reply) == 0  # nothing to tell the host
    # the host stops renewing (killed): every name expires and leaves the lease's set
    for agent in agents:
        await wait_for(lambda a=agent: _gone(r, keys, a.name), timeout=5, message="expired")
    assert not await r.exists(keys.lease_members(LEASE))
    assert await r.zscore(keys.leases(), LEASE) is None  # the lapsed lease is gone too
    events: Any = await r.xrange(keys.events())
    expired = [f for _, f in events if f["type"] == "agent_expired"]
    assert sorted(f["name"] for f in expired) == sorted(a.name for a in agents)
    assert {f["reason"] for f in expired} == {"heartbeat_missed"}


async def _paced() -> None:
    await asyncio.sleep(0.1)  # the host's interval: the pacing under test


async def _gone(r: aioredis.Redis, keys: KeySpace, name: str) -> bool:
    return not await r.exists(keys.record(name))


async def test_a_name_the_lease_does_not_hold_is_told_to_announce_again(
    coordinator: Coordinator, r: aioredis.Redis, keys: KeySpace
) -> None:
    unleased = FakeAgent(r, keys, "unleased")  # announced under no lease
    elsewhere = FakeAgent(r, keys, "elsewhere", lease="host-z:z1")
    taken = FakeAgent(r, keys, "taken", lease="host-z:z1")
    await _registered([unleased, elsewhere, taken])
    before = await r.zscore(keys.deadlines(), unleased.name)
    host_reply = keys.replies("host-r", "h1")
    renew = [
        [unleased.name, unleased.instance_id],  # held by that instance, not under this lease
        [elsewhere.name, elsewhere.instance_id],  # another lease's
        ["taken", "old-instance"],  # another instance (of another host) holds the name
        ["ghost", "g1"],  # nobody holds it
    ]
    await xadd_control(r, keys, _renewal("host-r", renew, reply_to=host_reply))
    told: dict[str, Any] = {}
    while len(told) < 4:
        popped: Any = await r.blpop([host_reply], timeout=10)
        assert popped is not None, f"told only {sorted(told)}"
        env = orjson.loads(popped[1])
        assert env["type"] == "reannounce"
        told[env["target"]] = env["payload"]
    for name, inst in ((unleased.name, unleased.instance_id), ("ghost", "g1")):
        assert told[name] == {"instance_id": inst, "reason": "unknown_agent"}
    assert told["elsewhere"] == {"instance_id": elsewhere.instance_id, "reason": "unknown_agent"}
    assert told["taken"] == {
        "instance_id": "old-instance", "reason": "name_lost", "holder": taken.instance_id,
    }  # fmt: skip
    assert await r.zscore(keys.deadlines(), unleased.name) == before  # not renewed


async def test_a_renewal_never_moves_a_deadline_back_and_leaving_leaves_the_lease(
    coordinator_settings: CoordinatorSettings, r: aioredis.Redis, keys: KeySpace
) -> None:
    """Straight through the registry script: an old renewal (claimed late from a frozen
    coordinator) changes nothing; a leave takes the name out of its lease."""
    client = make_client(coordinator_settings)
    registry = Registry(client, coordinator_settings)
    agent = FakeAgent(r, keys, "fenced", ttl_ms=600, lease=LEASE)
    try:
        now_ms = int(time.time() * 1000)
        prepared = prepare_announce(agent.announce_payload(), now_ms)
        assert isinstance(prepared, PreparedAnnounce)
        assert prepared.fields["lease"] == LEASE
        assert await registry.announce(f"{now_ms}-0", prepared) is None
        deadline = await r.zscore(keys.leases(), LEASE)
        assert deadline is not None
        old = ControlBatch()
        old.renew(f"{now_ms - 5000}-0", LEASE, 600, [(agent.name, agent.instance_id)], 1)
        result = await registry.apply(old)
        assert result.unknown == []
        assert result.failed == []
        assert await r.zscore(keys.leases(), LEASE) == deadline
        fresh = ControlBatch()
        fresh.renew(f"{now_ms + 1000}-0", LEASE, 600, [(agent.name, agent.instance_id)], 1)
        await registry.apply(fresh)
        assert await r.zscore(keys.leases(), LEASE) == now_ms + 1600
        assert await r.zscore(keys.deadlines(), agent.name) is None
        assert await registry.leave(agent.name, agent.instance_id, f"{now_ms + 1001}-0")
        assert not await r.sismember(keys.lease_members(LEASE), agent.name)
    finally:
        await registry.aclose()
        await client.aclose()


async def test_a_host_renews_unchanged_agents_and_beats_changed_ones(
    coordinator: Coordinator, r: aioredis.Redis, keys: KeySpace, settings: Settings
) -> None:
    """The SDK's side: a host's agents join its lease; its entries renew the unchanged and
    carry a full beat only for an agent whose status changed."""
    sent: list[dict[str, Any]] = []
    async with Host(settings, name="renewing") as host:
        agents = [host.agent(f"r-{i}", "worker") for i in range(3)]
        for agent in agents:
            await agent.start()
        assert await r.smembers(keys.lease_members(host.lease)) == {a.name for a in agents}
        last_id = "$"
        agents[1].set_status("busy")
        await wait_for(lambda: _field(r, keys.record("r-1"), "status", "busy"), message="busy")

        async def read_leases() -> bool:
            nonlocal last_id
            entries: Any = await r.xread({keys.control(): last_id}, count=100, block=50)
            for _, items in entries or []:
                for eid, fields in items:
                    last_id = eid
                    if fields.get("type") == "lease":
                        sent.append(orjson.loads(fields["payload"]))
            return any(len(p["renew"]) == 3 for p in sent)

        await wait_for(read_leases, message="a lease renewing all three")
    full = next(p for p in sent if len(p["renew"]) == 3)
    assert full["lease"] == host.lease
    assert full["beats"] == []
    assert {n for n, _ in full["renew"]} == {"r-0", "r-1", "r-2"}
    assert full["members"] == 3  # the lease's set holds as many: its deadline alone moves


async def _field(r: aioredis.Redis, key: str, field: str, value: str) -> bool:
    return bool(await r.hget(key, field) == value)


async def test_a_name_registered_under_protocol_2_1_is_handed_to_its_lease(
    coordinator: Coordinator, r: aioredis.Redis, keys: KeySpace
) -> None:
    """A 2.1 registry gave a leased name a deadline of its own: when it passes while the lease
    lives, the sweeper hands the name to the lease instead of expiring it."""
    agents = [FakeAgent(r, keys, f"old-{i}", ttl_ms=600, lease=LEASE) for i in range(2)]
    await _registered(agents)
    await r.zadd(keys.deadlines(), {agents[0].name: int(time.time() * 1000) + 100})
    renew = [[a.name, a.instance_id] for a in agents]

    async def handed_over() -> bool:
        await xadd_control(r, keys, _renewal("host-r", renew))
        await _paced()
        return await r.zscore(keys.deadlines(), agents[0].name) is None

    await wait_for(handed_over, timeout=5, message="the own deadline dropped")
    for agent in agents:
        assert await r.exists(keys.record(agent.name)), f"{agent.name} expired"
    events: Any = await r.xrange(keys.events())
    assert not [f for _, f in events if f["type"] == "agent_expired"]


async def test_a_name_taken_out_of_its_lease_is_told_to_announce_again(
    coordinator: Coordinator, r: aioredis.Redis, keys: KeySpace
) -> None:
    """A renewal checks names only when the lease's set does not hold as many as the entry
    carries: a name missing from the set (taken out by hand) is found that way."""
    agents = [FakeAgent(r, keys, f"kept-{i}", lease=LEASE) for i in range(3)]
    await _registered(agents)
    await r.srem(keys.lease_members(LEASE), agents[1].name)
    host_reply = keys.replies("host-r", "h1")
    renew = [[a.name, a.instance_id] for a in agents]
    await xadd_control(r, keys, _renewal("host-r", renew, reply_to=host_reply))
    popped: Any = await r.blpop([host_reply], timeout=10)
    assert popped is not None, "the missing name was not told"
    env = orjson.loads(popped[1])
    assert (env["type"], env["target"]) == ("reannounce", agents[1].name)
    assert env["payload"]["reason"] == "unknown_agent"
    assert await r.llen(host_reply) == 0  # the two it holds are fine

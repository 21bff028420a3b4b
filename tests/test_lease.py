"""The ``lease`` control entry: the heartbeats of every agent a process hosts, in one entry.

Each beat is applied exactly as that agent's own heartbeat written at the entry's time, with the
same fencing rules; a beat of an instance the registry does not hold is answered on the lease's
``reply_to`` (the host's reply list), naming the agent.
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis

from coordinator import Coordinator
from coordinator.validation import fast_lease
from schemas.envelope import Envelope, Kind, encode_fields
from schemas.keys import KeySpace
from tests.fake_agents import FakeAgent, xadd_control
from tests.support import wait_for


def _lease_fields(
    host: str, beats: list[list[Any]], reply_to: str | None = None, **extra: str
) -> dict[str, str]:
    fields = {
        "v": "1",
        "kind": "control",
        "type": "lease",
        "sender": host,
        "payload": orjson.dumps({"host": host, "beats": beats}).decode(),
        **extra,
    }
    if reply_to is not None:
        fields["reply_to"] = reply_to
    return fields


def _raw(fields: dict[str, str]) -> dict[bytes, bytes]:
    return {k.encode(): v.encode() for k, v in fields.items()}


def test_fast_lease_parses_every_beat() -> None:
    beats = [["a", "i1", 0, "ready", 7], ["b", "i2", 3, "busy", None]]
    lease = fast_lease("5-0", _raw(_lease_fields("h1", beats)))
    assert lease is not None
    assert lease.beats == [
        ("5-0", "a", "i1", "0", "ready", "7"),
        ("5-0", "b", "i2", "3", "busy", "0"),
    ]
    assert lease.lease is None
    assert lease.renew == []


def test_fast_lease_takes_the_lease_a_host_sends() -> None:
    """As ``agent_sdk.heartbeats`` writes it: with the host's reply list (the fast path refused
    every such lease before, and each went through the full validation)."""
    env = Envelope(
        kind=Kind.CONTROL, type="lease", sender="h1", reply_to="ns:agent:{h1}:replies:x",
        payload={"host": "h1", "beats": [["a", "i1", 0, "ready", 7]]},
    )  # fmt: skip
    raw = {
        k.encode(): v if isinstance(v, bytes) else v.encode() for k, v in encode_fields(env).items()
    }
    lease = fast_lease("5-0", raw)
    assert lease is not None
    assert lease.beats == [("5-0", "a", "i1", "0", "ready", "7")]


@pytest.mark.parametrize(
    "beats",
    [
        [["a", "i1", -1, "ready", None]],  # negative load
        [["a", "i1", 0, "asleep", None]],  # unknown status
        [["a b", "i1", 0, "ready", None]],  # not a name
        [["a", "i1", 0, "ready"]],  # four items
        [["a", "i" * 65, 0, "ready", None]],  # instance id too long
    ],
)
def test_fast_lease_leaves_odd_entries_to_the_full_check(beats: list[list[Any]]) -> None:
    assert fast_lease("5-0", _raw(_lease_fields("h1", beats))) is None


async def _registered(r: aioredis.Redis, keys: KeySpace, name: str) -> bool:
    return bool(await r.exists(keys.record(name)))


async def test_one_lease_entry_keeps_every_hosted_agent_alive(
    coordinator: Coordinator, r: aioredis.Redis, keys: KeySpace
) -> None:
    agents = [FakeAgent(r, keys, f"hosted-{i}", ttl_ms=600, heartbeat_ms=100) for i in range(3)]
    for agent in agents:
        reply = await agent.register()
        assert "error" not in reply
    host_reply = keys.replies("host-1", "h-inst")
    beats = [[a.name, a.instance_id, 0, "ready", None] for a in agents]
    first = await r.zscore(keys.deadlines(), agents[0].name)
    assert first is not None
    # one entry per interval for the whole host, for more than two TTLs
    for _ in range(14):
        await xadd_control(r, keys, _lease_fields("host-1", beats, host_reply))
        await asyncio.sleep(0.1)  # the host's interval: the pacing under test
    for agent in agents:
        assert await _registered(r, keys, agent.name), f"{agent.name} expired under a lease"
    last = await r.zscore(keys.deadlines(), agents[0].name)
    assert last is not None
    assert last > first + 600
    # a status change rides in the lease: one agent_updated event
    beats[1][3] = "busy"
    await xadd_control(r, keys, _lease_fields("host-1", beats, host_reply))
    await wait_for(lambda: _field(r, keys.record(agents[1].name), "status", "busy"), message="busy")
    # the host stops leasing (killed): every agent it carried expires
    for agent in agents:
        await wait_for(
            lambda a=agent: _gone(r, keys, a.name), timeout=5, message=f"{agent.name} expired"
        )
    assert coordinator.stats.heartbeats >= 3 * 15


async def _field(r: aioredis.Redis, key: str, field: str, value: str) -> bool:
    return bool(await r.hget(key, field) == value)


async def _gone(r: aioredis.Redis, keys: KeySpace, name: str) -> bool:
    return not await _registered(r, keys, name)


async def test_a_beat_of_an_unknown_agent_is_answered_on_the_hosts_reply_list(
    coordinator: Coordinator, r: aioredis.Redis, keys: KeySpace
) -> None:
    live = FakeAgent(r, keys, "live-1")
    assert "error" not in await live.register()
    host_reply = keys.replies("host-2", "h-inst")
    beats = [[live.name, live.instance_id, 0, "ready", None], ["ghost", "g1", 0, "ready", None]]
    await xadd_control(r, keys, _lease_fields("host-2", beats, host_reply))
    popped: Any = await r.blpop([host_reply], timeout=10)
    assert popped is not None
    told = orjson.loads(popped[1])
    assert told["type"] == "reannounce"
    assert told["target"] == "ghost"
    assert told["payload"] == {"instance_id": "g1", "reason": "unknown_agent"}
    assert await r.llen(live.reply_key) == 0  # nothing for the live one


async def test_an_unknown_instance_is_asked_to_reannounce_once_per_ttl(
    coordinator: Coordinator, r: aioredis.Redis, keys: KeySpace
) -> None:
    """Lease after lease for an instance the registry does not hold: one ``reannounce`` per
    TTL, not one per lease (a host that fell behind must not be buried in them)."""
    host_reply = keys.replies("host-3", "h3")
    beats = [["ghost-3", "g3", 0, "ready", None]]
    for _ in range(20):
        await xadd_control(r, keys, _lease_fields("host-3", beats, host_reply))
    await wait_for(lambda: coordinator.stats.heartbeats + coordinator.stats.reannounces >= 1,
                   message="leases read")  # fmt: skip
    await wait_for(lambda: _control_drained(r, keys), message="the 20 leases applied")
    assert await r.llen(host_reply) == 1
    assert coordinator.stats.reannounces == 1


async def _control_drained(r: aioredis.Redis, keys: KeySpace) -> bool:
    groups: Any = await r.xinfo_groups(keys.control())
    return bool(groups) and int(groups[0]["pending"]) == 0 and int(groups[0].get("lag") or 0) == 0


async def test_a_lease_that_takes_the_full_check_is_applied_too(
    coordinator: Coordinator, r: aioredis.Redis, keys: KeySpace
) -> None:
    agent = FakeAgent(r, keys, "slow-path")
    assert "error" not in await agent.register()
    beats = [[agent.name, agent.instance_id, 2, "busy", None]]
    # an envelope field the fast path does not take (correlation_id): pydantic validates it
    await xadd_control(r, keys, _lease_fields("host-3", beats, correlation_id="x"))
    await wait_for(lambda: _field(r, keys.record(agent.name), "load", "2"), message="load 2")


async def test_a_bad_lease_is_dead_lettered_with_its_reason(
    coordinator: Coordinator, r: aioredis.Redis, keys: KeySpace
) -> None:
    await xadd_control(r, keys, _lease_fields("host-4", [["a", "i1", 0, "asleep", None]]))
    letters: Any = await wait_for(lambda: r.xrange(keys.deadletter()), message="dead letter")
    _, fields = letters[0]
    assert fields["code"] == "invalid_record"
    assert "lease" in fields["reason"]
    assert "beats" in fields["reason"]

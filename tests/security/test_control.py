"""Attacks 4-7: forged leave, forged heartbeat (and lease beats), an announce over another
agent's instance, and a flood of fake agents."""

from __future__ import annotations

import json
from typing import Any

import orjson
import pytest

from agent_sdk import Agent
from coordinator import Coordinator
from schemas.envelope import new_id
from schemas.errors import Refused
from tests.security.conftest import World
from tests.support import deadline_of, wait_for


def control(kind: str, sender: str, payload: dict[str, Any], **extra: str) -> dict[str, str]:
    return {
        "v": "1", "id": new_id(), "kind": "control", "type": kind, "sender": sender,
        "sent_at": "2026-01-01T00:00:00.000Z", "payload": json.dumps(payload), **extra,
    }  # fmt: skip


async def test_forged_leave(world: World, coord: Coordinator) -> None:
    async with world.agent("alice", "alice") as alice:
        mallory = await world.raw("mallory")
        record = world.keys.record("alice")
        instance = await mallory.hget(record, "instance_id")
        await mallory.xadd(
            world.keys.control(), control("leave", "alice", {"instance_id": instance})
        )
        if world.secure:
            letters = await wait_for(
                lambda: world.admin.xrange(world.keys.deadletter()), message="dead letter"
            )
            assert letters[0][1]["code"] == "unauthenticated"
            assert await world.admin.exists(record)
        else:  # documented: the live agent is deregistered
            await wait_for(lambda: _gone(world, record), message="deregistered")
        assert alice.name == "alice"


async def _gone(world: World, record: str) -> bool:
    return not await world.admin.exists(record)


async def test_forged_heartbeat_and_lease(world: World, coord: Coordinator) -> None:
    async with world.agent("alice", "alice"):
        mallory = await world.raw("mallory")
        record = world.keys.record("alice")
        instance = await mallory.hget(record, "instance_id")
        epoch = int(await mallory.hget(record, "epoch"))
        beat = {"instance_id": instance, "load": 0, "status": "draining", "epoch": epoch}
        await mallory.xadd(world.keys.control(), control("heartbeat", "alice", beat))
        if not world.secure:  # documented: the forged status is applied
            await wait_for(
                lambda: _status(world, record, "draining"), message="draining", timeout=5
            )
            return
        await wait_for(lambda: world.admin.xlen(world.keys.deadletter()), message="letter")
        # a lease proved under mallory's own name, with a beat for alice: the beat is dropped
        lease = {"host": "mallory", "beats": [["alice", instance, 0, "draining", epoch]]}
        await _lease_as_mallory(world, lease)
        await wait_for(lambda: _dropped(coord) >= 1, message="the beat dropped")
        assert await world.admin.hget(record, "status") == "ready"
        # a renewal of alice's own lease (its host named in the payload), proved under
        # mallory's name, asking a one-day TTL: the lease is not mallory's, so it is dropped
        alice_lease = await world.admin.hget(record, "lease")
        assert alice_lease is not None
        renew = {"host": "alice", "beats": [], "lease": alice_lease, "ttl_ms": 86_400_000,
                 "renew": [["alice", instance]]}  # fmt: skip
        await _lease_as_mallory(world, renew)
        await wait_for(lambda: _dropped(coord) >= 2, message="the renewal dropped")
        deadline = await deadline_of(world.admin, world.keys, "alice")
        assert deadline is not None
        ttl_ms = int(await world.admin.hget(record, "ttl_ms"))
        assert deadline < (await _redis_ms(world)) + 2 * ttl_ms  # not a day away


async def _lease_as_mallory(world: World, payload: dict[str, Any]) -> None:
    """A ``lease`` entry written and proved as mallory's own (her user, her name)."""
    from agent_sdk.connection import make_client
    from agent_sdk.membership import xadd_control
    from agent_sdk.messaging.codec import Outgoing
    from schemas.envelope import Kind

    settings = world.settings("mallory")
    client = make_client(settings)
    try:
        env = Outgoing("lease", "mallory", orjson.dumps(payload), kind=Kind.CONTROL)
        await xadd_control(client, settings, env, "leasing")
    finally:
        await client.aclose()


async def _redis_ms(world: World) -> float:
    sec, usec = await world.admin.time()
    return sec * 1000 + usec / 1000


async def _status(world: World, record: str, status: str) -> bool:
    return bool(await world.admin.hget(record, "status") == status)


def _dropped(coord: Coordinator) -> int:
    assert coord.control is not None
    assert coord.control.screen is not None
    return coord.control.screen.dropped_beats


async def test_announce_over_another_agents_instance(world: World, coord: Coordinator) -> None:
    async with world.agent("alice", "alice", description="the real one"):
        mallory = await world.raw("mallory")
        record = world.keys.record("alice")
        instance = await mallory.hget(record, "instance_id")
        card = {"name": "alice", "role": "worker", "description": "owned"}
        ann = {"card": card, "instance_id": instance, "heartbeat_ms": 100, "ttl_ms": 86_400_000}
        reply_to = world.keys.replies("mallory", "m1")
        await mallory.xadd(
            world.keys.control(), control("announce", "alice", ann, reply_to=reply_to)
        )
        if world.secure:
            await wait_for(lambda: world.admin.xlen(world.keys.deadletter()), message="letter")
            assert await world.admin.hget(record, "description") == "the real one"
            assert await world.admin.llen(reply_to) == 0  # a forged entry is never answered
        else:  # documented: the card is overwritten, TTL 1 day
            await wait_for(
                lambda: _field(world, record, "description", "owned"), message="overwritten"
            )


async def _field(world: World, record: str, name: str, value: str) -> bool:
    return bool(await world.admin.hget(record, name) == value)


async def test_fake_agents_over_quota(world: World, coord: Coordinator) -> None:
    """mallory's identity may hold 3 names (max_agents): the 4th is refused with ``quota``."""
    agents = []
    try:
        for i in range(3):
            a = Agent(f"m-{i}", "worker", settings=world.settings("mallory"))
            await a.start()
            agents.append(a)
        extra = Agent("m-3", "worker", settings=world.settings("mallory"))
        if world.secure:
            with pytest.raises(Refused) as e:
                await extra.start()
            assert e.value.code == "quota"
        else:  # documented: no limit
            await extra.start()
            agents.append(extra)
    finally:
        for a in agents:
            await a.stop()


async def test_roles_and_capabilities_follow_the_policy(world: World, coord: Coordinator) -> None:
    a = Agent("bob", "admin-role", settings=world.settings("bob"))
    if world.secure:
        with pytest.raises(Refused) as e:
            await a.start()
        assert e.value.code == "forbidden"
        assert "role 'admin-role'" in e.value.description
    else:
        await a.start()
        await a.stop()


async def test_forged_reannounce(world: World, coord: Coordinator) -> None:
    """A ``reannounce`` saying another instance took the name, pushed by mallory to alice's
    reply list (anyone who may answer requests may push there): obeyed in ``off`` mode (alice
    stops serving her name); dropped and counted in acl mode, where only what a coordinator
    proved in ``R:proofs`` is obeyed, as a genuine ``reannounce`` still is."""
    lost: list[Exception] = []
    async with world.agent("alice", "alice", on_name_lost=lost.append) as alice:
        mallory = await world.raw("mallory")
        record = world.keys.record("alice")
        instance = await mallory.hget(record, "instance_id")
        forged = {
            "v": 1, "id": new_id(), "kind": "control", "type": "reannounce",
            "sender": "coordinator", "sent_at": "2026-01-01T00:00:00.000Z", "target": "alice",
            "payload": {"instance_id": instance, "reason": "name_lost", "holder": "x"},
        }  # fmt: skip
        await mallory.lpush(alice.router.key, json.dumps(forged))
        if not world.secure:  # documented: alice gives her name up
            await wait_for(lambda: len(lost) == 1, message="the name given up")
            return
        await wait_for(lambda: alice.router.unproved == 1, message="the forgery dropped")
        assert lost == []
        assert alice.name_lost is None
        # a genuine reannounce (the record lost: the coordinator asks at the next beat) works
        await world.admin.delete(record)
        await wait_for(lambda: world.admin.exists(record), message="re-announced", timeout=5)
        assert alice.router.unproved == 1

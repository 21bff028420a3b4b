"""What the coordinator and the SDK write validates against the published wire models.

docs/PROTOCOL.md ("Payload reference") links a JSON Schema per payload, exported from these
models; here the real coordinator and a real agent produce each payload and the model reads it
back, so neither the page nor the schema can describe something the code does not write.
"""

from __future__ import annotations

from typing import Any

import orjson
import redis.asyncio as aioredis

from agent_sdk import Agent
from agent_sdk.settings import Settings
from coordinator.service import Coordinator
from schemas.agent import AgentRecord, LeaveResult, Reannounce
from schemas.envelope import Kind, decode_json
from schemas.errors import DeadLetterEntry
from schemas.events import ActivityEvent, RegistryEvent
from schemas.keys import KeySpace
from tests.fake_agents import FakeAgent
from tests.support import wait_for


def _envelope(reply: dict[str, Any]) -> Any:
    """The reply as the protocol's envelope (decoded from the bytes the coordinator pushed)."""
    return decode_json(orjson.dumps(reply))


async def test_coordinator_answers_are_the_documented_payloads(
    coordinator: Coordinator, r: aioredis.Redis, keys: KeySpace
) -> None:
    holder = FakeAgent(r, keys, "a1")
    accepted = _envelope(await holder.register())
    assert accepted.kind is Kind.REPLY
    assert accepted.error is None
    record = AgentRecord.model_validate(accepted.payload)
    assert record.instance_id == holder.instance_id
    assert record.epoch > 0

    rival = FakeAgent(r, keys, "a1")  # another instance of the same name heartbeats
    await rival.heartbeat()
    lost = _envelope(await rival.next_reply())
    assert (lost.kind, lost.type, lost.correlation_id) == (Kind.CONTROL, "reannounce", None)
    assert Reannounce.model_validate(lost.payload) == Reannounce(
        instance_id=rival.instance_id, reason="name_lost", holder=holder.instance_id
    )

    ghost = FakeAgent(r, keys, "ghost")
    await ghost.heartbeat()
    unknown = _envelope(await ghost.next_reply())
    assert Reannounce.model_validate(unknown.payload) == Reannounce(
        instance_id=ghost.instance_id, reason="unknown_agent"
    )

    for removed in (True, False):  # the second leave finds nothing to remove
        await holder.leave(reply=True)
        left = _envelope(await holder.next_reply())
        assert left.type == "leave_result"
        assert LeaveResult.model_validate(left.payload) == LeaveResult(removed=removed)


async def test_dead_letters_of_the_coordinator_and_the_sdk_are_the_documented_entry(
    coordinator: Coordinator, r: aioredis.Redis, keys: KeySpace, settings: Settings
) -> None:
    bad = FakeAgent(r, keys, "a1")
    await bad.send("heartbeat", {"instance_id": bad.instance_id, "load": 0.5})
    async with Agent("echo", "echoer", settings=settings) as agent:
        await agent.send("echo", "nobody-handles-this", {"x": 1})  # fire-and-forget: dead letter
        await r.lpush(agent.router.key, '{"v":"1","type":"reannounce"}')  # undecodable reply

        async def three() -> list[Any]:
            entries: list[Any] = await r.xrange(keys.deadletter())
            return entries if len(entries) >= 3 else []

        entries = await wait_for(three, message="three dead letters")
    parsed = [DeadLetterEntry.model_validate(fields) for _, fields in entries]
    letters = {letter.code: letter for letter in parsed}
    control = letters["invalid_record"]
    assert control.coordinator == coordinator.id
    assert control.source == keys.control()
    assert control.original["type"] == "heartbeat"
    inbox = letters["unknown_type"]
    assert inbox.coordinator is None
    assert inbox.source == keys.inbox("echo")
    assert inbox.source_id
    assert inbox.original["type"] == "nobody-handles-this"
    listed = letters["unsupported_version"]
    assert listed.source_id == ""
    assert listed.original == {"data": '{"v":"1","type":"reannounce"}'}


async def test_event_mirrors_carry_only_the_documented_fields(
    coordinator: Coordinator, r: aioredis.Redis, keys: KeySpace, settings: Settings
) -> None:
    """The pub/sub mirrors of the change feed and of activity (the JSON the schemas describe):
    every key is a field of the model, and the stream entries decode with the models."""
    pubsub = r.pubsub()
    await pubsub.psubscribe(keys.events_channel(), keys.session_channel("s-1"))
    try:
        agent = Agent("busy-1", "worker", settings=settings)
        async with agent, agent.activity("s-1") as act:
            await act.tool_executing("search", {"q": "x"})
        mirrors: list[dict[str, Any]] = []

        async def enough() -> bool:
            msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.1)
            if msg is not None:
                mirrors.append(orjson.loads(msg["data"]))
            activity = [m for m in mirrors if "seq" in m]
            left = [m for m in mirrors if m.get("type") == "agent_deregistered"]
            return len(activity) >= 3 and bool(left)  # started, tool_executing, completed

        await wait_for(enough, message="the event mirrors")
    finally:
        await pubsub.aclose()
    for mirror in mirrors:
        model = ActivityEvent if "seq" in mirror else RegistryEvent
        assert set(mirror) <= set(model.model_fields), mirror
        model.model_validate(mirror)
    for entry_id, fields in await r.xrange(keys.events()):
        assert set(fields) <= set(RegistryEvent.model_fields) - {"revision"}
        RegistryEvent.from_fields(entry_id, fields)
    for entry_id, fields in await r.xrange(keys.session_activity("s-1")):
        assert set(fields) <= set(ActivityEvent.model_fields) - {"id"}
        ActivityEvent.from_fields(entry_id, fields)

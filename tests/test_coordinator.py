"""The coordinator against a real Redis: announce, heartbeat, leave, refusals, the change feed."""

from __future__ import annotations

from typing import Any

import orjson
import redis.asyncio as aioredis

from coordinator import Coordinator
from schemas.agent import AgentRecord
from schemas.events import RegistryEvent
from schemas.keys import KeySpace
from tests.fake_agents import FakeAgent
from tests.support import wait_for


async def events(r: aioredis.Redis, keys: KeySpace) -> list[RegistryEvent]:
    entries: Any = await r.xrange(keys.events())
    return [RegistryEvent.from_fields(eid, fields) for eid, fields in entries]


async def test_announce_stores_readable_record_and_indexes(
    coordinator: Coordinator, r: aioredis.Redis, keys: KeySpace
) -> None:
    agent = FakeAgent(
        r, keys, "summarizer-1", role="summarizer", capabilities=["text", "pdf"], tags=["eu"],
        version="1.2.3", host="box", pid=42,
    )  # fmt: skip
    reply = await agent.register()
    assert reply["kind"] == "reply"
    assert "error" not in reply
    assert reply["payload"]["name"] == "summarizer-1"
    assert reply["payload"]["instance_id"] == agent.instance_id

    raw = await r.hgetall(keys.record("summarizer-1"))
    assert raw["role"] == "summarizer"
    assert raw["version"] == "1.2.3"
    assert orjson.loads(raw["capabilities"]) == ["text", "pdf"]
    assert raw["last_seen"].endswith("Z")
    record = AgentRecord.from_hash(raw)
    assert record.instance_id == agent.instance_id
    assert record.ttl_ms == 500

    assert await r.sismember(keys.agents(), "summarizer-1")
    assert await r.sismember(keys.role_index("summarizer"), "summarizer-1")
    assert await r.sismember(keys.capability_index("pdf"), "summarizer-1")
    assert await r.sismember(keys.tag_index("eu"), "summarizer-1")
    assert await r.zscore(keys.deadlines(), "summarizer-1") is not None

    evs = await events(r, keys)
    assert [e.type for e in evs] == ["agent_registered"]
    assert evs[0].record is not None
    assert evs[0].record["name"] == "summarizer-1"
    assert coordinator.stats.announces == 1

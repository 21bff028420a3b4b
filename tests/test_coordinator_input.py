"""Every bad control entry is answered with its error or dead-lettered; the next one still works."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis

from coordinator import Coordinator
from schemas.keys import COORDINATOR_GROUP, KeySpace
from tests.fake_agents import FakeAgent, xadd_control
from tests.support import wait_for

LONG = "a" * 129


@pytest.mark.parametrize(
    ("card", "code"),
    [
        ({"name": ""}, "invalid_name"),
        ({"name": LONG}, "invalid_name"),
        ({"name": "has space"}, "invalid_name"),
        ({"name": "has:colon"}, "invalid_name"),
        ({"name": "has{brace"}, "invalid_name"),
        ({"name": "has}brace"}, "invalid_name"),
        ({"name": "star*"}, "invalid_name"),
        ({"role": "bad role"}, "invalid_name"),
        ({"capabilities": ["ok", "no:colon"]}, "invalid_name"),
        ({"tags": ["{x}"]}, "invalid_name"),
        ({"version": "1.2"}, "invalid_version"),
        ({"version": "v1.2.3"}, "invalid_version"),
        ({"colour": "red"}, "invalid_record"),
        ({"max_concurrency": 0}, "invalid_record"),
        ({"metadata": {"blob": "x" * 20_000}}, "too_large"),
    ],
)
async def test_bad_card_is_refused_then_good_one_works(
    coordinator: Coordinator,
    r: aioredis.Redis,
    keys: KeySpace,
    card: dict[str, Any],
    code: str,
) -> None:
    bad = FakeAgent(r, keys, "bad-agent")
    reply = await bad.register(**card)
    assert reply["error"]["code"] == code, reply["error"]
    assert reply["error"]["description"]
    if code != "too_large":
        assert reply["error"]["details"]["errors"], "pydantic error details are included"
    assert await r.scard(keys.agents()) == 0
    good = FakeAgent(r, keys, "good-agent")
    assert "error" not in await good.register()
    assert await r.smembers(keys.agents()) == {"good-agent"}


@pytest.mark.parametrize(
    ("payload", "code"),
    [
        ({"card": {"name": "x", "role": "w"}, "heartbeat_ms": 100, "ttl_ms": 500},
         "invalid_record"),
        (
            {"card": {"name": "x", "role": "w"}, "instance_id": "i", "heartbeat_ms": 100,
             "ttl_ms": 500, "extra": 1},
            "invalid_record",
        ),
        (
            {"card": {"name": "x", "role": "w"}, "instance_id": "i", "heartbeat_ms": 400,
             "ttl_ms": 500},
            "invalid_record",
        ),
        ("just a string", "invalid_record"),
    ],
)  # fmt: skip
async def test_bad_announce_payload_is_refused(
    coordinator: Coordinator, r: aioredis.Redis, keys: KeySpace, payload: Any, code: str
) -> None:
    agent = FakeAgent(r, keys, "x")
    await agent.announce(payload=payload)
    reply = await agent.next_reply()
    assert reply["error"]["code"] == code
    assert "error" not in await FakeAgent(r, keys, "y").register()


async def dead_letters(r: aioredis.Redis, keys: KeySpace) -> list[dict[str, str]]:
    """Dead letters, decoded leniently (they may hold the original undecodable bytes)."""
    raw = aioredis.Redis(connection_pool=r.connection_pool, decode_responses=False)
    entries: Any = await raw.execute_command(
        "XRANGE", keys.deadletter(), "-", "+", NEVER_DECODE=True
    )
    return [
        {k.decode(errors="replace"): v.decode(errors="replace") for k, v in f.items()}
        for _, f in entries
    ]


@pytest.mark.parametrize(
    ("fields", "code"),
    [
        ({"type": "announce", "payload": "{not json"}, "undecodable"),
        ({"v": "2", "type": "announce", "payload": "{}"}, "unsupported_version"),
        ({"v": "one", "type": "heartbeat"}, "undecodable"),
        ({"foo": "bar"}, "undecodable"),
        ({"type": "announce", "sender": "x", "payload": "{}"}, "invalid_record"),
        ({"type": "frobnicate", "sender": "x"}, "unknown_type"),
        ({"type": "heartbeat", "sender": "x", "payload": '{"load": -1}'}, "invalid_record"),
        ({"type": "heartbeat", "sender": "bad name", "payload": '{"instance_id": "i"}'},
         "invalid_name"),
        ({"type": "leave", "sender": "x", "payload": "[]"}, "invalid_record"),
        ({"type": b"\xff\xfe", "payload": b"\x00\x81"}, "undecodable"),
        ({b"\xd6\xd6": b"x", "type": "heartbeat"}, "undecodable"),
    ],
)  # fmt: skip
async def test_garbage_is_dead_lettered_and_acked(
    coordinator: Coordinator,
    r: aioredis.Redis,
    keys: KeySpace,
    fields: dict[str, Any],
    code: str,
) -> None:
    entry_id = await xadd_control(r, keys, fields)
    letters = await wait_for(lambda: dead_letters(r, keys), message="a dead letter")
    (letter,) = letters
    assert letter["code"] == code, letter
    assert letter["source"] == keys.control()
    assert letter["source_id"] == entry_id
    assert letter["reason"]
    assert letter["failed_at"].endswith("Z")
    for k in fields:
        name = k.decode(errors="replace") if isinstance(k, bytes) else k
        assert f"orig.{name}" in letter
    pending: Any = await r.xpending(keys.control(), COORDINATOR_GROUP)
    assert pending["pending"] == 0
    assert coordinator.stats.dead_letters == 1
    # the stream keeps flowing
    assert "error" not in await FakeAgent(r, keys, "after").register()


async def test_heartbeat_from_unknown_instance_asks_to_reannounce(
    coordinator: Coordinator, r: aioredis.Redis, keys: KeySpace
) -> None:
    ghost = FakeAgent(r, keys, "ghost")
    await ghost.heartbeat()

    async def has_ttl() -> bool:
        return int(await r.pttl(ghost.reply_key)) > 0

    await wait_for(has_ttl, message="a reply list with a TTL")
    reply = await ghost.next_reply()
    assert reply["kind"] == "control"
    assert reply["type"] == "reannounce"
    assert reply["payload"]["instance_id"] == ghost.instance_id
    assert not await r.exists(keys.record("ghost"))


async def test_announce_reply_is_a_valid_envelope(
    coordinator: Coordinator, r: aioredis.Redis, keys: KeySpace
) -> None:
    from schemas.envelope import decode_json

    agent = FakeAgent(r, keys, "a1")
    msg_id = await agent.announce()
    raw: Any = await r.blpop([agent.reply_key], timeout=10)
    env = decode_json(raw[1])
    assert env.correlation_id == msg_id
    assert env.type == "announce_result"
    assert orjson.loads(raw[1])["payload"]["name"] == "a1"

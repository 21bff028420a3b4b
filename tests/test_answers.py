"""Every input answered: a control entry or a request that fails validation is answered with an
error that names the field at fault (besides its dead letter), never left to a silent timeout."""

from __future__ import annotations

import logging
from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis
from pydantic import BaseModel

from agent_sdk import Agent
from agent_sdk.messaging import Message
from agent_sdk.settings import Settings
from agent_sdk.usage import UNKNOWN_TYPE
from coordinator import Coordinator
from schemas.envelope import decode_json
from schemas.errors import ErrorCode, ProtocolError, RemoteError
from schemas.keys import KeySpace
from tests.fake_agents import FakeAgent, xadd_control
from tests.messaging_helpers import node
from tests.support import wait_for
from tests.test_coordinator_input import dead_letters


def _hb(agent: FakeAgent, payload: Any, **extra: str) -> dict[str, Any]:
    return {
        "v": "1", "kind": "control", "type": "heartbeat", "sender": agent.name,
        "payload": orjson.dumps(payload).decode(), **extra,
    }  # fmt: skip


@pytest.mark.parametrize(
    ("payload", "extra", "code", "field"),
    [
        ({"load": -1}, {}, "invalid_record", "payload.load"),
        ({"load": 0.5}, {}, "invalid_record", "payload.load"),
        ({"status": "sleeping"}, {}, "invalid_record", "payload.status"),
        ({"colour": "red"}, {}, "invalid_record", "payload.colour"),
        ({}, {"foo": "bar"}, "undecodable", "foo"),
        ({}, {"v": "2"}, "unsupported_version", "field v"),
        ({}, {"deadline": "soon"}, "undecodable", "deadline"),
    ],
)  # fmt: skip
async def test_a_bad_heartbeat_is_answered_with_why(
    coordinator: Coordinator,
    r: aioredis.Redis,
    keys: KeySpace,
    payload: dict[str, Any],
    extra: dict[str, str],
    code: str,
    field: str,
) -> None:
    agent = FakeAgent(r, keys, "beater")
    entry_id = await xadd_control(
        r, keys, _hb(agent, {"instance_id": agent.instance_id, **payload}, **extra)
    )
    answer = await agent.next_reply()
    assert answer["kind"] == "control"
    assert answer["type"] == "heartbeat_result"
    assert answer["target"] == "beater"
    assert answer["correlation_id"] == entry_id  # no id field: the entry id is the message id
    assert answer["error"]["code"] == code
    assert field in answer["error"]["description"]
    decode_json(orjson.dumps(answer))  # a valid envelope
    (letter,) = await wait_for(lambda: dead_letters(r, keys), message="the dead letter")
    assert letter["code"] == code
    assert field in letter["reason"]  # the dead letter says which field failed, too


async def test_a_heartbeat_nobody_can_be_told_about_is_only_dead_lettered(
    coordinator: Coordinator, r: aioredis.Redis, keys: KeySpace
) -> None:
    for fields in (
        {"type": "heartbeat", "sender": "bad name", "payload": '{"instance_id": "i", "load": -1}'},
        {"type": "heartbeat", "sender": "x", "payload": '{"load": -1}'},
        {"type": "heartbeat", "sender": "x", "payload": '{"instance_id": "no:colon"}'},
        {"type": "heartbeat", "payload": "{not json"},
    ):
        await xadd_control(r, keys, fields)
    await wait_for(
        lambda: _count(dead_letters(r, keys), 4), message="four dead letters", timeout=10
    )
    assert [k async for k in r.scan_iter(match=f"{keys.agents_prefix}*")] == []


async def _count(letters: Any, n: int) -> bool:
    return len(await letters) == n


async def test_an_announce_that_does_not_decode_is_answered(
    coordinator: Coordinator, r: aioredis.Redis, keys: KeySpace
) -> None:
    agent = FakeAgent(r, keys, "newcomer")
    await agent.send(
        "announce", agent.announce_payload(), id="ann-1", reply_to=agent.reply_key, colour="red"
    )
    answer = await agent.next_reply()
    assert (answer["type"], answer["kind"]) == ("announce_result", "reply")
    assert answer["correlation_id"] == "ann-1"
    assert answer["error"]["code"] == "undecodable"
    assert "colour" in answer["error"]["description"]
    assert await wait_for(lambda: dead_letters(r, keys), message="the dead letter")
    assert "error" not in await agent.register()  # the good one still works


async def test_an_announce_without_reply_to_is_answered_on_the_instance_list(
    coordinator: Coordinator, r: aioredis.Redis, keys: KeySpace
) -> None:
    agent = FakeAgent(r, keys, "forgetful")
    await agent.send("announce", agent.announce_payload(), id="ann-2")
    answer = await agent.next_reply()
    assert answer["type"] == "announce_result"
    assert answer["correlation_id"] == "ann-2"
    assert answer["error"]["code"] == "invalid_record"
    assert "reply_to" in answer["error"]["description"]
    assert not await r.exists(keys.record("forgetful"))


async def test_a_bad_leave_with_reply_to_is_answered(
    coordinator: Coordinator, r: aioredis.Redis, keys: KeySpace
) -> None:
    agent = FakeAgent(r, keys, "leaver")
    assert "error" not in await agent.register()
    await agent.send(
        "leave", {"instance_id": agent.instance_id, "why": "x"}, id="l-1", reply_to=agent.reply_key
    )
    answer = await agent.next_reply()
    assert (answer["type"], answer["correlation_id"]) == ("leave_result", "l-1")
    assert answer["error"]["code"] == "invalid_record"
    assert "payload.why" in answer["error"]["description"]


async def test_the_sdk_logs_a_refused_heartbeat_at_warning(
    coordinator: Coordinator,
    settings: Settings,
    r: aioredis.Redis,
    keys: KeySpace,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="agentbus.membership")
    async with Agent("watched", "worker", settings=settings) as agent:
        fake = FakeAgent(r, keys, "watched", instance_id=agent.instance_id)
        await xadd_control(r, keys, _hb(fake, {"instance_id": agent.instance_id, "load": -1}))
        membership = agent._membership
        assert membership is not None
        await wait_for(lambda: membership.refused_heartbeats, message="the refusal heard")
    warnings = [rec for rec in caplog.records if rec.levelno == logging.WARNING]
    assert any(
        "refused a heartbeat" in rec.getMessage() and "payload.load" in rec.getMessage()
        for rec in warnings
    ), [rec.getMessage() for rec in warnings]


async def test_a_request_that_does_not_decode_gets_an_error_reply(
    settings: Settings, r: aioredis.Redis
) -> None:
    """An unknown envelope field (or any field that fails) in a request: the caller hears why
    at once instead of waiting for its timeout; the entry is still dead-lettered."""
    keys = settings.keys
    async with node(settings, "strict", r=r) as agent:

        @agent.on("echo")
        async def echo(payload: Any) -> Any:
            return payload

        reply_to = keys.replies("me", "by-hand")
        for i, extra in enumerate(({"colour": "red"}, {"deadline": "soon"}, {"v": "7"})):
            await r.xadd(
                keys.inbox("strict"),
                {
                    "type": "echo", "kind": "request", "id": f"req-{i}", "sender": "me",
                    "reply_to": reply_to, "payload": "1", "headers": '{"traceparent": "t"}',
                    **extra,
                },
            )  # fmt: skip
            popped: Any = await r.brpop([reply_to], timeout=10)
            assert popped is not None, f"no error reply to {extra}"
            reply = decode_json(popped[1])
            assert reply.correlation_id == f"req-{i}"
            assert reply.target == "me"
            assert reply.headers == {"traceparent": "t"}  # trace continuity
            assert reply.error is not None
            field = next(iter(extra))
            assert field in reply.error.description, reply.error
            assert reply.error.code in (ErrorCode.UNDECODABLE, ErrorCode.UNSUPPORTED_VERSION)
        letters = await wait_for(
            lambda: _letters(r, keys.deadletter(), 3), message="three dead letters"
        )
        assert all(letter["source"] == keys.inbox("strict") for letter in letters)
        assert "colour" in letters[0]["reason"]
        pending: Any = await r.xpending(keys.inbox("strict"), "agent")
        assert pending["pending"] == 0


async def _letters(r: aioredis.Redis, key: str, n: int) -> list[dict[str, str]]:
    entries: Any = await r.xrange(key)
    return [f for _, f in entries] if len(entries) >= n else []


async def test_a_bad_send_is_not_answered_and_a_foreign_reply_to_is_not_written(
    settings: Settings, r: aioredis.Redis
) -> None:
    keys = settings.keys
    async with node(settings, "quiet", r=r) as agent:

        @agent.on("echo")
        async def echo(payload: Any) -> Any:
            return payload

        outside = "elsewhere:replies:x"
        await r.xadd(keys.inbox("quiet"), {"type": "echo", "reply_to": outside, "colour": "red"})
        await r.xadd(
            keys.inbox("quiet"),
            {"type": "echo", "kind": "request", "reply_to": outside, "colour": "red"},
        )
        await wait_for(lambda: _letters(r, keys.deadletter(), 2), message="two dead letters")
    assert not await r.exists(outside)


class Doc(BaseModel):
    text: str


async def test_reasons_name_the_field_and_a_non_json_result_is_a_handler_error(
    settings: Settings, r: aioredis.Redis
) -> None:
    keys = settings.keys
    async with node(settings, "s", r=r) as s, node(settings, "c", r=r) as c:

        @s.on("doc")
        async def doc(payload: Doc) -> None:
            return None

        @s.on("weird")
        async def weird(payload: Any) -> object:
            return {1, 2}  # a set: not JSON

        with pytest.raises(RemoteError) as bad:
            await c.request("s", "doc", {"txt": "x"}, timeout=5)
        assert bad.value.code == ErrorCode.BAD_REQUEST
        assert "payload.text: Field required" in bad.value.description

        with pytest.raises(RemoteError) as odd:
            await c.request("s", "weird", None, timeout=5)
        assert odd.value.code == ErrorCode.HANDLER_ERROR
        assert "not JSON" in odd.value.description

        await c.send("s", "doc", {"text": 3})  # a send: dead-lettered, with the field named
        (letter,) = await wait_for(
            lambda: _letters(r, keys.deadletter(), 1), message="the dead letter"
        )
        assert letter["code"] == "bad_request"
        assert "payload.text" in letter["reason"]


@pytest.mark.usefixtures("coordinator")
async def test_a_broadcast_without_a_handler_is_counted(
    settings: Settings, r: aioredis.Redis
) -> None:
    got: list[Message] = []
    async with Agent("listener", "worker", settings=settings) as agent:

        @agent.on("known")
        async def known(payload: Any, msg: Message) -> None:
            got.append(msg)

        assert await agent.broadcast("nobody-handles-this", {"x": 1}) == 1
        assert await agent.broadcast("known", None) == 1
        await wait_for(lambda: got, message="the known broadcast")
        messaging = agent._messaging
        assert messaging is not None
        assert messaging.consumer is not None
        consumer = messaging.consumer
        await wait_for(lambda: consumer.unhandled_broadcasts == 1, message="counted")
        assert agent.usage is not None
        await agent.usage.flush()
        stats = await r.hgetall(settings.keys.stats("listener"))  # type: ignore[misc]
        assert stats[f"{UNKNOWN_TYPE}.invocations"] == "1"
        assert f"{UNKNOWN_TYPE}.errors" not in stats  # not a failure of the agent

        # a durable broadcast (a copy in the inbox) without a handler is dead-lettered
        assert await agent.broadcast("nobody-handles-this", None, durable=True) == 1
        (letter,) = await wait_for(
            lambda: _letters(r, settings.keys.deadletter(), 1), message="the dead letter"
        )
        assert letter["code"] == "unknown_type"


@pytest.mark.parametrize(
    ("data", "code", "says"),
    [
        (b'{"v": "1", "type": "x"}', "unsupported_version", "v must be the number 1 in JSON"),
        (b'{"v": 2, "type": "x"}', "unsupported_version", "version 2 (field v)"),
        (b'{"type": "x", "colour": "red"}', "undecodable", "colour: unknown field"),
        (b'{"type": "x", "headers": {"a": 1}}', "undecodable", "headers.a: Input should be"),
        (b'{"type": ""}', "undecodable", "type: String should have at least 1 character"),
    ],
)  # fmt: skip
def test_decoding_errors_name_the_field(data: bytes, code: str, says: str) -> None:
    with pytest.raises(ProtocolError) as caught:
        decode_json(data)
    assert caught.value.code == code
    assert says in caught.value.description


async def test_a_bad_lease_is_answered_to_its_host(
    coordinator: Coordinator, r: aioredis.Redis, keys: KeySpace
) -> None:
    reply_to = keys.replies("host-9", "h9")
    payload = {"host": "host-9", "beats": [["a", "i1", 0, "asleep", None]]}
    fields = {
        "v": "1", "kind": "control", "type": "lease", "sender": "host-9", "id": "lease-1",
        "reply_to": reply_to, "payload": orjson.dumps(payload).decode(),
    }  # fmt: skip
    await xadd_control(r, keys, fields)
    popped: Any = await r.brpop([reply_to], timeout=10)
    assert popped is not None
    answer = decode_json(popped[1])
    assert (answer.kind.value, answer.type) == ("control", "lease_result")
    assert answer.correlation_id == "lease-1"
    assert answer.error is not None
    assert answer.error.code == "invalid_record"
    assert "payload.beats" in answer.error.description

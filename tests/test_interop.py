"""Interop: a message written by hand with the ``redis-cli`` binary is handled by an agent.

The command is the one documented in docs/PROTOCOL.md ("Sending by hand").
"""

from __future__ import annotations

import asyncio
import shutil
from typing import Any

import pytest
import redis.asyncio as aioredis

from agent_sdk.embedded import RedisServer
from agent_sdk.messaging import Message
from agent_sdk.settings import Settings
from schemas.envelope import Kind
from tests.messaging_helpers import node
from tests.support import wait_for

REDIS_CLI = shutil.which("redis-cli")


async def _cli(server: RedisServer, *args: str) -> str:
    assert REDIS_CLI is not None
    proc = await asyncio.create_subprocess_exec(
        REDIS_CLI, "-p", str(server.port), *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    return out.decode().strip()


@pytest.mark.skipif(REDIS_CLI is None, reason="redis-cli not installed")
async def test_redis_cli_xadd_is_handled(
    settings: Settings, r: aioredis.Redis, redis_server: RedisServer
) -> None:
    got: list[Message] = []
    async with node(settings, "summarizer-1", "summarizer", r=r) as agent:

        @agent.on("summarize")
        async def summarize(payload: dict[str, Any], msg: Message) -> None:
            got.append(msg)

        inbox = settings.keys.inbox("summarizer-1")  # <ns>:agent:{summarizer-1}:inbox
        entry_id = await _cli(
            redis_server, "XADD", inbox, "*",
            "type", "summarize", "sender", "me", "payload", '{"text":"hello"}',
        )  # fmt: skip
        await wait_for(lambda: got, timeout=5, message="the hand-written message")
    msg = got[0]
    assert msg.payload == {"text": "hello"}
    assert (msg.type, msg.sender, msg.kind) == ("summarize", "me", Kind.SEND)
    assert msg.id == entry_id  # no id field: the stream entry id is the message id
    assert msg.sent_at is not None


@pytest.mark.skipif(REDIS_CLI is None, reason="redis-cli not installed")
async def test_redis_cli_request_gets_a_reply_in_a_list(
    settings: Settings, r: aioredis.Redis, redis_server: RedisServer
) -> None:
    async with node(settings, "adder", "math", r=r) as agent:

        @agent.on("add")
        async def add(payload: list[int]) -> int:
            return sum(payload)

        reply_to = settings.keys.replies("me", "cli")
        await _cli(
            redis_server, "XADD", settings.keys.role_queue("math"), "*",
            "type", "add", "kind", "request", "id", "req-1", "sender", "me",
            "reply_to", reply_to, "payload", "[1,2,3]",
        )  # fmt: skip
        popped = await _cli(redis_server, "BRPOP", reply_to, "10")
    key, reply = popped.splitlines()
    assert key == reply_to
    assert '"correlation_id":"req-1"' in reply
    assert '"payload":6' in reply
    assert '"kind":"reply"' in reply

"""Requests with ``durable=False``: straight to the agent's host over pub/sub, at-most-once."""

from __future__ import annotations

from typing import Any

import pytest
import redis.asyncio as aioredis

from agent_sdk import Agent, Bus, Host
from agent_sdk.errors import AgentNotFound, NoResponders, RemoteError
from agent_sdk.settings import Settings
from agent_sdk.types import Message
from coordinator import Coordinator
from schemas.keys import KeySpace


async def test_a_direct_request_is_answered_without_touching_the_streams(
    coordinator: Coordinator, settings: Settings, r: aioredis.Redis, keys: KeySpace
) -> None:
    host = Host(settings, name="direct-host")
    agents = [host.agent(f"d{i}", "direct-role") for i in range(3)]
    for agent in agents:

        @agent.on("echo")
        async def echo(payload: Any, msg: Message) -> Any:  # source: <ns>:agent:{dN}:direct
            return {"by": msg.source.split("{")[1].split("}")[0], "got": payload}

        @agent.on("boom")
        async def boom(payload: Any) -> Any:
            raise ValueError("no")

    async with host, Bus(settings) as bus:
        assert await bus.request("d1", "echo", 7, durable=False) == {"by": "d1", "got": 7}
        by_role = await bus.request(role="direct-role", type="echo", payload=1, durable=False)
        assert by_role["by"] in {"d0", "d1", "d2"}
        with pytest.raises(RemoteError) as e:
            await bus.request("d2", "boom", None, durable=False)
        assert e.value.code == "handler_error"
        for name in ("d0", "d1", "d2"):  # nothing went through an inbox
            assert await r.xlen(keys.inbox(name)) == 0
        assert await r.xlen(keys.role_queue("direct-role")) == 0


async def test_a_direct_request_nobody_hears_fails_at_once(
    coordinator: Coordinator, settings: Settings
) -> None:
    async with Bus(settings) as bus:
        with pytest.raises(AgentNotFound, match="does not listen"):
            await bus.request("nobody", "echo", 1, durable=False, timeout=30)
        with pytest.raises(NoResponders):
            await bus.request(role="empty-role", type="echo", payload=1, durable=False)


async def test_a_lone_agent_answers_direct_requests_and_stops_listening_when_it_leaves(
    coordinator: Coordinator, settings: Settings
) -> None:
    agent = Agent("d-lone", "worker", settings=settings)

    @agent.on("echo")
    async def echo(payload: Any) -> Any:
        return payload

    async with Bus(settings) as bus:
        async with agent:
            assert await bus.request("d-lone", "echo", "hi", durable=False) == "hi"
        with pytest.raises(AgentNotFound):
            await bus.request("d-lone", "echo", "hi", durable=False)

"""The user-facing API end to end: ``Agent`` + a real coordinator + real Redis."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from pydantic import BaseModel

from agent_sdk import Agent, Bus, Settings
from agent_sdk.messaging import Message
from coordinator import Coordinator
from schemas.errors import AgentNotFound, NoResponders, RemoteError
from tests.support import wait_for


class Doc(BaseModel):
    text: str


class Summary(BaseModel):
    words: int


async def test_user_api_end_to_end(coordinator: Coordinator, settings: Settings) -> None:
    notes: list[Message] = []
    async with (
        Agent("summarizer-1", "summarizer", settings=settings, max_concurrency=4) as s1,
        Agent("summarizer-2", "summarizer", settings=settings) as s2,
        Agent("client", "client", settings=settings) as c,
    ):
        for agent in (s1, s2):

            @agent.on("summarize")
            async def summarize(payload: Doc, msg: Message) -> Summary:
                return Summary(words=len(payload.text.split()))

            @agent.on("status")
            async def status(payload: Any, msg: Message, name: str = agent.name) -> dict[str, str]:
                return {"name": name}

        @s1.on("note")
        async def note(payload: dict[str, Any], msg: Message) -> None:
            notes.append(msg)

        await c.send("summarizer-1", "note", {"text": "hi"})
        await c.send(role="summarizer", type="summarize", payload={"text": "a b"})
        assert await c.request("summarizer-1", "summarize", {"text": "a b c"}, timeout=5) == {
            "words": 3
        }
        assert await c.request(role="summarizer", type="summarize", payload={"text": "x"}) == {
            "words": 1
        }
        replies = await c.request_many(role="summarizer", type="status", payload={}, timeout=5)
        assert dict(replies) == {
            "summarizer-1": {"name": "summarizer-1"},
            "summarizer-2": {"name": "summarizer-2"},
        }
        assert replies.missing == []
        await wait_for(lambda: notes, timeout=5, message="the note")
        assert notes[0].sender == "client"
        with pytest.raises(RemoteError):
            await c.request("summarizer-2", "summarize", {"nope": 1}, timeout=5)
        with pytest.raises(AgentNotFound):
            await c.send("nobody", "note", {})
        with pytest.raises(NoResponders):
            await c.request_many(role="nobody", type="status", payload={}, timeout=1)


async def test_bus_client_requests_without_registering(
    coordinator: Coordinator, settings: Settings
) -> None:
    async with Agent("echo-1", "echo", settings=settings) as echo, Bus(settings) as bus:

        @echo.on("echo")
        async def handle(payload: Any, msg: Message) -> Any:
            return {"payload": payload, "sender": msg.sender}

        reply = await bus.request("echo-1", "echo", [1], timeout=5)
        assert reply == {"payload": [1], "sender": bus.sender}
        gathered = await bus.request_many(role="echo", type="echo", payload=2, timeout=5)
        assert dict(gathered) == {"echo-1": {"payload": 2, "sender": bus.sender}}


async def test_data_plane_works_while_no_coordinator_runs(
    coordinator_settings: Any, settings: Settings
) -> None:
    got: list[Any] = []
    coordinator = Coordinator(coordinator_settings)
    await coordinator.start()
    try:
        async with (
            Agent("w", "worker", settings=settings) as w,
            Agent("c", "client", settings=settings) as c,
        ):

            @w.on("job")
            async def job(payload: Any) -> Any:
                got.append(payload)
                return payload

            await coordinator.stop()  # every coordinator is gone now
            assert await c.request("w", "job", 1, timeout=5) == 1
            assert await c.request(role="worker", type="job", payload=2, timeout=5) == 2
            await c.send(role="worker", type="job", payload=3)
            await wait_for(lambda: 3 in got, timeout=5)
            await coordinator.start()  # so the agents can leave cleanly
    finally:
        await coordinator.stop()


async def test_load_is_reported_to_the_registry(
    coordinator: Coordinator, settings: Settings
) -> None:
    release = asyncio.Event()
    async with (
        Agent("busy", "worker", settings=settings, max_concurrency=3) as w,
        Agent("c", "client", settings=settings) as c,
    ):

        @w.on("hold")
        async def hold(payload: Any) -> None:
            await release.wait()

        for _ in range(5):
            await c.send("busy", "hold", {})
        await wait_for(lambda: w.load == 3, timeout=5, message="load 3 on the agent")

        async def registry_load() -> bool:
            record = await c.get("busy")
            return record is not None and record.load == 3

        await wait_for(registry_load, timeout=5, message="load 3 in the registry")
        release.set()
        await wait_for(lambda: w.load == 0, timeout=5, message="load back to 0")

"""``bus.watch`` and ``agent.activity`` end to end, with a real coordinator and agents."""

from __future__ import annotations

import asyncio

from agent_sdk.agent import Agent
from agent_sdk.bus import Bus
from agent_sdk.settings import Settings
from coordinator.service import Coordinator
from schemas.events import ActivityType, RegistryEventType


async def test_bus_watch_sees_an_agent_join_and_leave_and_resumes(
    settings: Settings, coordinator: Coordinator
) -> None:
    async with Bus(settings) as bus:
        async with Agent("w-1", "search", settings=settings):
            pass
        async with Agent("w-2", "summarize", settings=settings):
            pass
        seen = []
        # (status changes on the way out are agent_updated events: not asked for here)
        async for event in bus.watch(types=["agent_registered", "agent_deregistered"]):
            seen.append((event.type, event.name, event.role))
            if len(seen) == 4:
                break
        assert seen == [
            (RegistryEventType.AGENT_REGISTERED, "w-1", "search"),
            (RegistryEventType.AGENT_DEREGISTERED, "w-1", "search"),
            (RegistryEventType.AGENT_REGISTERED, "w-2", "summarize"),
            (RegistryEventType.AGENT_DEREGISTERED, "w-2", "summarize"),
        ]
        # filtered by role, resumed from the first event's revision
        first = await anext(aiter(bus.watch()))
        rest = bus.watch(since=first.revision, roles=["summarize"])
        nxt = await asyncio.wait_for(anext(aiter(rest)), 10)
        assert (nxt.type, nxt.name) == (RegistryEventType.AGENT_REGISTERED, "w-2")


async def test_agent_activity_reaches_bus_watch_session(
    settings: Settings, coordinator: Coordinator
) -> None:
    async with Agent("helper", "assist", settings=settings) as agent, Bus(settings) as ui:
        async with agent.activity("chat-1") as act:
            await act.tool_executing("search", {"q": "x"})
        got = []
        async for event in ui.watch_session("chat-1"):
            got.append((event.type, event.agent, event.seq))
            if len(got) == 3:
                break
    assert got == [
        (ActivityType.AGENT_STARTED, "helper", 1),
        (ActivityType.TOOL_EXECUTING, "helper", 2),
        (ActivityType.AGENT_COMPLETED, "helper", 3),
    ]

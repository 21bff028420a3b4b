"""The coordinator's metrics: heartbeats, expiries and registry size, read when collected."""

from __future__ import annotations

from agent_sdk import Agent, Settings
from coordinator import Coordinator
from tests.otel_support import otel
from tests.support import wait_for


async def test_heartbeats_expiries_and_registry_size_are_reported(
    coordinator: Coordinator, settings: Settings
) -> None:
    me = {"agentbus.coordinator.id": coordinator.id}
    ns = {"agentbus.namespace": settings.namespace}
    with otel() as o:

        def point(name: str, attrs: dict[str, str]) -> float | None:
            found = [v for a, v in o.metric_points(name) if a == attrs]
            return found[0] if found else None

        agent = Agent("metered", "m", settings=settings)
        await agent.start()
        await wait_for(lambda: (point("agentbus.heartbeats.processed", me) or 0) >= 2)
        await wait_for(lambda: point("agentbus.registry.size", ns) == 1, message="size 1")
        # an agent that stops heartbeating without leaving is expired by the sweeper
        assert agent._membership is not None
        await agent._membership.stop()
        await wait_for(lambda: point("agentbus.agents.expired", me) == 1, message="expiry")
        await wait_for(lambda: point("agentbus.registry.size", ns) == 0, message="size 0")
        await agent.stop()
    await coordinator.stop()
    # a stopped coordinator's final counts are still exported (the daemon's last export)
    assert point("agentbus.agents.expired", me) == 1

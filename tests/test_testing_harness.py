"""``agent_sdk.testing``: the private bus users run in their own tests."""

from __future__ import annotations

import pytest
import redis

from agent_sdk import Agent, Bus
from agent_sdk.testing import PrivateBus, agentbus_fixture, agentbus_for_tests
from schemas.errors import NoCoordinator

# What a user puts in conftest.py; here one bus for this module, under another fixture name.
private_bus = agentbus_fixture(name="private_bus", scope="module", namespace="harness")


def _reachable(url: str) -> bool:
    client = redis.Redis.from_url(url, socket_connect_timeout=1)
    try:
        return bool(client.ping())
    except redis.ConnectionError:
        return False
    finally:
        client.close()


async def test_async_with_gives_a_working_bus_and_cleans_up() -> None:
    async with agentbus_for_tests(namespace="mine") as bus:
        assert bus.coordinator is not None
        coordinator = bus.coordinator
        assert bus.settings().namespace == "mine"
        async with Agent("echo-1", "echo", settings=bus.settings()) as echo:

            @echo.on("echo")
            async def _echo(payload: dict[str, str]) -> dict[str, str]:
                return {"echo": payload["text"]}

            async with Agent("asker", "client", settings=bus.settings()) as asker:
                assert [r.name for r in await asker.discover(role="echo")] == ["echo-1"]
                reply = await asker.request("echo-1", "echo", {"text": "hi"})
                assert reply == {"echo": "hi"}
        url = bus.url
    assert coordinator.poll() is not None, "the coordinator subprocess outlived the bus"
    assert coordinator.returncode == 0
    assert not _reachable(url), "the private Redis outlived the bus"


def test_sync_with_and_subprocess_env() -> None:
    with agentbus_for_tests() as bus:
        assert bus.env["AGENTBUS_REDIS_URL"] == bus.url
        assert _reachable(bus.url)
        url = bus.url
    assert not _reachable(url)


async def test_the_fixture_factory_gives_a_started_bus(private_bus: PrivateBus) -> None:
    assert private_bus.namespace == "harness"
    async with (
        Agent("w1", "worker", settings=private_bus.settings()),
        Bus(private_bus.settings()) as client,
    ):
        assert [r.name for r in await client.discover(role="worker")] == ["w1"]


def test_a_coordinator_that_cannot_start_is_reported_with_its_output() -> None:
    bus = PrivateBus(coordinator_env={"AGENTBUS_SWEEP_INTERVAL": "-1"})
    with pytest.raises(NoCoordinator) as caught:
        bus.start()
    assert "exited with" in str(caught.value)
    assert "sweep_interval" in str(caught.value)
    assert bus.server is None, "the private Redis was not stopped after the failure"
    assert bus.coordinator is None

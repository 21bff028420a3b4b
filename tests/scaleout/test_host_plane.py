"""What integ's host data plane adds, on a Redis Cluster and under Sentinel: a host starting
many agents at once (group creation and priority probes batched over the send batcher),
agents joining a running host (control entries through the batcher), priorities, direct
requests (sharded channels on a cluster, both ways) and reply lists read with ``BLMPOP``."""

from __future__ import annotations

from typing import Any

import pytest

from agent_sdk import Bus, Host, Settings
from agent_sdk.cluster_lane import command_key
from agent_sdk.connection import make_client
from agent_sdk.errors import AgentNotFound, NoResponders, RemoteError
from agent_sdk.types import Message
from coordinator import Coordinator
from tests.support import wait_for


async def test_a_host_of_agents_spread_over_the_slots(
    scaled: Settings, scaled_coordinator: Coordinator
) -> None:
    host = Host(scaled, name="spread-host")
    names = [f"h{i}" for i in range(12)]  # over every master of the cluster
    got: list[str] = []
    for name in names:
        agent = host.agent(name, "spread")

        @agent.on("echo")
        async def echo(payload: Any, msg: Message, me: str = name) -> Any:
            return {"me": me, "got": payload}

        @agent.on("boom")
        async def boom(payload: Any) -> Any:
            raise ValueError("no")

        @agent.on("note")
        async def note(payload: Any, msg: Message) -> None:
            got.append(payload)

    r = make_client(scaled, decode_responses=True)
    try:
        async with host, Bus(scaled) as bus:
            for name in names:  # durable, through the streams (replies read with BLMPOP)
                assert await bus.request(name, "echo", name) == {"me": name, "got": name}
            for name in names:  # direct: SPUBLISH to the agent, SPUBLISH back on a cluster
                assert await bus.request(name, "echo", 1, durable=False) == {"me": name, "got": 1}
            by_role = await bus.request(role="spread", type="echo", payload=2, durable=False)
            assert by_role["me"] in names
            with pytest.raises(RemoteError):
                await bus.request("h3", "boom", None, durable=False)
            for name in names:
                assert await r.xlen(scaled.keys.inbox(name)) == 1  # the durable request only
            for p in ("low", "critical"):
                await bus.send("h5", "note", p, priority=p)
            await wait_for(lambda: len(got) == 2, timeout=10, message="both notes")

            # an agent added to the running host: its announce goes through the batcher,
            # its groups and priority probes too
            late = host.agent("late-one", "spread")

            @late.on("echo")
            async def late_echo(payload: Any) -> Any:
                return {"me": "late-one", "got": payload}

            @late.on("note")
            async def late_note(payload: Any) -> None:
                got.append(payload)

            await bus.send("late-one", "note", "early", priority="important", queue_if_absent=True)
            await late.start()
            assert await bus.request("late-one", "echo", 3, durable=False) == {
                "me": "late-one",
                "got": 3,
            }
            await wait_for(lambda: "early" in got, timeout=10, message="the queued note")
            await late.stop()
            with pytest.raises(AgentNotFound):
                await bus.request("late-one", "echo", 4, durable=False)
            with pytest.raises(NoResponders):
                await bus.request(role="nobody-here", type="echo", payload=1, durable=False)
    finally:
        await r.aclose()


@pytest.mark.parametrize(
    ("command", "key"),
    [
        (("BLMPOP", 1, 1, "k", "RIGHT", "COUNT", 10), "k"),
        (("LMPOP", 1, "k", "RIGHT"), "k"),
        (("XGROUP", "CREATE", "s", "agent", "0", "MKSTREAM"), "s"),
        (("XINFO", "GROUPS", "s"), "s"),
        (("EVALSHA", "abc", 1, "s", "x"), "s"),
        (("XREADGROUP", "GROUP", "g", "c", "COUNT", 2, "STREAMS", "s", ">"), "s"),
        (("SPUBLISH", "ch", ""), "ch"),
        (("PING",), None),
    ],
)
def test_the_key_that_routes_a_command(command: tuple[Any, ...], key: str | None) -> None:
    assert command_key(command) == key

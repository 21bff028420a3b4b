"""With ``replica_acks``, the coordinators' registry writes are followed by ``WAIT`` on the
connection that ran the script, and an announce is answered only after it: an agent's start
does not return while the registry's replica is stopped, and once it returns, the replica
holds the record."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from typing import Any

import pytest
import redis

from agent_sdk import Agent, Settings
from coordinator import Coordinator
from tests.scaleout.conftest import coordinator_settings_for
from tests.support import wait_for
from tests.topologies import LocalCluster, LocalSentinel

pytestmark = pytest.mark.timeout(60)


def _replicas_of(topology: LocalCluster | LocalSentinel, key: str) -> tuple[int, list[Any]]:
    """The port of the master holding ``key`` and every replica server copying it (after the
    failover tests a master may have two: a cluster migrates replicas to orphaned masters)."""
    master = topology.master_of(key) if isinstance(topology, LocalCluster) else topology.master()
    c = redis.Redis(port=master.port, decode_responses=True)
    try:
        info: Any = c.info("replication")
    finally:
        c.close()
    ports = {int(info[f"slave{i}"]["port"]) for i in range(int(info["connected_slaves"]))}
    assert ports, f"the master on {master.port} has no replica"
    return master.port, [s for s in topology.servers if s.port in ports]


def _clients_in_wait(port: int) -> int:
    c = redis.Redis(port=port, decode_responses=True)
    try:
        return sum(1 for x in c.client_list() if x.get("cmd") == "wait")
    finally:
        c.close()


def _has_record(port: int, key: str) -> bool:
    c = redis.Redis(port=port, decode_responses=True)
    with contextlib.suppress(redis.ResponseError):  # not a cluster node
        c.execute_command("READONLY")  # type: ignore[no-untyped-call]  # a cluster replica
    try:
        return bool(c.exists(key))
    finally:
        c.close()


async def test_an_announce_is_answered_once_a_replica_holds_it(
    topology: LocalCluster | LocalSentinel, scaled: Settings
) -> None:
    settings = scaled.model_copy(update={"replica_acks": 1, "replica_ack_timeout": 30.0})
    keys = settings.keys
    master_port, replicas = _replicas_of(topology, keys.agents())
    async with Coordinator(coordinator_settings_for(settings)):
        agent = Agent("waited", "svc", settings=scaled)  # no WAIT of its own: the coordinator's
        pids = [replica.process.pid for replica in replicas]
        for pid in pids:
            os.kill(pid, signal.SIGSTOP)
        start = asyncio.create_task(agent.start())
        try:
            try:
                await wait_for(
                    lambda: _clients_in_wait(master_port) > 0,
                    message="the coordinator waiting for the stopped replicas",
                )
                assert not start.done(), "announce answered before a replica held it"
            finally:
                for pid in pids:
                    os.kill(pid, signal.SIGCONT)
                await start
            assert any(_has_record(r.port, keys.record("waited")) for r in replicas)
        finally:
            await agent.stop()

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
from pydantic import SecretStr

from agent_sdk import Host, Settings
from coordinator import Coordinator
from tests.scaleout.conftest import coordinator_settings_for
from tests.support import wait_for
from tests.topologies import LocalCluster, LocalSentinel

pytestmark = pytest.mark.timeout(60)


def _role(port: int) -> str:
    c = redis.Redis(port=port, decode_responses=True)
    try:
        info: Any = c.info("replication")
    finally:
        c.close()
    return str(info["role"])


def _replicas(topology: LocalCluster | LocalSentinel) -> tuple[list[int], list[Any]]:
    """The ports of the masters and every running replica server. Stopped together, no replica
    can acknowledge a write, and none can be promoted meanwhile: on a loaded machine a cluster
    can fail a master over, and the registry's slot would move to a master nobody watches."""
    running = [s for s in topology.servers if s.running]
    replicas = [s for s in running if _role(s.port) == "slave"]
    assert replicas, "no replica is running"
    return [s.port for s in running if s not in replicas], replicas


def topology_master(topology: LocalCluster | LocalSentinel, key: str) -> int:
    master = topology.master_of(key) if isinstance(topology, LocalCluster) else topology.master()
    return master.port


def _clients_in_wait(ports: list[int]) -> int:
    waiting = 0
    for port in ports:
        c = redis.Redis(port=port, decode_responses=True)
        try:
            waiting += sum(1 for x in c.client_list() if x.get("cmd") == "wait")
        finally:
            c.close()
    return waiting


def _control_len(port: int, key: str) -> int:
    c = redis.Redis(port=port, socket_timeout=2)
    try:
        return int(c.xlen(key))
    except redis.RedisError:
        return -1
    finally:
        c.close()


def _has_record(port: int, key: str) -> bool:
    c = redis.Redis(port=port, decode_responses=True)
    with contextlib.suppress(redis.ResponseError):  # not a cluster node
        c.execute_command("READONLY")  # type: ignore[no-untyped-call]  # a cluster replica
    try:
        return bool(c.exists(key))
    except redis.exceptions.MovedError:  # a replica of another master: not its slot
        return False
    finally:
        c.close()


async def test_an_announce_is_answered_once_a_replica_holds_it(
    topology: LocalCluster | LocalSentinel, scaled: Settings
) -> None:
    settings = scaled.model_copy(update={"replica_acks": 1, "replica_ack_timeout": 30.0})
    keys = settings.keys
    masters, replicas = _replicas(topology)
    registry = topology_master(topology, keys.agents())  # asked now: a stopped node answers nothing
    if isinstance(topology, LocalCluster):
        # An earlier failover test may have left a replica among the URL's seed nodes; the
        # agent's client must find the cluster through nodes that answer while replicas stop.
        seeds = ",".join(f"127.0.0.1:{port}" for port in masters)
        scaled = scaled.model_copy(update={"redis_url": SecretStr(f"redis+cluster://{seeds}")})
    async with (
        Coordinator(coordinator_settings_for(settings)),
        Host(scaled, name="waiting") as host,
    ):
        # the host's connections, reply list and pub/sub are open before the replicas freeze:
        # what is under test is the announcement, not connecting to a cluster with frozen nodes
        agent = host.agent("waited", "svc")  # no WAIT of its own: the coordinator's
        pids = [replica.process.pid for replica in replicas]
        for pid in pids:
            os.kill(pid, signal.SIGSTOP)
        start = asyncio.create_task(agent.start())
        try:
            try:
                try:
                    await wait_for(
                        lambda: _clients_in_wait(masters) > 0,
                        message="the coordinator waiting for the stopped replicas",
                    )
                except AssertionError as e:  # what the deployment looked like then
                    ports = [r.port for r in replicas]
                    raise AssertionError(
                        f"{e}; start done: {start.done()}, masters {masters}, stopped {ports}, "
                        f"registry on {registry}, control entries "
                        f"{_control_len(registry, keys.control())}"
                    ) from None
                assert not start.done(), "announce answered before a replica held it"
            finally:
                for pid in pids:
                    os.kill(pid, signal.SIGCONT)
                await start
            assert any(_has_record(r.port, keys.record("waited")) for r in replicas)
        finally:
            await agent.stop()

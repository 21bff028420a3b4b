"""Fixtures of the scale-out suite: one local Redis Cluster (3 masters + 3 replicas) and one
Sentinel deployment (master, replica, 3 sentinels) per session, each started on first use;
a namespace per test, its keys deleted afterwards on every master.

``topology`` is parametrised over both, so each scenario runs on a cluster and under Sentinel.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator

import pytest
import redis

from agent_sdk import Settings
from coordinator import Coordinator, CoordinatorSettings
from tests.support import fast_coordinator_settings
from tests.topologies import LocalCluster, LocalSentinel


@pytest.fixture(scope="session")
def local_cluster() -> Iterator[LocalCluster]:
    cluster = LocalCluster().start()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="session")
def local_sentinel() -> Iterator[LocalSentinel]:
    deployment = LocalSentinel().start()
    try:
        yield deployment
    finally:
        deployment.stop()


@pytest.fixture(params=["cluster", "sentinel"])
def topology(request: pytest.FixtureRequest) -> LocalCluster | LocalSentinel:
    name: str = request.param
    fixture = "local_cluster" if name == "cluster" else "local_sentinel"
    deployment: LocalCluster | LocalSentinel = request.getfixturevalue(fixture)
    return deployment


def _delete_namespace(ports: list[int], ns: str) -> None:
    for port in ports:
        c = redis.Redis(port=port, socket_timeout=2)
        try:
            if c.info("replication")["role"] != "master":
                continue
            for key in c.scan_iter(match=f"{ns}:*", count=1000):
                c.delete(key)
        except redis.RedisError:
            continue  # a node killed by the test
        finally:
            c.close()


def scaled_settings(url: str, ns: str) -> Settings:
    return Settings(
        redis_url=url,
        namespace=ns,
        heartbeat_interval=0.1,
        ttl=0.5,
        announce_timeout=10.0,
        request_timeout=10.0,
        claim_interval=0.2,
        shutdown_grace=2.0,
    )


@pytest.fixture
def scaled(topology: LocalCluster | LocalSentinel) -> Iterator[Settings]:
    """Fast-liveness settings for a fresh namespace on ``topology``."""
    ns = f"t{uuid.uuid4().hex[:10]}"
    yield scaled_settings(topology.url, ns)
    _delete_namespace([s.port for s in topology.servers], ns)


def coordinator_settings_for(settings: Settings) -> CoordinatorSettings:
    return fast_coordinator_settings(settings)


@pytest.fixture
async def scaled_coordinator(scaled: Settings) -> AsyncIterator[Coordinator]:
    async with Coordinator(coordinator_settings_for(scaled)) as c:
        yield c

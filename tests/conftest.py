"""Shared fixtures: one throwaway redis-server per test session, one namespace per test.

Tests never touch the Redis on port 6379 and never FLUSHALL: each test gets a fresh namespace
and its keys are deleted afterwards.
"""

from __future__ import annotations

import asyncio
import os
import sys
import threading
import uuid
from collections.abc import AsyncIterator, Iterator

import pytest
import redis
import redis.asyncio as aioredis

from agent_sdk.embedded import RedisServer, find_redis_server, server_version
from agent_sdk.settings import Settings
from coordinator import Coordinator, CoordinatorSettings
from schemas.keys import KeySpace
from tests.support import fast_coordinator_settings

# The suite runs on two pytest-xdist workers (pyproject's addopts). execnet starts each worker
# with COLUMNS=80 and LINES=24: the CLI would then render its tables 80 columns wide, as for a
# terminal, where the tests expect what it prints to a pipe (200 columns unless COLUMNS is set).
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.pop("COLUMNS", None)
    os.environ.pop("LINES", None)


def _dump_pending_tasks(test: str) -> None:
    """What every unfinished asyncio task awaits: pytest-timeout shows only the thread stacks,
    where a hung async test is just an event loop polling."""
    tasks = [t for t in list(asyncio.tasks._all_tasks) if not t.done()]  # type: ignore[attr-defined]
    print(f"\n+++ {test} is about to time out; {len(tasks)} pending task(s):", file=sys.stderr)
    for task in tasks:
        task.print_stack(limit=12, file=sys.stderr)


@pytest.fixture(autouse=True)
def _task_dump_before_timeout(request: pytest.FixtureRequest) -> Iterator[None]:
    """Ten seconds before pytest-timeout fails a test, print the stacks of pending tasks."""
    limit = float(request.config.getini("timeout") or 0)
    if limit <= 10:
        yield
        return
    timer = threading.Timer(limit - 10, _dump_pending_tasks, args=(request.node.nodeid,))
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    binary = find_redis_server()
    # Redis >= 7 refuses DEBUG unless enabled; 6.2 (the embedded extra) has no such option.
    extra = ("--enable-debug-command", "local") if server_version(binary) >= (7, 0, 0) else ()
    server = RedisServer(binary=binary, extra_args=extra)
    with server:
        yield server


@pytest.fixture
def namespace(redis_server: RedisServer) -> Iterator[str]:
    ns = f"t{uuid.uuid4().hex[:10]}"
    yield ns
    if not redis_server.running:
        return
    client = redis.Redis(port=redis_server.port)
    try:
        batch = list(client.scan_iter(match=f"{ns}:*", count=1000))
        for i in range(0, len(batch), 500):
            client.delete(*batch[i : i + 500])
    finally:
        client.close()


@pytest.fixture
def keys(namespace: str) -> KeySpace:
    return KeySpace(namespace)


@pytest.fixture
def settings(redis_server: RedisServer, namespace: str) -> Settings:
    """Fast liveness settings for tests (the smallest the product allows)."""
    return Settings(
        redis_url=redis_server.url,
        namespace=namespace,
        heartbeat_interval=0.1,
        ttl=0.5,
        announce_timeout=5.0,
        request_timeout=5.0,
        claim_interval=0.2,
        shutdown_grace=2.0,
    )


@pytest.fixture
async def r(redis_server: RedisServer) -> AsyncIterator[aioredis.Redis]:
    """A raw asyncio client (decoded strings) to inspect what agentbus wrote."""
    # No socket timeout, as agentbus's own clients: with one, redis-py writes each command inside
    # asyncio.wait_for, which on Python 3.11 can drop a cancellation (docs/RELIABILITY.md).
    client = aioredis.Redis(port=redis_server.port, decode_responses=True, socket_timeout=None)
    yield client
    await client.aclose()


@pytest.fixture
def coordinator_settings(settings: Settings) -> CoordinatorSettings:
    """``settings`` plus fast coordinator loops (sweep every 20 ms, claim after 0.5 s)."""
    return fast_coordinator_settings(settings)


@pytest.fixture
async def coordinator(coordinator_settings: CoordinatorSettings) -> AsyncIterator[Coordinator]:
    """A started in-process coordinator on the test namespace; stopped afterwards."""
    async with Coordinator(coordinator_settings) as c:
        yield c

"""What agentbus changes in redis-py's connection pools, for ``agent_sdk.connection``.

A bounded pool must make a caller wait for a free connection, never fail because others hold
them all: a host carries thousands of agents on a handful of connections, and after an outage
they all come back at once. redis-py's single-server ``BlockingConnectionPool`` waits; its
Sentinel pool and its cluster's per-node pools raise "Too many connections" instead. Under
Sentinel a reconnection inside a command's retries also goes back to the address the connection
had, which after a failover is the dead master's. The classes here fix both:

* ``Sentinels``: redis-py's ``Sentinel`` whose master discovery may run many times at once;
* ``BlockingSentinelPool``: the Sentinel pool with the blocking pool's waiting;
* ``MasterConnection`` (``MasterSSLConnection`` over TLS): asks the sentinels where the master
  is before every socket it opens;
* ``WaitingCluster``: a ``RedisCluster`` whose commands wait for a connection when a node's
  pool is full, until another command of the client ends (at most ``pool_timeout``).

Measured with ``python -m bench.scaleout_targets --only failover`` (docs/SCALING.md, run C) and
tested in ``tests/scaleout``. They rely on redis-py ≥ 5.0's classes (``_connect`` is its own);
pinned by the dependency range in pyproject.toml.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from typing import Any

from redis.asyncio.cluster import RedisCluster
from redis.asyncio.connection import BlockingConnectionPool, SSLConnection
from redis.asyncio.sentinel import (
    MasterNotFoundError,
    Sentinel,
    SentinelConnectionPool,
    SentinelManagedConnection,
)
from redis.exceptions import ConnectionError, MaxConnectionsError, ResponseError, TimeoutError

__all__ = [
    "BlockingSentinelPool",
    "MasterConnection",
    "MasterSSLConnection",
    "Sentinels",
    "WaitingCluster",
]


class Sentinels(Sentinel):
    """redis-py's ``Sentinel`` whose master discovery may run many times at once.

    redis-py moves the sentinel that named the master to the front of its list by swapping two
    slots, one of them read before an ``await``. Discoveries running at once (every connection a
    host opens asks, and after a failover they all reconnect together) then write one sentinel
    into two slots and drop another from the list: never asked again, and never closed, so its
    sockets outlive the client. Here each discovery asks the sentinels of a snapshot of the
    list and moves the one that answered to the front by identity, with no ``await`` between
    reading and writing the list."""

    async def discover_master(self, service_name: str) -> tuple[str, int]:
        errors: list[str] = []
        for sentinel in list(self.sentinels):
            try:
                masters: dict[str, Any] = await sentinel.sentinel_masters()  # type: ignore[assignment]
            except (ConnectionError, ResponseError, TimeoutError) as e:
                errors.append(f"{sentinel} - {e!r}")
                continue
            state = masters.get(service_name)
            if state and self.check_master_state(state, service_name):
                self.sentinels.remove(sentinel)
                self.sentinels.insert(0, sentinel)
                forced = getattr(self, "_force_master_ip", None)  # redis-py >= 5.1
                return (state["ip"] if forced is None else forced), state["port"]
        detail = f": {', '.join(errors)}" if errors else ""
        raise MasterNotFoundError(f"No master found for {service_name!r}{detail}")


class BlockingSentinelPool(SentinelConnectionPool, BlockingConnectionPool):
    """redis-py's Sentinel pool with the blocking pool's waiting: past ``max_connections`` a
    caller waits up to ``timeout`` for a connection instead of failing with "Too many
    connections" (a host holds one command connection; after a failover its agents settling
    at once, or its read loop, failed with it)."""


class MasterConnection(SentinelManagedConnection):
    """A connection to a Sentinel deployment's master that asks the sentinels where the master
    is before every socket it opens.

    redis-py asks them only in ``connect()``. A command that fails in flight (the master was
    killed) is retried by reconnecting through ``connect_check_health``, which reuses the
    address the connection had: the dead master's, refused on every attempt of the retry
    policy, for seconds after the sentinels named a new master (a coordinator's control read
    came back 2-3 s after its sweeper, long enough for a fleet's heartbeats to miss the grace
    after a failover)."""

    _resolved = False

    async def connect_to(self, address: tuple[str, int]) -> None:
        self._resolved = True  # redis-py's own path: the address was just asked for
        try:
            await super().connect_to(address)  # type: ignore[no-untyped-call]
        finally:
            self._resolved = False

    async def _connect(self) -> None:
        if not self._resolved and self.connection_pool.is_master:
            self.host, self.port = await self.connection_pool.get_master_address()
        await super()._connect()  # type: ignore[no-untyped-call]


class MasterSSLConnection(MasterConnection, SSLConnection):
    """``MasterConnection`` over TLS (``rediss+sentinel://``)."""


class WaitingCluster(RedisCluster):
    """A ``RedisCluster`` whose commands wait for a connection when a node's pool is full.

    redis-py's cluster takes connections synchronously and raises ``MaxConnectionsError`` past
    ``max_connections`` per node: a host's agents settling at once on stop failed with it. Here
    such a command queues; each command that ends wakes the first in the queue, which tries
    again (a woken command that still finds its node full passes the wake-up on, and queues
    again at the front). After ``pool_timeout`` seconds it fails as before. Pipelines and held
    connections (``agent_sdk.cluster_lane``) are not covered: they take their connections
    outside ``execute_command``."""

    def __init__(self, *args: Any, pool_timeout: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._pool_timeout = pool_timeout
        self._waiters: deque[asyncio.Future[None]] = deque()

    async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        """redis-py's own method, with its signature: every typed command of the client
        (``xadd``, ``evalsha``...) calls it, so users never call this one by name."""
        give_up: float | None = None
        while True:
            try:
                result = await super().execute_command(*args, **kwargs)
            except MaxConnectionsError:
                # raised before any await: no command can have ended since, unseen
                now = time.monotonic()
                woken = give_up is not None
                if give_up is None:
                    give_up = now + self._pool_timeout
                else:
                    self._wake()  # woken for a node that is still full: pass it on
                if now >= give_up:
                    raise
                await self._wait(give_up - now, front=woken)
                continue
            except BaseException:
                self._wake()
                raise
            self._wake()
            return result

    async def _wait(self, seconds: float, *, front: bool) -> None:
        waiter = asyncio.get_running_loop().create_future()
        if front:
            self._waiters.appendleft(waiter)
        else:
            self._waiters.append(waiter)
        try:
            async with asyncio.timeout(seconds):
                await waiter
        except TimeoutError:
            raise MaxConnectionsError(
                f"no connection to a node was free within {self._pool_timeout:g}s"
            ) from None
        finally:
            if not waiter.done():
                waiter.cancel()

    def _wake(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

"""Redis clients for agentbus, and the boundary where redis-py errors become ours.

``make_client`` returns an asyncio client whose commands retry connection errors with
exponential backoff (redis-py's own retry, which reconnects). The URL picks the topology
(``agent_sdk.topology``): one server (``redis.asyncio.Redis``), a Redis Cluster
(``redis.asyncio.RedisCluster``: redirections and topology refreshes are redis-py's) or a
Sentinel deployment (a ``Redis`` over a blocking ``SentinelConnectionPool``, whose connections
ask the sentinels for the master before every socket they open and drop a demoted one).

A ``RedisCluster`` is not a subclass of ``Redis``: it is returned typed as ``Redis`` because it
offers the same commands, scripts and pipelines agentbus uses. The few places that need more
(a held connection, pub/sub, ``MULTI``) check ``is_cluster`` and take the cluster's path
(``agent_sdk.cluster_lane``, ``agent_sdk.messaging.topics``). No ``socket_timeout`` is set: it
adds cost to every call and blocking reads carry their own timeouts. Errors that survive the
retries are raised as ``ConnectionFailed`` by ``redis_errors()``, naming the URL (password hidden);
a refused credential or command (never retried) as ``AuthFailed`` / ``PermissionDenied``.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, cast

import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, ClusterPipeline, RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import (
    AuthenticationError,
    AuthorizationError,
    NoPermissionError,
    RedisError,
    ResponseError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from agent_sdk.pools import (
    BlockingSentinelPool,
    MasterConnection,
    MasterSSLConnection,
    Sentinels,
    WaitingCluster,
)
from agent_sdk.settings import Settings
from agent_sdk.topology import Topology
from schemas.errors import AuthFailed, ConnectionFailed, PermissionDenied

__all__ = [
    "ACCESS_ERRORS",
    "CONNECTION_ERRORS",
    "access_error",
    "is_cluster",
    "make_client",
    "node_client",
    "publish_command",
    "queue_ring",
    "redis_errors",
]

log = logging.getLogger("agentbus.connection")

#: Errors after which a background loop should back off and try again.
CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    RedisConnectionError,
    RedisTimeoutError,
    ConnectionError,
    OSError,
)
#: redis-py errors that say the credential or the command was refused: never retried.
ACCESS_ERRORS: tuple[type[BaseException], ...] = (
    AuthenticationError,
    AuthorizationError,
    NoPermissionError,
)


#: What Redis says when a script runs a command its caller's ACL user may not run.
_SCRIPT_DENIED = "user executing the script can't run"


def _retryable(error: Exception) -> bool:
    """A wrong or missing password is not a network problem: fail at once, do not reconnect."""
    return not isinstance(error, ACCESS_ERRORS)


def _retry(settings: Settings) -> Retry:
    return Retry(
        ExponentialWithJitterBackoff(base=0.05, cap=settings.retry_max_backoff),
        settings.retry_attempts,
        supported_errors=(RedisConnectionError, RedisTimeoutError),
        is_retryable=_retryable,
    )


def _common(settings: Settings, decode_responses: bool) -> dict[str, Any]:
    return {
        "decode_responses": decode_responses,
        "socket_timeout": None,
        "socket_connect_timeout": settings.connect_timeout,
        "socket_keepalive": True,
        "client_name": f"agentbus:{settings.namespace}",
    }


def _credentials(settings: Settings) -> dict[str, Any]:
    """Who to connect as: the settings' user and password (``AGENTBUS_REDIS_USERNAME``,
    ``..._PASSWORD``, ``..._PASSWORD_FILE``) over the URL's, and the TLS options."""
    target = settings.target
    password = settings.password()
    return {
        "username": settings.redis_username or target.username,
        "password": target.password if password is None else password,
        **({"ssl": True, **settings.tls_options()} if target.tls else {}),
    }


def make_client(
    settings: Settings, *, decode_responses: bool = False, max_connections: int | None = None
) -> aioredis.Redis:
    """An asyncio Redis client configured from ``settings`` (not yet connected).

    Its pool blocks when all ``settings.max_connections`` connections are busy (a caller waits
    up to ``settings.pool_timeout`` for one) instead of failing with "Too many connections", so
    hundreds of concurrent sends share a bounded number of sockets; on a cluster the bound is
    per node (``agent_sdk.pools``: what redis-py's Sentinel and cluster pools lack).
    """
    target = settings.target
    size = max_connections or settings.max_connections
    if target.topology is Topology.CLUSTER:
        cluster = WaitingCluster(
            startup_nodes=[ClusterNode(host, port) for host, port in target.nodes],
            max_connections=size,
            pool_timeout=settings.pool_timeout,
            retry=_retry(settings),
            **_credentials(settings),
            **_common(settings, decode_responses),
        )
        return cast(aioredis.Redis, cluster)
    if target.topology is Topology.SENTINEL:
        assert target.master is not None
        common = _common(settings, decode_responses)
        credentials = _credentials(settings)
        # the sentinels are reached with the URL's credentials (AGENTBUS_REDIS_USERNAME and
        # ..._PASSWORD name the process's user on the data nodes, which sentinels do not hold)
        sentinel_auth = {"username": target.username, "password": target.password}
        sentinel = Sentinels(
            list(target.nodes),
            sentinel_kwargs={
                **credentials,
                **sentinel_auth,
                "socket_connect_timeout": settings.connect_timeout,
            },
            **credentials,
        )
        client: aioredis.Redis = sentinel.master_for(
            target.master,
            redis_class=_SentinelMaster,
            connection_pool_class=BlockingSentinelPool,
            connection_class=MasterSSLConnection if target.tls else MasterConnection,
            db=target.db,
            max_connections=size,
            timeout=settings.pool_timeout,
            retry=_retry(settings),
            health_check_interval=30,
            **common,
        )
        return client
    auth: dict[str, Any] = {}  # the URL's own credentials, unless the settings name others
    if settings.redis_username is not None:
        auth["username"] = settings.redis_username
    if (password := settings.password()) is not None:
        auth["password"] = password
    pool = aioredis.BlockingConnectionPool.from_url(
        settings.url,
        **auth,
        **settings.tls_options(),
        max_connections=size,
        timeout=settings.pool_timeout,
        retry=_retry(settings),
        health_check_interval=30,
        **_common(settings, decode_responses),
    )
    return aioredis.Redis.from_pool(pool)


class _SentinelMaster(aioredis.Redis):
    """The master's client of a Sentinel deployment; closing it also closes the connections
    its pool opened to the sentinels (redis-py leaves them open)."""

    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        try:
            await super().aclose(close_connection_pool)
        finally:  # each sentinel closed, whatever failed before it
            manager = getattr(self.connection_pool, "sentinel_manager", None)
            for sentinel in getattr(manager, "sentinels", ()):
                with contextlib.suppress(Exception):
                    await sentinel.aclose()


def is_cluster(client: Any) -> bool:
    """Whether ``client`` (from ``make_client``) talks to a Redis Cluster."""
    return isinstance(client, RedisCluster)


def publish_command(client: Any) -> str:
    """How to ring a doorbell (a channel in its stream's slot): ``SPUBLISH`` on a cluster, so
    the message stays on the shard that owns the slot, ``PUBLISH`` on one server (Redis 6.2
    has no sharded pub/sub; a cluster of 6.2 nodes is not supported)."""
    return "SPUBLISH" if is_cluster(client) else "PUBLISH"


def queue_ring(pipe: Any, channel: str, data: str = "") -> None:
    """Queue a doorbell ring on ``pipe``: ``SPUBLISH`` in a cluster's pipeline, else
    ``PUBLISH`` (see ``publish_command``)."""
    if isinstance(pipe, ClusterPipeline):
        pipe.spublish(channel, data)
    else:
        pipe.publish(channel, data)


def node_client(
    settings: Settings, host: str, port: int, *, decode_responses: bool = False
) -> aioredis.Redis:
    """A plain client to one node of a cluster (its pub/sub connections: sharded channels are
    subscribed on the node that owns their slot)."""
    return aioredis.Redis(
        host=host,
        port=port,
        retry=_retry(settings),
        **_credentials(settings),
        **_common(settings, decode_responses),
    )


@contextmanager
def redis_errors(settings: Settings, doing: str) -> Iterator[None]:
    """Re-raise redis-py connection errors as ``ConnectionFailed`` saying what and where."""
    try:
        yield
    except ACCESS_ERRORS as e:
        raise access_error(settings, doing, e) from e
    except ResponseError as e:
        if _SCRIPT_DENIED in str(e):  # a command a script ran was refused by the ACL
            raise access_error(settings, doing, NoPermissionError(str(e))) from e
        raise _failed(settings, doing, e) from e
    except CONNECTION_ERRORS as e:
        raise ConnectionFailed(
            f"cannot reach Redis at {settings.display_url} while {doing}: {e}",
            details={"url": settings.display_url, "namespace": settings.namespace},
        ) from e
    except RedisError as e:
        raise _failed(settings, doing, e) from e


def _failed(settings: Settings, doing: str, e: BaseException) -> ConnectionFailed:
    return ConnectionFailed(
        f"Redis at {settings.display_url} failed while {doing}: {e}",
        details={"url": settings.display_url, "namespace": settings.namespace},
    )


def access_error(settings: Settings, doing: str, e: BaseException) -> AuthFailed | PermissionDenied:
    """``AuthFailed`` or ``PermissionDenied`` for a refusal by Redis, with a hint."""
    details = {"url": settings.display_url, "namespace": settings.namespace}
    if isinstance(e, NoPermissionError):
        return PermissionDenied(
            f"Redis at {settings.display_url} refused a command while {doing}: {e}; the ACL user "
            "may not do this (check the policy: agentbus acl show)",
            details=details,
        )
    user = settings.redis_username or "the URL's user (or default)"
    return AuthFailed(
        f"Redis at {settings.display_url} refused the credential of {user} while {doing}: {e}; "
        "set AGENTBUS_REDIS_PASSWORD or AGENTBUS_REDIS_PASSWORD_FILE (and "
        "AGENTBUS_REDIS_USERNAME)",
        details=details,
    )

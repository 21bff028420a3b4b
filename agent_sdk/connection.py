"""Redis clients for agentbus, and the boundary where redis-py errors become ours.

``make_client`` returns an asyncio client whose commands retry connection errors with
exponential backoff (redis-py's own retry, which reconnects). No ``socket_timeout`` is set: it
adds cost to every call and blocking reads carry their own timeouts. Errors that survive the
retries are raised as ``ConnectionFailed`` by ``redis_errors()``, naming the URL (password hidden).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from agent_sdk.settings import Settings
from schemas.errors import ConnectionFailed

__all__ = ["CONNECTION_ERRORS", "make_client", "redis_errors"]

log = logging.getLogger("agentbus.connection")

#: Errors after which a background loop should back off and try again.
CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    RedisConnectionError,
    RedisTimeoutError,
    ConnectionError,
    OSError,
)


def make_client(
    settings: Settings, *, decode_responses: bool = False, max_connections: int | None = None
) -> aioredis.Redis:
    """An asyncio Redis client configured from ``settings`` (not yet connected).

    Its pool blocks when all ``settings.max_connections`` connections are busy (a caller waits
    up to ``settings.pool_timeout`` for one) instead of failing with "Too many connections",
    so hundreds of concurrent sends share a bounded number of sockets.
    """
    retry = Retry(
        ExponentialWithJitterBackoff(base=0.05, cap=settings.retry_max_backoff),
        settings.retry_attempts,
        supported_errors=(RedisConnectionError, RedisTimeoutError),
    )
    pool = aioredis.BlockingConnectionPool.from_url(
        settings.url,
        max_connections=max_connections or settings.max_connections,
        timeout=settings.pool_timeout,
        decode_responses=decode_responses,
        socket_timeout=None,
        socket_connect_timeout=settings.connect_timeout,
        socket_keepalive=True,
        retry=retry,
        health_check_interval=30,
        client_name=f"agentbus:{settings.namespace}",
    )
    return aioredis.Redis.from_pool(pool)


@contextmanager
def redis_errors(settings: Settings, doing: str) -> Iterator[None]:
    """Re-raise redis-py connection errors as ``ConnectionFailed`` saying what and where."""
    try:
        yield
    except CONNECTION_ERRORS as e:
        raise ConnectionFailed(
            f"cannot reach Redis at {settings.display_url} while {doing}: {e}",
            details={"url": settings.display_url, "namespace": settings.namespace},
        ) from e
    except RedisError as e:
        raise ConnectionFailed(
            f"Redis at {settings.display_url} failed while {doing}: {e}",
            details={"url": settings.display_url, "namespace": settings.namespace},
        ) from e

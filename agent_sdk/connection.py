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
from redis.exceptions import (
    AuthenticationError,
    AuthorizationError,
    NoPermissionError,
    RedisError,
    ResponseError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from agent_sdk.settings import Settings
from schemas.errors import AuthFailed, ConnectionFailed, PermissionDenied

__all__ = ["ACCESS_ERRORS", "CONNECTION_ERRORS", "access_error", "make_client", "redis_errors"]

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
        is_retryable=_retryable,
    )
    auth: dict[str, str] = {}
    if settings.redis_username is not None:
        auth["username"] = settings.redis_username
    password = settings.password()
    if password is not None:
        auth["password"] = password
    pool = aioredis.BlockingConnectionPool.from_url(
        settings.url,
        **auth,
        **settings.tls_options(),
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

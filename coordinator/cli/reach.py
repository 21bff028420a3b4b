"""Fail fast when nothing answers at the Redis URL: one attempt, no retries, and a hint.

The SDK's clients retry a refused connection with backoff (``retry_attempts``, seconds in all):
right for an agent riding out a Redis restart, wrong for a person who typed a wrong port. So
before a CLI command talks to Redis it connects once (``reach``); a refusal, a timeout or an
unknown host ends the command at once with one line naming the URL and what to do. Anything
else (a password refused, a server that answers oddly) is left to the command itself, which
reports it in its own words.

The default URL is Redis's own port, 6379; ``agentbus up`` serves a bus on 6390 (or any free
port) and prints the URL to export. The hint says so when the default was used.
"""

from __future__ import annotations

from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry

from agent_sdk.connection import ACCESS_ERRORS, access_error
from agent_sdk.settings import Settings
from agent_sdk.topology import Topology
from schemas.errors import ConnectionFailed

__all__ = ["UP_PORT", "UP_URL", "default_url_note", "reach", "unreachable"]

#: The port ``agentbus up`` serves a bus on unless it is busy (next to Redis's 6379).
UP_PORT = 6390
#: The URL it then prints.
UP_URL = f"redis://127.0.0.1:{UP_PORT}/0"


def default_url_note(given: bool) -> str:
    """For a message about an empty result: a reminder of ``agentbus up``'s URL when the
    default URL (another Redis, maybe) was used."""
    if given:
        return ""
    return (
        f" (the default URL; a bus started by `agentbus up` is at {UP_URL} unless it printed "
        "another: export AGENTBUS_REDIS_URL)"
    )


def unreachable(settings: Settings, reason: str, *, given: bool) -> ConnectionFailed:
    """The one-line error for a URL nothing answers at, with what to do about it."""
    url = settings.display_url
    if given:
        hint = (
            "is Redis running there? `agentbus up` starts a private one with a coordinator and "
            "prints the URL to use"
        )
    else:
        hint = (
            "this is the default URL (no --redis-url or AGENTBUS_REDIS_URL given); "
            f"`agentbus up` serves a bus at {UP_URL} (or prints another URL when that port is "
            f"busy): export AGENTBUS_REDIS_URL={UP_URL}, or pass --redis-url"
        )
    return ConnectionFailed(
        f"cannot reach Redis at {url}: {reason}; {hint}",
        details={"url": url, "namespace": settings.namespace},
    )


def _clients(settings: Settings) -> list[redis.Redis]:
    """One client for one server; one per seed node of a cluster or per sentinel (any one
    answering is enough)."""
    common: dict[str, Any] = {
        "socket_connect_timeout": settings.connect_timeout,
        "socket_timeout": settings.connect_timeout,
        "retry": Retry(NoBackoff(), 0),
        **settings.tls_options(),
    }
    target = settings.target
    if target.topology is Topology.SINGLE:
        auth: dict[str, Any] = {}
        if settings.redis_username is not None:
            auth["username"] = settings.redis_username
        if (password := settings.password()) is not None:
            auth["password"] = password
        return [redis.Redis.from_url(settings.url, **auth, **common)]
    user, password = target.username, target.password  # the sentinels': the URL's
    if target.topology is Topology.CLUSTER:
        user = settings.redis_username or user
        password = settings.password() or password
    return [
        redis.Redis(
            host=host, port=port, username=user, password=password, ssl=target.tls, **common
        )
        for host, port in target.nodes
    ]


def reach(settings: Settings, *, given: bool) -> None:
    """Connect to ``settings``' Redis once and ``PING`` it (no retries); raise ``unreachable``
    when nothing answers. ``given``: the URL came from the user (else it is the default)."""
    clients = _clients(settings)
    try:
        failure: BaseException | None = None
        for client in clients:
            try:
                client.ping()
                return
            except ACCESS_ERRORS as e:  # it answers, and refuses us: say so now
                raise access_error(settings, "connecting", e) from e
            except (RedisConnectionError, RedisTimeoutError, OSError) as e:
                failure = e
            except RedisError:
                return
        assert failure is not None
        raise unreachable(settings, str(failure).rstrip("."), given=given) from failure
    finally:
        for client in clients:
            client.close()

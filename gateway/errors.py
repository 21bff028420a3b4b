"""Errors of the gateway and how every agentbus error maps to an HTTP status.

The body of every error response is ``{"error": {"code", "description", "details"}}``: the
same ``ErrorInfo`` that travels on the bus. Exception tree (under ``AgentbusError``)::

    AgentbusError
    └── GatewayError
        ├── Unauthorized      no token, or a bad or expired one (401)
        ├── Forbidden         the token's role or user may not do this (403)
        ├── NotFound          no such agent, dead letter or route (404)
        └── TooManyStreams    the gateway follows as many sessions as it may (503)
"""

from __future__ import annotations

from typing import Any

from schemas.errors import (
    AgentbusError,
    AgentNotFound,
    ConnectionFailed,
    ErrorCode,
    EventsLost,
    InvalidInput,
    NoResponders,
    PayloadTooLarge,
    RemoteError,
    RequestTimeout,
)

__all__ = [
    "Forbidden",
    "GatewayError",
    "NotFound",
    "TooManyStreams",
    "Unauthorized",
    "error_body",
    "http_status",
]


class GatewayError(AgentbusError):
    pass


class Unauthorized(GatewayError):
    default_code = "unauthorized"


class Forbidden(GatewayError):
    default_code = "forbidden"


class NotFound(GatewayError):
    default_code = ErrorCode.NOT_FOUND


class TooManyStreams(GatewayError):
    default_code = "too_many_streams"


#: Error codes carried in a handler's error reply, and the status each becomes.
_REMOTE_STATUS: dict[str, int] = {
    ErrorCode.BAD_REQUEST: 400,
    ErrorCode.UNKNOWN_TYPE: 400,
    ErrorCode.TOO_LARGE: 413,
    ErrorCode.DEADLINE_EXCEEDED: 504,
    ErrorCode.NOT_FOUND: 404,
}

_STATUS: tuple[tuple[type[AgentbusError], int], ...] = (
    (Unauthorized, 401),
    (Forbidden, 403),
    (NotFound, 404),
    (TooManyStreams, 503),
    (AgentNotFound, 404),
    (NoResponders, 503),
    (RequestTimeout, 504),
    (PayloadTooLarge, 413),
    (InvalidInput, 400),
    (ConnectionFailed, 503),
    (EventsLost, 410),
)


def http_status(error: AgentbusError) -> int:
    """The HTTP status of ``error``: ``no_responders`` 503, ``timeout`` 504, ``handler_error``
    502, ``bad_request`` 400, ``not_found`` 404 (docs/GATEWAY.md, "Errors")."""
    if isinstance(error, RemoteError):
        return _REMOTE_STATUS.get(error.code, 502)
    for cls, status in _STATUS:
        if isinstance(error, cls):
            return status
    return 500


def error_body(
    code: str, description: str, details: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The JSON body of an error response."""
    return {"error": {"code": code, "description": description, "details": details or {}}}

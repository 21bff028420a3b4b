"""Who is calling: bearer tokens checked on every request, and the rules of who may do what.

* ``Authorization: Bearer <token>`` (or ``?access_token=<token>``, for ``EventSource`` and
  WebSocket clients, which cannot set headers);
* no token given: refused (401) as soon as any token was issued; before that the gateway is
  open to anyone who can reach it, which is only the local machine (``Gateway.loopback``);
* viewers read; operators also write (send, request, replay) and read every session; a session
  started through the gateway belongs to its user (``KeySpace.session_owner``).
"""

from __future__ import annotations

import time
from typing import Annotated

from fastapi import Depends, Request, WebSocket
from fastapi.security import HTTPBearer

from agent_sdk.connection import redis_errors
from gateway.errors import Forbidden, Unauthorized
from gateway.state import Gateway
from gateway.tokens import Principal, Role

__all__ = [
    "Operator",
    "Viewer",
    "authenticate",
    "can_read_session",
    "claim_session",
    "gateway_of",
]

_DESCRIPTION = "A token from `agentbus token issue --user U --role viewer|operator`."
_LOCAL = Principal("local", Role.OPERATOR, anonymous=True)


def gateway_of(request: Request) -> Gateway:
    gateway: Gateway = request.app.state.gateway
    return gateway


async def authenticate(gateway: Gateway, token: str | None) -> Principal:
    """The principal of ``token`` (``None``: no token given)."""
    if token is None:
        if gateway.loopback and not await gateway.tokens.any():
            return _LOCAL
        raise Unauthorized(
            "a bearer token is required (Authorization: Bearer <token>); "
            "`agentbus token issue --user U --role viewer` issues one"
        )
    info = await gateway.tokens.lookup(token)
    if info is None:
        raise Unauthorized("unknown token (revoked, mistyped, or from another namespace)")
    if info.expired(time.time()):
        raise Unauthorized(f"the token of {info.user!r} has expired; issue a new one")
    return Principal(info.user, info.role)


def _query_token(request: Request | WebSocket) -> str | None:
    return request.query_params.get("access_token") or None


def bearer_token(request: Request | WebSocket) -> str | None:
    """``Authorization: Bearer <token>``, else ``?access_token=``; ``None`` when neither."""
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    token = value.strip() if scheme.lower() == "bearer" else ""
    return token or _query_token(request)


class _BearerAuth(HTTPBearer):
    """The caller's ``Principal`` as one dependency (``operator``: writes need an operator).

    An ``HTTPBearer`` for the OpenAPI document (its security scheme, ``HTTPBearer``), but it
    reads the header itself and authenticates in the same call: one dependency per request
    instead of three nested ones (credentials, principal, role check), each a resolution.
    """

    def __init__(self, *, operator: bool) -> None:
        super().__init__(auto_error=False, scheme_name="HTTPBearer", description=_DESCRIPTION)
        self.operator = operator

    async def __call__(self, request: Request) -> Principal:  # type: ignore[override]
        who = await authenticate(gateway_of(request), bearer_token(request))
        if self.operator and not who.is_operator:
            raise Forbidden(f"user {who.user!r} is a viewer: this needs an operator token")
        return who


async def websocket_principal(websocket: WebSocket) -> Principal:
    return await authenticate(websocket.app.state.gateway, bearer_token(websocket))


#: Any valid token (or open mode).
Viewer = Annotated[Principal, Depends(_BearerAuth(operator=False))]
#: An operator token (or open mode).
Operator = Annotated[Principal, Depends(_BearerAuth(operator=True))]


async def session_owner(gateway: Gateway, session: str) -> str | None:
    key = gateway.settings.keys.session_owner(session)
    with redis_errors(gateway.settings, "reading a session's owner"):
        raw = await gateway.bus.client.get(key)
    return None if raw is None else (raw.decode() if isinstance(raw, bytes) else str(raw))


async def can_read_session(gateway: Gateway, who: Principal, session: str) -> None:
    """Raise ``Forbidden`` unless ``who`` may read ``session``: operators read every session,
    other users the sessions they own."""
    if who.is_operator:
        return
    owner = await session_owner(gateway, session)
    if owner != who.user:
        raise Forbidden(
            f"session {session!r} belongs to another user"
            if owner is not None
            else f"session {session!r} was not started by {who.user!r}: only operators read it"
        )


async def claim_session(gateway: Gateway, who: Principal, session: str, retention: float) -> bool:
    """Make ``who`` the owner of ``session`` unless someone already is; ``Forbidden`` when
    another user owns it. Returns whether it was claimed now."""
    key = gateway.settings.keys.session_owner(session)
    with redis_errors(gateway.settings, "claiming a session"):
        claimed = await gateway.bus.client.set(key, who.user, nx=True, px=round(retention * 1000))
    if claimed:
        return True
    owner = await session_owner(gateway, session)
    if owner != who.user and not who.is_operator:
        raise Forbidden(f"session {session!r} belongs to another user")
    return False

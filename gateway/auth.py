"""Who is calling: bearer tokens checked on every request, and the rules of who may do what.

* ``Authorization: Bearer <token>`` (or ``?access_token=<token>``, for ``EventSource`` and
  WebSocket clients, which cannot set headers);
* no token given: refused (401) as soon as any token was issued; before that the gateway is
  open to anyone who can reach it, which is only the local machine (``Gateway.loopback``);
* viewers read; operators also write (send, request, replay) and read every session; a session
  started through the gateway belongs to its user (``KeySpace.session_owner``);
* a session lives in its user's **tenant** (``session_tenant``): the token's ``tenant``, else
  (acl mode) the user itself, else none. Its keys, owner included, are under the tenant's
  prefix, which the gateway's Redis user may touch only for the tenants its policy lists: a
  tenant the gateway does not serve is refused (403), and a user cannot even learn whether
  another tenant uses a session id.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated

from fastapi import Depends, Request, WebSocket
from fastapi.security import HTTPBearer

from agent_sdk.connection import redis_errors
from gateway.errors import Forbidden, Unauthorized
from gateway.state import Gateway
from gateway.tokens import Principal, Role
from schemas.errors import InvalidInput, PermissionDenied
from schemas.names import check_identifier

__all__ = [
    "Operator",
    "Viewer",
    "authenticate",
    "can_read_session",
    "claim_session",
    "gateway_of",
    "session_tenant",
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
    return Principal(info.user, info.role, tenant=info.tenant)


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


def session_tenant(gateway: Gateway, who: Principal, asked: str | None = None) -> str | None:
    """The tenant of the session ``who`` means: ``asked`` (``?tenant=``; only operators may name
    another tenant than their own), else ``who``'s own (see the module docstring)."""
    own = who.tenant
    if own is None and gateway.settings.secure:
        own = who.user
    if asked is None or asked == own:
        return own
    try:
        check_identifier(asked, "tenant")
    except ValueError as e:
        raise InvalidInput(str(e)) from e
    if not who.is_operator:
        raise Forbidden(f"user {who.user!r} acts for tenant {own!r}, not {asked!r}")
    return asked


@contextmanager
def _tenant_guard(gateway: Gateway, tenant: str | None, doing: str) -> Iterator[None]:
    """Redis errors as usual, but a refusal (acl mode: the gateway's user may not touch this
    tenant's keys) as ``Forbidden``."""
    try:
        with redis_errors(gateway.settings, doing):
            yield
    except PermissionDenied as e:
        raise Forbidden(
            f"this gateway does not serve tenant {tenant!r} (its identity's `tenants` in the "
            "acl policy)"
        ) from e


async def session_owner(gateway: Gateway, session: str, tenant: str | None = None) -> str | None:
    key = gateway.settings.keys.session_owner(session, tenant)
    with _tenant_guard(gateway, tenant, "reading a session's owner"):
        raw = await gateway.bus.client.get(key)
    return None if raw is None else (raw.decode() if isinstance(raw, bytes) else str(raw))


async def can_read_session(
    gateway: Gateway, who: Principal, session: str, tenant: str | None = None
) -> None:
    """Raise ``Forbidden`` unless ``who`` may read ``session`` of ``tenant``: operators read
    every session (of a tenant the gateway serves), other users the sessions they own."""
    owner = await session_owner(gateway, session, tenant)
    if who.is_operator:
        return
    if owner != who.user:
        raise Forbidden(
            f"session {session!r} belongs to another user"
            if owner is not None
            else f"session {session!r} was not started by {who.user!r}: only operators read it"
        )


async def claim_session(
    gateway: Gateway, who: Principal, session: str, retention: float, tenant: str | None = None
) -> bool:
    """Make ``who`` the owner of ``session`` (of ``tenant``) unless someone already is;
    ``Forbidden`` when another user owns it. Returns whether it was claimed now."""
    key = gateway.settings.keys.session_owner(session, tenant)
    with _tenant_guard(gateway, tenant, "claiming a session"):
        claimed = await gateway.bus.client.set(key, who.user, nx=True, px=round(retention * 1000))
    if claimed:
        return True
    owner = await session_owner(gateway, session, tenant)
    if owner != who.user and not who.is_operator:
        raise Forbidden(f"session {session!r} belongs to another user")
    return False

"""Sending and requesting over HTTP, to an agent by name or to a role:

* ``POST /api/agents/{name}/messages``, ``POST /api/roles/{role}/messages``: send (202);
* ``POST /api/agents/{name}/requests``, ``POST /api/roles/{role}/requests``: request-reply;
* ``POST /api/roles/{role}/gather``: ask every member (scatter-gather).

All need an operator token. A body may name a ``session``: the caller becomes its owner (if
nobody is yet) and the message carries it in the ``session`` header (and its tenant, if any, in
the ``tenant`` header), so the agent can report its activity there (``agent.activity(msg)``)
for the caller to follow (``/api/sessions/{id}/events``).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field

from agent_sdk.activity import DEFAULT_RETENTION, TENANT_HEADER
from gateway.api_agents import checked_name
from gateway.auth import Operator, claim_session, gateway_of, session_tenant
from gateway.responses import JSONBytes, json_response
from gateway.state import Gateway
from gateway.tokens import Principal
from schemas.errors import InvalidInput

__all__ = ["router"]

router = APIRouter(prefix="/api", tags=["messages"])

#: The envelope header that carries the session a message belongs to.
SESSION_HEADER = "session"

_Type = Annotated[str, Field(min_length=1, max_length=128, description="The message type.")]
_Session = Annotated[
    str | None,
    Field(default=None, max_length=128, description="Session this work belongs to (optional)."),
]


class SendBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: _Type
    payload: Any = Field(default=None, description="Any JSON value.")
    session: _Session = None
    ttl: float | None = Field(
        default=None, gt=0, description="Seconds the message may wait unhandled."
    )
    queue_if_absent: bool = Field(
        default=False, description="Keep it in the inbox when the agent is not alive."
    )


class RequestBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: _Type
    payload: Any = Field(default=None, description="Any JSON value.")
    session: _Session = None
    timeout: float | None = Field(
        default=None, gt=0, description="Seconds to wait for the reply (default: the bus's)."
    )


class GatherBody(RequestBody):
    max_replies: int | None = Field(default=None, ge=1, description="Stop after this many.")


async def _headers(gateway: Gateway, who: Principal, session: str | None) -> dict[str, str]:
    if session is None:
        return {}
    checked_name(session, "session id")
    tenant = session_tenant(gateway, who)
    await claim_session(gateway, who, session, DEFAULT_RETENTION, tenant)
    if tenant is None:
        return {SESSION_HEADER: session}
    return {SESSION_HEADER: session, TENANT_HEADER: tenant}


def _timeout(gateway: Gateway, timeout: float | None) -> float | None:
    limit = gateway.settings.gateway_max_request_timeout
    if timeout is not None and timeout > limit:
        raise InvalidInput(f"timeout {timeout}s is over this gateway's limit of {limit}s")
    return timeout


async def _send(
    request: Request, who: Principal, body: SendBody, to: str | None, role: str | None
) -> JSONBytes:
    gateway = gateway_of(request)
    headers = await _headers(gateway, who, body.session)
    message_id = await gateway.bus.send(
        to, body.type, body.payload, role=role, headers=headers,
        queue_if_absent=body.queue_if_absent, ttl=body.ttl,
    )  # fmt: skip
    return json_response({"id": message_id}, status_code=202)


async def _request(
    request: Request, who: Principal, body: RequestBody, to: str | None, role: str | None
) -> JSONBytes:
    gateway = gateway_of(request)
    headers = await _headers(gateway, who, body.session)
    reply = await gateway.bus.request(
        to, body.type, body.payload, role=role, timeout=_timeout(gateway, body.timeout),
        headers=headers,
    )  # fmt: skip
    return json_response({"reply": reply})


@router.post("/agents/{name}/messages", status_code=202, summary="Send to an agent")
async def send_to_agent(request: Request, name: str, body: SendBody, who: Operator) -> JSONBytes:
    """Durable, at-least-once; 404 ``not_found`` when the agent is not alive (unless
    ``queue_if_absent``). Returns the message id."""
    return await _send(request, who, body, checked_name(name), None)


@router.post("/roles/{role}/messages", status_code=202, summary="Send to one member of a role")
async def send_to_role(request: Request, role: str, body: SendBody, who: Operator) -> JSONBytes:
    """One live member of the role handles it; 503 ``no_responders`` when the role is empty."""
    return await _send(request, who, body, None, checked_name(role, "role"))


@router.post("/agents/{name}/requests", summary="Request-reply with an agent")
async def request_agent(request: Request, name: str, body: RequestBody, who: Operator) -> JSONBytes:
    """``{"reply": ...}``; errors: 404 ``not_found``, 504 ``timeout``, 502 ``handler_error``,
    400 ``bad_request`` / ``unknown_type`` (the agent refused the payload or type)."""
    return await _request(request, who, body, checked_name(name), None)


@router.post("/roles/{role}/requests", summary="Request-reply with one member of a role")
async def request_role(request: Request, role: str, body: RequestBody, who: Operator) -> JSONBytes:
    """As for an agent; 503 ``no_responders`` when nobody in the role is alive."""
    return await _request(request, who, body, None, checked_name(role, "role"))


@router.post("/roles/{role}/gather", summary="Ask every live member of a role")
async def gather_role(request: Request, role: str, body: GatherBody, who: Operator) -> JSONBytes:
    """Scatter-gather: ``replies`` by member, ``errors`` by member (code, description),
    ``missing`` (members that did not answer in time)."""
    gateway = gateway_of(request)
    headers = await _headers(gateway, who, body.session)
    result = await gateway.bus.request_many(
        checked_name(role, "role"), body.type, body.payload,
        timeout=_timeout(gateway, body.timeout), max_replies=body.max_replies, headers=headers,
    )  # fmt: skip
    return json_response(
        {
            "replies": result.replies,
            "errors": {n: e.info.model_dump() for n, e in result.errors.items()},
            "missing": result.missing,
        }
    )

"""A2A over HTTP: every bus agent as an Agent2Agent agent (``a2a-sdk``, protocol 1.0).

* ``GET /a2a/{name}/.well-known/agent-card.json``: its card (any token; ``gateway.a2a_cards``);
* ``POST /a2a/{name}``: A2A JSON-RPC (``SendMessage``, ``SendStreamingMessage``; 0.3's
  ``message/send`` and ``message/stream`` too): an operator token, as every write
  (``gateway.a2a_bridge``).

An A2A client given ``http://<gateway>/a2a/<name>`` finds the card and talks to the agent.
"""

from __future__ import annotations

from typing import Any

from a2a.server.context import ServerCallContext
from a2a.server.request_handlers.response_helpers import agent_card_to_dict
from a2a.server.routes.common import DefaultServerCallContextBuilder
from a2a.server.routes.jsonrpc_dispatcher import JsonRpcDispatcher
from a2a.utils.constants import AGENT_CARD_WELL_KNOWN_PATH
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from gateway.a2a_bridge import BusRequestHandler
from gateway.a2a_cards import A2A_PREFIX, build_card, handled_types
from gateway.api_agents import checked_name
from gateway.auth import Operator, Viewer, gateway_of
from gateway.errors import NotFound
from gateway.fleet import usage_of

__all__ = ["router"]

router = APIRouter(prefix=A2A_PREFIX, tags=["a2a"])


class _Context(DefaultServerCallContextBuilder):
    """The default A2A call context (headers, user) plus the agent and the checked caller."""

    def build(self, request: Request) -> ServerCallContext:
        context = super().build(request)
        context.state["agent"] = request.path_params["name"]
        context.state["principal"] = request.state.principal
        return context


def _dispatcher(request: Request) -> JsonRpcDispatcher:
    """The app's A2A JSON-RPC dispatcher (made on first use; it holds no connection)."""
    state = request.app.state
    found: JsonRpcDispatcher | None = getattr(state, "a2a_dispatcher", None)
    if found is None:
        handler = BusRequestHandler(gateway_of(request))
        found = JsonRpcDispatcher(handler, context_builder=_Context(), enable_v0_3_compat=True)
        state.a2a_dispatcher = found
    return found


@router.get("/{name}" + AGENT_CARD_WELL_KNOWN_PATH, summary="A bus agent's A2A agent card")
async def agent_card(request: Request, name: str, who: Viewer) -> JSONResponse:
    """The card of a live agent: skills from its handled message types and capabilities, one
    JSON-RPC interface at ``/a2a/{name}``."""
    gateway = gateway_of(request)
    record = await gateway.bus.get(checked_name(name))
    if record is None:
        raise NotFound(f"no live agent named {name!r}", details={"name": name})
    usage = (await usage_of(gateway.lanes, gateway.settings, [name]))[name]
    base = str(request.base_url).rstrip("/")
    secured = not (gateway.loopback and not await gateway.tokens.any())
    card = build_card(record, handled_types(record, usage), base, secured=secured)
    body: dict[str, Any] = agent_card_to_dict(card)
    return JSONResponse(body)


@router.post("/{name}", summary="A2A JSON-RPC: send a message to a bus agent")
async def rpc(request: Request, name: str, who: Operator) -> Response:
    """``SendMessage`` (a bus request), ``SendStreamingMessage`` (its session's activity as
    status updates, then the reply); JSON-RPC 2.0 as the A2A protocol defines it."""
    checked_name(name)
    request.state.principal = who
    return await _dispatcher(request).handle_requests(request)

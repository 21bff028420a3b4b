"""Serving the gateway with uvicorn (``agentbus gateway``).

Without any token issued, the gateway listens on 127.0.0.1 only, whatever host was asked, and
says so: an open API is never put on a network by accident.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Callable

import uvicorn

from agent_sdk.connection import make_client, redis_errors
from gateway.app import create_app
from gateway.settings import GatewaySettings
from gateway.tokens import TokenStore

__all__ = ["is_loopback", "serve"]

log = logging.getLogger("agentbus.gateway")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


async def _tokens_issued(settings: GatewaySettings) -> bool:
    client = make_client(settings)
    try:
        with redis_errors(settings, "checking for gateway tokens"):
            return await TokenStore(client, settings).any()
    finally:
        await client.aclose()


async def serve(settings: GatewaySettings, say: Callable[[str], None] = print) -> None:
    """Serve until SIGINT/SIGTERM (uvicorn's handlers: this is the executable edge)."""
    host = settings.gateway_host
    if not is_loopback(host) and not await _tokens_issued(settings):
        say(
            f"agentbus gateway: no tokens issued, so listening on 127.0.0.1 only (not {host}); "
            "issue one with `agentbus token issue --user U --role viewer|operator`"
        )
        host = "127.0.0.1"
    app = create_app(settings, loopback=is_loopback(host))
    config = uvicorn.Config(
        app, host=host, port=settings.gateway_port, log_level="warning", lifespan="on",
        proxy_headers=False,
    )  # fmt: skip
    sock = config.bind_socket()  # bound before serving: the printed URL has the real port
    bound_host, bound_port = sock.getsockname()[:2]
    base = f"http://{bound_host}:{bound_port}"
    say(f"agentbus gateway: dashboard {base}/  API {base}/api  OpenAPI {base}/openapi.json")
    if not app.state.gateway.loopback:
        say("agentbus gateway: every request needs a token (Authorization: Bearer ...)")
    await uvicorn.Server(config).serve(sockets=[sock])

"""Serving the gateway with uvicorn (``agentbus gateway``).

Without any token issued, the gateway listens on 127.0.0.1 only, whatever host was asked, and
says so: an open API is never put on a network by accident.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import signal
from collections.abc import Callable, Iterator

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


class _Server(uvicorn.Server):
    """uvicorn's server, stopping on SIGINT/SIGTERM like the other agentbus daemons: the first
    signal drains (open streams get ``timeout_graceful_shutdown``), a second one exits at once,
    and the process then exits 0 (uvicorn would re-raise the signal and die of it)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        loop = asyncio.get_running_loop()

        def stop() -> None:
            if self.should_exit:
                self.force_exit = True
            self.should_exit = True

        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop)
        try:
            yield
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)


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
        proxy_headers=False, timeout_graceful_shutdown=5,
    )  # fmt: skip
    sock = config.bind_socket()  # bound before serving: the printed URL has the real port
    bound_host, bound_port = sock.getsockname()[:2]
    base = f"http://{bound_host}:{bound_port}"
    say(f"agentbus gateway: dashboard {base}/  API {base}/api  OpenAPI {base}/openapi.json")
    if not app.state.gateway.loopback:
        say("agentbus gateway: every request needs a token (Authorization: Bearer ...)")
    await _Server(config).serve(sockets=[sock])

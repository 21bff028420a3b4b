"""Serving the gateway with uvicorn: ``serve`` (``agentbus gateway``, a process of its own) and
``running`` (inside another command's event loop: ``agentbus up`` and ``agentbus demo``).

Without any token issued, the gateway listens on 127.0.0.1 only, whatever host was asked, and
says so: an open API is never put on a network by accident.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import logging
import signal
import socket
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager

import uvicorn

from agent_sdk.connection import make_client, redis_errors
from agent_sdk.tasks import cancel_and_wait
from gateway.api_streams import with_direct_send
from gateway.app import create_app
from gateway.settings import GatewaySettings
from gateway.tokens import TokenStore
from schemas.errors import ConfigurationError

__all__ = ["is_loopback", "running", "serve"]

log = logging.getLogger("agentbus.gateway")

#: Pending connections the listening socket queues (uvicorn's default).
_BACKLOG = 2048


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
        with_direct_send(app), host=host, port=settings.gateway_port, log_level="warning",
        access_log=False, lifespan="on", proxy_headers=False, timeout_graceful_shutdown=5,
    )  # fmt: skip
    sock = _listening(host, settings.gateway_port, fallback=False)  # the URL has the real port
    bound_host, bound_port = sock.getsockname()[:2]
    base = f"http://{bound_host}:{bound_port}"
    say(f"agentbus gateway: dashboard {base}/  API {base}/api  OpenAPI {base}/openapi.json")
    if not app.state.gateway.loopback:
        say("agentbus gateway: every request needs a token (Authorization: Bearer ...)")
    await _Server(config).serve(sockets=[sock])


class _Embedded(uvicorn.Server):
    """uvicorn's server inside a command that owns the signals (no handlers of its own), with
    an event for "listening"."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.listening = asyncio.Event()

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        if not self.should_exit:
            self.listening.set()


def _listening(host: str, port: int, *, fallback: bool) -> socket.socket:
    """A socket listening on ``host``:``port``; on any free port instead when that one is taken
    and ``fallback``. A taken port without ``fallback`` is a ``ConfigurationError`` naming it.

    It listens here, before the server gets it: two processes may both *bind* one port with
    ``SO_REUSEADDR`` while neither listens yet, and the second ``listen()`` then fails. Under
    uvloop that failure inside the server closes the socket without a word (the gateway would
    run deaf); here it is an error, or the cue to take another port.
    """
    try:
        return _listen_on(host, port)
    except OSError as e:
        if e.errno != errno.EADDRINUSE or port == 0:
            raise
        if not fallback:
            raise ConfigurationError(
                f"port {port} on {host} is in use: stop what listens there or pick another "
                "port (`agentbus gateway --port`, `agentbus up --gateway-port`, "
                "AGENTBUS_GATEWAY_PORT; 0 takes any free port)"
            ) from e
    return _listen_on(host, 0)


def _listen_on(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(_BACKLOG)
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


@asynccontextmanager
async def running(settings: GatewaySettings, *, fallback: bool = False) -> AsyncIterator[str]:
    """A gateway on 127.0.0.1 (``settings.gateway_port``; 0: any free port; ``fallback``: any
    free port when that one is taken) in the running event loop, for as long as the block
    runs; yields its base URL (``http://127.0.0.1:N``). The caller handles signals; leaving the
    block stops it (open streams get 2 s)."""
    app = create_app(settings, loopback=True)
    config = uvicorn.Config(
        with_direct_send(app), host="127.0.0.1", port=settings.gateway_port, log_level="warning",
        access_log=False, lifespan="on", proxy_headers=False, timeout_graceful_shutdown=2,
    )  # fmt: skip
    sock = _listening("127.0.0.1", settings.gateway_port, fallback=fallback)
    port = sock.getsockname()[1]
    server = _Embedded(config)
    task = asyncio.create_task(server.serve(sockets=[sock]), name="agentbus-gateway")
    listening = asyncio.create_task(server.listening.wait())
    try:
        await asyncio.wait({task, listening}, return_when=asyncio.FIRST_COMPLETED)
        if not server.listening.is_set():
            task.result()  # its error, if it failed to start
            raise RuntimeError("the gateway stopped while starting")
        yield f"http://127.0.0.1:{port}"
    finally:
        listening.cancel()
        server.should_exit = True
        try:
            await asyncio.wait_for(asyncio.shield(task), 10)
        except TimeoutError:
            server.force_exit = True
            await cancel_and_wait(task)
        sock.close()

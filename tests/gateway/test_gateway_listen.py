"""The gateway's listening socket when its port is taken, under uvloop as ``agentbus up`` runs.

Two processes may both bind one port with ``SO_REUSEADDR`` while neither listens yet; the
second ``listen()`` then fails. uvloop closed such a server without a word (``agentbus up``
once died with "Bad file descriptor" when two tests started it at once), so the gateway now
listens before the server gets the socket.
"""

from __future__ import annotations

import socket
from collections.abc import Awaitable, Callable, Iterator

import httpx
import pytest
import uvloop

import gateway.server as server_module
from gateway.server import running, serve
from gateway.settings import GatewaySettings
from schemas.errors import ConfigurationError
from tests.gateway.conftest import MakeSettings


def _bound(port: int = 0) -> socket.socket:
    """Another process's socket, bound (``SO_REUSEADDR``) but not yet listening."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", port))
    except OSError:
        sock.close()
        raise
    return sock


@pytest.fixture
def rival() -> Iterator[socket.socket]:
    sock = _bound()
    yield sock
    sock.close()


def _port(sock: socket.socket) -> int:
    return int(sock.getsockname()[1])


def _on_uvloop(scenario: Callable[[], Awaitable[None]]) -> None:
    async def main() -> None:
        await scenario()

    uvloop.run(main())


async def _answers(url: str) -> int:
    async with httpx.AsyncClient(timeout=10) as client:
        return (await client.get(f"{url}/healthz")).status_code


def test_a_rival_listening_between_our_bind_and_listen_moves_us_to_a_free_port(
    gateway_settings: MakeSettings, rival: socket.socket, monkeypatch: pytest.MonkeyPatch
) -> None:
    taken = _port(rival)

    class RacedSocket(socket.socket):
        """Our socket; the rival's ``listen()`` lands right after our ``bind()``."""

        def bind(self, address: object) -> None:
            super().bind(address)  # type: ignore[arg-type]
            if self.getsockname()[1] == taken:
                rival.listen()

    monkeypatch.setattr(server_module.socket, "socket", RacedSocket)

    async def scenario() -> None:
        async with running(gateway_settings(gateway_port=taken), fallback=True) as url:
            port = int(url.rsplit(":", 1)[1])
            assert port != taken
            assert await _answers(url) == 200

    _on_uvloop(scenario)


async def _embedded(settings: GatewaySettings) -> None:
    async with running(settings):  # `agentbus up --gateway-port N`: no fallback
        pass


async def _standalone(settings: GatewaySettings) -> None:
    await serve(settings, say=lambda line: None)  # `agentbus gateway --port N`


@pytest.mark.parametrize("start", [_embedded, _standalone], ids=["running", "serve"])
def test_a_taken_port_without_fallback_is_named(
    gateway_settings: MakeSettings,
    rival: socket.socket,
    start: Callable[[GatewaySettings], Awaitable[None]],
) -> None:
    rival.listen()
    taken = _port(rival)

    async def scenario() -> None:
        with pytest.raises(ConfigurationError, match=f"port {taken} on 127.0.0.1 is in use"):
            await start(gateway_settings(gateway_port=taken))

    _on_uvloop(scenario)


def test_the_port_is_held_from_the_moment_the_url_is_known(
    gateway_settings: MakeSettings,
) -> None:
    async def scenario() -> None:
        async with running(gateway_settings(gateway_port=0)) as url:
            port = int(url.rsplit(":", 1)[1])
            # nobody else can listen on it, not even by binding first
            with pytest.raises(OSError, match="Address already in use"):
                _bound(port).listen()
            assert await _answers(url) == 200

    _on_uvloop(scenario)

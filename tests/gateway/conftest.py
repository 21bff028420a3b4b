"""Fixtures of the gateway tests: the app on an ASGI test client, a real uvicorn server on a free
port, an SSE reader, and agents to look at."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import httpx
import orjson
import pytest
import uvicorn
from fastapi import FastAPI

from agent_sdk.settings import Settings
from coordinator import Coordinator
from gateway.app import create_app
from gateway.settings import GatewaySettings
from tests.support import wait_for

MakeSettings = Callable[..., GatewaySettings]
T = TypeVar("T")


@pytest.fixture
def gateway_settings(settings: Settings) -> MakeSettings:
    """``gateway_settings(**overrides)``: the test's settings plus gateway options."""

    def make(**overrides: Any) -> GatewaySettings:
        values: dict[str, Any] = {**settings.model_dump(), "gateway_keepalive": 5.0}
        values.update(overrides)
        return GatewaySettings(**values)

    return make


@asynccontextmanager
async def asgi_client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """An httpx client on the app in-process (its gateway started as the lifespan would)."""
    gateway = app.state.gateway
    await gateway.start()
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
            yield client
    finally:
        await gateway.stop()


@pytest.fixture
async def http(
    gateway_settings: MakeSettings, coordinator: Coordinator
) -> AsyncIterator[httpx.AsyncClient]:
    """An ASGI client on an open (loopback, no tokens) gateway, with a coordinator running."""
    async with asgi_client(create_app(gateway_settings())) as client:
        yield client


@dataclass
class Live:
    """A gateway served by uvicorn on a free port."""

    url: str
    app: FastAPI
    server: uvicorn.Server


@asynccontextmanager
async def serve(app: FastAPI) -> AsyncIterator[Live]:
    config = uvicorn.Config(
        app, host="127.0.0.1", port=0, log_level="warning", lifespan="on",
        timeout_graceful_shutdown=1,
    )  # fmt: skip
    sock = config.bind_socket()
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        await wait_for(lambda: server.started or task.done(), message="uvicorn started")
        if task.done():
            task.result()
        yield Live(f"http://127.0.0.1:{sock.getsockname()[1]}", app, server)
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 15)
        sock.close()


ServeGateway = Callable[..., AbstractAsyncContextManager[Live]]


@pytest.fixture
def live_gateway(gateway_settings: MakeSettings, coordinator: Coordinator) -> ServeGateway:
    """``async with live_gateway(**settings overrides) as live:`` a real server."""

    def make(**overrides: Any) -> AbstractAsyncContextManager[Live]:
        return serve(create_app(gateway_settings(**overrides)))

    return make


@dataclass
class SseEvent:
    event: str
    data: Any
    id: str | None


class SseReader:
    """Reads one SSE response event by event (what a browser's EventSource does).

    Every read has a deadline over the whole wait, keep-alives included (a stream that only
    sends keep-alives never satisfies a read): a missing event fails the test with what did
    arrive instead of hanging it until pytest-timeout.
    """

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self._lines = response.aiter_lines()
        #: Every event read so far, keep-alives included (shown when a read times out).
        self.seen: list[SseEvent] = []

    async def _within(self, scan: Awaitable[T], timeout: float, what: str) -> T:
        before = len(self.seen)
        try:
            return await asyncio.wait_for(scan, timeout)
        except TimeoutError:
            got = [(e.event, e.id) for e in self.seen[before:]]
            raise AssertionError(f"no {what} within {timeout}s; got {got}") from None

    async def next(self, timeout: float = 10.0) -> SseEvent:
        return await self._within(self._next(), timeout, "event")

    async def _next(self) -> SseEvent:
        fields: dict[str, str] = {}
        async for line in self._lines:
            if line == "":
                if "event" in fields or "data" in fields:
                    event = SseEvent(
                        fields.get("event", "message"),
                        orjson.loads(fields["data"]) if "data" in fields else None,
                        fields.get("id"),
                    )
                    self.seen.append(event)
                    return event
                continue
            name, _, value = line.partition(":")
            fields[name] = value.removeprefix(" ")
        raise EOFError("the stream ended")

    async def until(self, wanted: Callable[[SseEvent], bool], timeout: float = 10.0) -> SseEvent:
        async def scan() -> SseEvent:
            while True:
                event = await self._next()
                if wanted(event):
                    return event

        return await self._within(scan(), timeout, "wanted event")

    async def through(self, event: str, name: str, timeout: float = 10.0) -> list[SseEvent]:
        """Every event (keep-alives aside) up to and including ``event`` about agent ``name``."""

        async def scan() -> list[SseEvent]:
            out: list[SseEvent] = []
            while True:
                got = await self._next()
                if got.event == "keepalive":
                    continue
                out.append(got)
                if got.event == event and got.data.get("name") == name:
                    return out

        return await self._within(scan(), timeout, f"{event} of {name}")

    async def events(
        self, count: int, *, skip: tuple[str, ...] = ("keepalive",), timeout: float = 10.0
    ) -> list[SseEvent]:
        """The next ``count`` events (``skip`` aside), all within ``timeout`` seconds."""

        async def scan() -> list[SseEvent]:
            out: list[SseEvent] = []
            while len(out) < count:
                event = await self._next()
                if event.event not in skip:
                    out.append(event)
            return out

        return await self._within(scan(), timeout, f"{count} event(s)")


@asynccontextmanager
async def sse(
    client: httpx.AsyncClient, url: str, headers: dict[str, str] | None = None
) -> AsyncIterator[SseReader]:
    async with client.stream("GET", url, headers=headers, timeout=None) as response:
        assert response.status_code == 200, await response.aread()
        assert response.headers["content-type"].startswith("text/event-stream")
        yield SseReader(response)

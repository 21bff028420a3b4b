"""The ASGI application: routes, error handling, the body limit, the dashboard's files.

``create_app(settings)`` builds a FastAPI app whose lifespan starts and stops a ``Gateway``.
Every error leaves as JSON, ``{"error": {"code", "description", "details"}}``, with the status
of ``gateway.errors.http_status``: never a traceback.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib import resources
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from agent_sdk.connection import redis_errors
from gateway import api_a2a, api_agents, api_messages, api_ops, api_streams, metrics
from gateway.errors import error_body, http_status
from gateway.responses import JSONBytes, json_response
from gateway.settings import GatewaySettings
from gateway.state import Gateway
from schemas.errors import AgentbusError

__all__ = ["create_app"]

log = logging.getLogger("agentbus.gateway")

_STATIC = resources.files("gateway").joinpath("static")
_HTTP_CODES = {401: "unauthorized", 403: "forbidden", 404: "not_found", 405: "method_not_allowed"}


class BodyLimit:
    """Refuses request bodies over ``limit`` bytes with 413 ``too_large``, whether announced by
    ``Content-Length`` or streamed (pure ASGI: nothing is buffered here). Only a streamed
    (chunked) body is counted; other requests pass through untouched."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        streamed = False
        for name, value in scope.get("headers", ()):
            if name == b"content-length" and value.isdigit() and int(value) > self.limit:
                await self._refuse(send)
                return
            if name == b"transfer-encoding":
                streamed = True
        if not streamed:
            # no body, or one whose announced length is within the limit (HTTP framing ends
            # it there): nothing to count, and the response's sends go straight through
            await self.app(scope, receive, send)
            return
        seen = 0
        refused = False

        async def counted() -> Message:
            nonlocal seen, refused
            message = await receive()
            if message["type"] == "http.request" and not refused:
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    refused = True
                    await self._refuse(send)
                    return {"type": "http.disconnect"}  # the app stops reading
            return message

        async def guarded(message: Message) -> None:
            if not refused:  # after a refusal, whatever the app answers is dropped
                await send(message)

        await self.app(scope, counted, guarded)

    async def _refuse(self, send: Send) -> None:
        body = error_body("too_large", f"the request body is over {self.limit} bytes")
        response = json_response(body, status_code=413)
        await response({"type": "http"}, _empty_receive, send)


async def _empty_receive() -> Message:
    return {"type": "http.disconnect"}


def _validation_message(e: RequestValidationError) -> tuple[str, list[dict[str, Any]]]:
    parts, details = [], []
    for err in e.errors():
        where = ".".join(str(p) for p in err.get("loc", ()))
        msg = str(err.get("msg", "invalid")).removeprefix("Value error, ")
        if err.get("type") == "json_invalid":
            msg = "the body is not valid JSON"
        parts.append(f"{where}: {msg}" if where else msg)
        details.append({"loc": [str(p) for p in err.get("loc", ())], "msg": msg})
    return "; ".join(parts) or "invalid request", details


def create_app(settings: GatewaySettings | None = None, *, loopback: bool = True) -> FastAPI:
    """The gateway app for ``settings`` (default: from the environment). ``loopback``: the
    server listens on a loopback address only (the app is open without tokens only then)."""
    settings = settings or GatewaySettings()
    gateway = Gateway(settings, loopback=loopback)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await gateway.start()
        try:
            yield
        finally:
            await gateway.stop()

    app = FastAPI(
        title="agentbus gateway",
        version="1",
        summary="The agentbus registry, messaging and live streams over HTTP.",
        lifespan=lifespan,
        docs_url="/docs",
        redoc_url=None,
    )
    app.state.gateway = gateway

    @app.exception_handler(AgentbusError)
    async def agentbus_error(request: Request, exc: AgentbusError) -> JSONBytes:
        status = http_status(exc)
        if status >= 500 and status not in (502, 503, 504):
            log.error("request %s %s failed: %s", request.method, request.url.path, exc)
        body = error_body(exc.code, exc.description, exc.details)
        headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
        return json_response(body, status_code=status, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONBytes:
        message, details = _validation_message(exc)
        return json_response(
            error_body("bad_request", message, {"errors": details}), status_code=400
        )

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONBytes:
        code = _HTTP_CODES.get(
            exc.status_code, "bad_request" if exc.status_code < 500 else "internal"
        )
        return json_response(error_body(code, str(exc.detail)), status_code=exc.status_code)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONBytes:
        log.exception("request %s %s failed", request.method, request.url.path)
        body = error_body(
            "internal", f"internal error ({type(exc).__name__}); see the gateway's log"
        )
        return json_response(body, status_code=500)

    # routes are matched in order: the per-call ones (request-reply, send) first
    for module in (api_messages, api_agents, api_ops, api_streams, api_a2a, metrics):
        app.include_router(module.router)

    @app.get("/", include_in_schema=False)
    async def dashboard() -> FileResponse:
        return FileResponse(str(_STATIC.joinpath("index.html")), media_type="text/html")

    @app.get("/healthz", tags=["operations"], summary="Is this gateway up and Redis reachable")
    async def healthz() -> JSONBytes:
        with redis_errors(settings, "checking Redis"):
            await gateway.bus.client.ping()
        return json_response({"ok": True, "namespace": settings.namespace})

    app.mount("/static", StaticFiles(directory=str(_STATIC)), name="static")
    app.add_middleware(BodyLimit, limit=settings.gateway_max_body_bytes)
    return app

"""Who may see what: bearer tokens (viewer, operator), sessions owned by their user, open mode
only on loopback with no token issued; `agentbus token` and `agentbus gateway` through the
CLI. Every forbidden read and write is tried."""

from __future__ import annotations

import asyncio
import hashlib
import re
import signal
import sys
from typing import Any

import httpx
import orjson
import pytest
import redis.asyncio as aioredis
from click.testing import CliRunner, Result
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from agent_sdk import Agent, Bus
from agent_sdk.settings import Settings
from coordinator import Coordinator
from coordinator.cli import cli
from gateway.app import create_app
from gateway.tokens import TokenStore
from tests.gateway.conftest import MakeSettings, asgi_client, serve, sse
from tests.support import wait_for

READS = [
    "/api/agents", "/api/agents/worker-1", "/api/agents/worker-1/tasks", "/api/stats",
    "/api/deadletters", "/metrics",
]  # fmt: skip
WRITES = [
    ("/api/agents/worker-1/messages", {"type": "job"}),
    ("/api/agents/worker-1/requests", {"type": "job", "timeout": 2}),
    ("/api/roles/worker/messages", {"type": "job"}),
    ("/api/roles/worker/requests", {"type": "job", "timeout": 2}),
    ("/api/roles/worker/gather", {"type": "job", "timeout": 2}),
    ("/api/deadletters/1-0/replay", None),
]


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def _tokens(settings: Settings) -> dict[str, str]:
    async with Bus(settings) as bus:
        store = TokenStore(bus.client, settings)
        return {
            "viewer": await store.issue("vera", "viewer"),
            "viewer2": await store.issue("walt", "viewer"),
            "operator": await store.issue("olga", "operator"),
        }


async def test_token_rules_for_every_read_and_write(
    gateway_settings: MakeSettings, settings: Settings, coordinator: Coordinator
) -> None:
    tokens = await _tokens(settings)
    worker = Agent("worker-1", "worker", settings=settings)

    @worker.on("job")
    async def job(payload: Any) -> str:
        return "done"

    async with worker, asgi_client(create_app(gateway_settings(), loopback=True)) as http:
        for path in READS:
            assert (await http.get(path)).status_code == 401, path
            bad = await http.get(path, headers=_bearer("agb_not-a-real-token"))
            assert bad.status_code == 401
            assert bad.json()["error"]["code"] == "unauthorized"
            assert bad.headers["www-authenticate"] == "Bearer"
            for who in ("viewer", "operator"):
                ok = await http.get(path, headers=_bearer(tokens[who]))
                assert ok.status_code == 200, (path, who, ok.text)
            query = await http.get(path + "?access_token=" + tokens["viewer"])
            assert query.status_code == 200
        for path, body in WRITES:
            assert (await http.post(path, json=body)).status_code == 401, path
            refused = await http.post(path, json=body, headers=_bearer(tokens["viewer"]))
            assert refused.status_code == 403, path
            assert refused.json()["error"]["code"] == "forbidden"
            allowed = await http.post(path, json=body, headers=_bearer(tokens["operator"]))
            assert allowed.status_code in (200, 202, 404), (path, allowed.text)  # 404: no letter
        # the change feed too
        assert (await http.get("/api/events")).status_code == 401


async def test_sessions_are_readable_by_their_owner_and_operators(
    gateway_settings: MakeSettings, settings: Settings, coordinator: Coordinator
) -> None:
    tokens = await _tokens(settings)
    async with serve(create_app(gateway_settings())) as live, Bus(settings) as bus:
        async with httpx.AsyncClient(base_url=live.url) as http:
            started = await http.post(
                "/api/sessions", json={"session": "vera-chat"}, headers=_bearer(tokens["viewer"])
            )
            assert started.status_code == 201
            assert started.json() == {"session": "vera-chat", "owner": "vera", "tenant": None}
            taken = await http.post(
                "/api/sessions", json={"session": "vera-chat"}, headers=_bearer(tokens["viewer2"])
            )
            assert taken.status_code == 403
            fresh = await http.post("/api/sessions", json={}, headers=_bearer(tokens["viewer2"]))
            assert fresh.json()["owner"] == "walt"
            assert fresh.json()["session"]
            await bus.activity_log.emit("vera-chat", "helper", "agent_started")
            await bus.activity_log.emit("nobodys", "helper", "agent_started")
            url = "/api/sessions/vera-chat/events"
            for who in ("viewer", "operator"):
                async with sse(http, url, _bearer(tokens[who])) as s:
                    await s.next()
                    assert (await s.next()).event == "agent_started"
            for url, who in (
                ("/api/sessions/vera-chat/events", "viewer2"),  # another user's session
                ("/api/sessions/nobodys/events", "viewer"),  # not started through the gateway
            ):
                refused = await http.get(url, headers=_bearer(tokens[who]))
                assert refused.status_code == 403, url
                assert refused.json()["error"]["code"] == "forbidden"
            async with sse(http, "/api/sessions/nobodys/events", _bearer(tokens["operator"])) as s:
                await s.next()
                assert (await s.next()).data["session"] == "nobodys"
            assert (await http.get(url)).status_code == 401
        ws = live.url.replace("http://", "ws://")
        with pytest.raises(InvalidStatus):
            async with connect(f"{ws}/api/sessions/vera-chat/events/ws"):
                pass
        with pytest.raises(InvalidStatus):
            async with connect(f"{ws}/api/events/ws?access_token=agb_wrong"):
                pass
        ok_url = f"{ws}/api/sessions/vera-chat/events/ws?access_token={tokens['viewer']}"
        async with connect(ok_url) as socket:
            assert orjson.loads(await socket.recv())["event"] == "ready"


async def test_open_mode_only_on_loopback_and_until_a_token_exists(
    gateway_settings: MakeSettings, settings: Settings, coordinator: Coordinator
) -> None:
    async with asgi_client(create_app(gateway_settings(), loopback=True)) as http:
        assert (await http.get("/api/agents")).status_code == 200
        assert (await http.post("/api/roles/x/messages", json={"type": "t"})).status_code == 503
    async with asgi_client(create_app(gateway_settings(), loopback=False)) as http:
        refused = await http.get("/api/agents")
        assert refused.status_code == 401
    await _tokens(settings)
    async with asgi_client(create_app(gateway_settings(), loopback=True)) as http:
        assert (await http.get("/api/agents")).status_code == 401


async def test_expired_tokens_are_refused(
    gateway_settings: MakeSettings, settings: Settings, coordinator: Coordinator
) -> None:
    async with Bus(settings) as bus:
        token = await TokenStore(bus.client, settings).issue("tess", "operator", ttl=0.2)
    async with asgi_client(create_app(gateway_settings())) as http:

        async def refused() -> dict[str, Any] | None:
            response = await http.get("/api/agents", headers=_bearer(token))
            return response.json() if response.status_code == 401 else None

        body = await wait_for(refused, message="the token expired")
    assert "expired" in body["error"]["description"]


async def _invoke(settings: Settings, *args: str) -> Result:
    argv = ["--redis-url", settings.url, "--namespace", settings.namespace, *args]
    return await asyncio.to_thread(CliRunner().invoke, cli, argv)


async def test_token_cli_issue_list_revoke_and_only_hashes_stored(
    settings: Settings, r: aioredis.Redis
) -> None:
    issued = await _invoke(settings, "token", "issue", "--user", "ops", "--role", "operator")
    assert issued.exit_code == 0, issued.output
    token = issued.output.strip()
    assert token.startswith("agb_")
    stored = await r.hgetall(settings.keys.gateway_tokens())
    digest = hashlib.sha256(token.encode()).hexdigest()
    assert list(stored) == [digest]
    assert token not in str(stored)
    assert orjson.loads(stored[digest])["role"] == "operator"
    listed = await _invoke(settings, "token", "list", "--json")
    (row,) = orjson.loads(listed.output)
    assert (row["user"], row["role"], row["id"]) == ("ops", "operator", digest[:12])
    assert row["tenant"] is None
    tenanted = await _invoke(settings, "token", "issue", "--user", "ann", "--tenant", "acme")
    assert tenanted.exit_code == 0, tenanted.output
    rows = orjson.loads((await _invoke(settings, "token", "list", "--json")).output)
    assert [(t["user"], t["tenant"]) for t in rows] == [("ann", "acme"), ("ops", None)]
    bad_tenant = await _invoke(settings, "token", "issue", "--user", "x", "--tenant", "a:b")
    assert bad_tenant.exit_code == 2
    assert "tenant" in bad_tenant.output
    assert (await _invoke(settings, "token", "revoke", "--user", "ann")).exit_code == 0
    bad_role = await _invoke(settings, "token", "issue", "--user", "x", "--role", "admin")
    assert bad_role.exit_code == 2
    bad_user = await _invoke(settings, "token", "issue", "--user", "no spaces")
    assert bad_user.exit_code == 2
    assert "user" in bad_user.output
    revoked = await _invoke(settings, "token", "revoke", digest[:12])
    assert revoked.output.strip() == "revoked 1 token(s)"
    assert not await r.exists(settings.keys.gateway_tokens())


async def test_agentbus_gateway_without_tokens_listens_on_loopback_only(
    settings: Settings, coordinator: Coordinator
) -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "coordinator.cli", "--redis-url", settings.url,
        "--namespace", settings.namespace, "gateway", "--host", "0.0.0.0", "--port", "0",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        assert process.stdout is not None
        warning = (await asyncio.wait_for(process.stdout.readline(), 30)).decode()
        assert "no tokens issued, so listening on 127.0.0.1 only (not 0.0.0.0)" in warning
        banner = (await asyncio.wait_for(process.stdout.readline(), 30)).decode()
        match = re.search(r"dashboard (http://127\.0\.0\.1:\d+)/", banner)
        assert match, banner
        async with httpx.AsyncClient(base_url=match.group(1)) as http:

            async def answered() -> httpx.Response | None:
                try:
                    return await http.get("/api/agents")
                except httpx.ConnectError:
                    return None

            response = await wait_for(answered, message="the gateway answers")
            assert response.status_code == 200
            page = await http.get("/")
            assert "agentbus" in page.text
    finally:
        process.send_signal(signal.SIGTERM)
        _, err = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == 0, err.decode()

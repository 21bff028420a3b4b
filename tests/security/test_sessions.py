"""Attack: reading or writing another tenant's session activity (issue 14, item 6).

Tenants of the test policy (``tests/security/conftest.py``): alice acts for ``acme``, bob for
``globex``; the gateway serves ``acme`` and ``globex``, not ``initech``. In ``off`` mode every
credential reads and writes every session (the documented outcome); in ``acl`` mode another
tenant's activity is ``NOPERM`` to read, write and publish on, and the gateway still streams a
session to its owner with its own Redis user.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import orjson
import pytest
from pydantic import ValidationError
from redis.exceptions import NoPermissionError
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from agent_sdk import Bus
from agent_sdk.messaging import Message
from coordinator import Coordinator
from coordinator.acl.policy import Policy
from gateway.app import create_app
from gateway.settings import GatewaySettings
from gateway.tokens import TokenStore
from schemas.errors import PermissionDenied
from schemas.keys import KeySpace
from tests.gateway.conftest import serve, sse
from tests.security.conftest import World


def test_tenant_keys_carry_their_tenant_and_untenanted_keys_are_unchanged() -> None:
    keys = KeySpace("ns")
    assert keys.session_activity("chat-1") == "ns:session:{chat-1}:activity"
    assert keys.session_seq("chat-1") == "ns:session:{chat-1}:seq"
    assert keys.session_owner("chat-1") == "ns:session:{chat-1}:owner"
    assert keys.session_channel("chat-1") == "ns:session:chat-1:activity"
    assert keys.session_activity("chat-1", "acme") == "ns:tenant:acme:session:{chat-1}:activity"
    assert keys.session_seq("chat-1", "acme") == "ns:tenant:acme:session:{chat-1}:seq"
    assert keys.session_owner("chat-1", "acme") == "ns:tenant:acme:session:{chat-1}:owner"
    assert keys.session_channel("chat-1", "acme") == "ns:tenant:acme:session:chat-1:activity"
    assert keys.session_activity("chat-1", "acme").startswith(keys.tenant_prefix("acme"))


async def test_another_tenants_session_activity(world: World) -> None:
    acme_stream = world.keys.session_activity("chat-a", "acme")
    async with Bus(world.settings("alice")) as alice, Bus(world.settings("bob")) as bob:
        own = await alice.activity_log.emit("chat-a", "alice", "agent_started", tenant="acme")
        assert own.seq == 1
        watched = alice.watch_session("chat-a", tenant="acme")
        assert (await anext(watched)).id == own.id  # a tenant's agents read its sessions
        await watched.aclose()
        raw_bob = await world.raw("bob")
        if world.secure:
            with pytest.raises(PermissionDenied):
                await bob.activity_log.emit("chat-a", "bob", "agent_thinking", tenant="acme")
            with pytest.raises(PermissionDenied):
                await anext(bob.watch_session("chat-a", tenant="acme"))
            for attempt in (
                raw_bob.xrange(acme_stream),
                raw_bob.xread({acme_stream: "0-0"}),
                raw_bob.xadd(acme_stream, {"type": "agent_completed", "agent": "bob"}),
                raw_bob.xtrim(acme_stream, maxlen=0),
                raw_bob.delete(acme_stream),
                raw_bob.get(world.keys.session_owner("chat-a", "acme")),
                raw_bob.publish(world.keys.session_channel("chat-a", "acme"), "{}"),
            ):
                with pytest.raises(NoPermissionError):
                    await attempt
            # in acl mode every session has a tenant: the untenanted keys are nobody's
            with pytest.raises(PermissionDenied):
                await alice.activity_log.emit("chat-u", "alice", "agent_started")
            # bob's own tenant works as alice's does
            theirs = await bob.activity_log.emit("chat-a", "bob", "agent_started", tenant="globex")
            assert theirs.seq == 1
            with pytest.raises(NoPermissionError):
                await (await world.raw("alice")).xrange(
                    world.keys.session_activity("chat-a", "globex")
                )
            # operators read every tenant
            operator = await world.raw("operator")
            assert len(await operator.xrange(acme_stream)) == 1
        else:  # documented outcome: one credential reads and writes everything
            await bob.activity_log.emit("chat-a", "bob", "agent_thinking", tenant="acme")
            assert len(await raw_bob.xrange(acme_stream)) == 2
            await alice.activity_log.emit("chat-u", "alice", "agent_started")
            assert await raw_bob.exists(world.keys.session_activity("chat-u"))


async def test_the_gateway_streams_a_tenant_session_to_its_owner(
    world: World, coord: Coordinator
) -> None:
    async with Bus(world.base) as admin_bus:
        store = TokenStore(admin_bus.client, world.base)
        tokens = {
            "ann": await store.issue("ann", "viewer", tenant="acme"),
            "gus": await store.issue("gus", "viewer", tenant="globex"),
            "ivy": await store.issue("ivy", "viewer", tenant="initech"),
            "olga": await store.issue("olga", "operator", tenant="acme"),
        }

    def bearer(user: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {tokens[user]}"}

    gateway_settings = GatewaySettings(**world.settings("gateway").model_dump())
    worker_done = asyncio.Event()
    async with (
        world.agent("alice", "alice") as alice,
        serve(create_app(gateway_settings)) as live,
        httpx.AsyncClient(base_url=live.url) as http,
    ):

        @alice.on("ask")
        async def ask(payload: Any, msg: Message) -> str:
            async with alice.activity(msg) as act:  # session and tenant from the headers
                await act.thinking({"q": payload})
                act.result = "done"
            worker_done.set()
            return "done"

        started = await http.post(
            "/api/sessions", json={"session": "chat-1"}, headers=bearer("ann")
        )
        assert started.status_code == 201, started.text
        assert started.json() == {"session": "chat-1", "owner": "ann", "tenant": "acme"}
        # the same id in another tenant is another session (no squatting across tenants)
        other = await http.post("/api/sessions", json={"session": "chat-1"}, headers=bearer("gus"))
        assert other.status_code == 201, other.text
        refused = await http.post("/api/sessions", json={}, headers=bearer("ivy"))
        if world.secure:  # the gateway's Redis user does not serve initech
            assert refused.status_code == 403, refused.text
            assert "tenant 'initech'" in refused.json()["error"]["description"]
        else:
            assert refused.status_code == 201, refused.text

        await alice.bus.activity_log.emit("chat-1", "alice", "agent_started", tenant="acme")
        async with sse(http, "/api/sessions/chat-1/events", bearer("ann")) as stream:
            assert (await stream.next()).event == "ready"
            event = await stream.next()
            assert (event.event, event.data["agent"]) == ("agent_started", "alice")
        # gus's chat-1 is globex's, empty: nothing of acme's shows, and acme's is not his
        sneaky = await http.get("/api/sessions/chat-1/events?tenant=acme", headers=bearer("gus"))
        assert sneaky.status_code == 403

        # a request with a session: the agent reports in the caller's tenant (headers)
        asked = await http.post(
            "/api/agents/alice/requests",
            json={"type": "ask", "payload": "q1", "session": "chat-2", "timeout": 10},
            headers=bearer("olga"),
        )
        assert asked.status_code == 200, asked.text
        assert worker_done.is_set()
        async with sse(http, "/api/sessions/chat-2/events", bearer("olga")) as stream:
            kinds = [e.event for e in await stream.events(4)]
        assert kinds == ["ready", "agent_started", "agent_thinking", "agent_completed"]
        held = await world.admin.xlen(world.keys.session_activity("chat-2", "acme"))
        assert held == 3

        # over WebSocket: an operator names another tenant; a viewer may not
        await _emit_as_bob(world, "chat-1")
        ws = live.url.replace("http://", "ws://") + "/api/sessions/chat-1/events/ws"
        async with connect(f"{ws}?tenant=globex&access_token={tokens['olga']}") as socket:
            assert orjson.loads(await socket.recv())["event"] == "ready"
            event = orjson.loads(await socket.recv())
            assert (event["event"], event["data"]["agent"]) == ("agent_started", "bob")
        with pytest.raises(InvalidStatus):
            async with connect(f"{ws}?tenant=acme&access_token={tokens['gus']}"):
                pass


async def _emit_as_bob(world: World, session: str) -> None:
    """bob (tenant globex) reports on ``session`` of globex."""
    async with Bus(world.settings("bob")) as bob:
        await bob.activity_log.emit(session, "bob", "agent_started", tenant="globex")


def test_policy_tenants_are_patterns_of_tenant_names() -> None:
    ok = Policy.model_validate({"identities": {"a": {"names": ["a"], "tenants": ["acme", "t-*"]}}})
    assert ok.identities["a"].may_tenant("t-1")
    assert not ok.identities["a"].may_tenant("acme2")
    for bad in ("a:b", "{x}", "a?", ""):
        with pytest.raises(ValidationError):
            Policy.model_validate({"identities": {"a": {"names": ["a"], "tenants": [bad]}}})

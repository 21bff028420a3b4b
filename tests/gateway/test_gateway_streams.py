"""Live streams on a real uvicorn server: the change feed and session activity over SSE and
WebSocket, exact resumption by Last-Event-ID, one shared Redis read per stream, keep-alive
events, slow clients cut off, trimmed resume points reported."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import orjson
import redis.asyncio as aioredis
from websockets.asyncio.client import ClientConnection, connect

from agent_sdk import Agent, Bus
from agent_sdk.settings import Settings
from gateway.app import create_app
from gateway.fanout import StreamHub, follow, id_key
from gateway.state import registry_frame
from tests.gateway.conftest import MakeSettings, ServeGateway, SseEvent, sse
from tests.support import wait_for


async def _feed_ids(r: aioredis.Redis, settings: Settings, after: str) -> list[str]:
    entries: Any = await r.xrange(settings.keys.events(), min=f"({after}")
    return [eid for eid, _ in entries]


async def test_change_feed_resumes_exactly_by_last_event_id(
    live_gateway: ServeGateway, settings: Settings, r: aioredis.Redis
) -> None:
    async with live_gateway() as live, httpx.AsyncClient(base_url=live.url) as client:
        async with sse(client, "/api/events") as stream:
            ready = await stream.next()
            assert ready.event == "ready"
            start = ready.data["revision"]
            async with Agent("one", "worker", settings=settings):
                pass
            first = await stream.through("agent_deregistered", "one")
        assert (first[0].event, first[-1].event) == ("agent_registered", "agent_deregistered")
        assert all(e.data["name"] == "one" for e in first)
        assert [e.id for e in first] == [e.data["revision"] for e in first]
        assert [e.id for e in first] == await _feed_ids(r, settings, start)
        last_seen = first[-1].id
        assert last_seen is not None
        # disconnected: changes go on
        for name in ("two", "three"):
            async with Agent(name, "worker", settings=settings):
                pass
        expected = await _feed_ids(r, settings, last_seen)
        assert len(expected) >= 4
        async with sse(client, "/api/events", {"Last-Event-ID": last_seen}) as stream:
            assert (await stream.next()).event == "ready"
            resumed = await stream.through("agent_deregistered", "three")
            async with Agent("four", "worker", settings=settings):
                pass
            live_ones = await stream.through("agent_deregistered", "four")
        assert [e.id for e in resumed] == expected  # nothing lost, nothing repeated
        assert [(e.event, e.data["name"]) for e in resumed if e.event != "agent_updated"] == [
            ("agent_registered", "two"), ("agent_deregistered", "two"),
            ("agent_registered", "three"), ("agent_deregistered", "three"),
        ]  # fmt: skip
        assert {e.data["name"] for e in live_ones} == {"four"}
        everything = await _feed_ids(r, settings, start)
        assert [e.id for e in first + resumed + live_ones] == everything
        # ?since= is the same resume point for a first connection (EventSource cannot set headers)
        query = f"?since={last_seen}&role=worker&type=agent_registered"
        async with sse(client, "/api/events" + query) as s:
            await s.next()
            filtered = await s.events(3)
        assert [e.data["name"] for e in filtered] == ["two", "three", "four"]


async def test_bad_resume_points_and_filters_are_400(live_gateway: ServeGateway) -> None:
    async with live_gateway() as live, httpx.AsyncClient(base_url=live.url) as client:
        for url, headers in (
            ("/api/events", {"Last-Event-ID": "yesterday"}),
            ("/api/events?since=1-2-3", {}),
            ("/api/events?type=agent_exploded", {}),
            ("/api/sessions/bad%20id/events", {}),
        ):
            response = await client.get(url, headers=headers)
            assert response.status_code == 400, url
            assert response.json()["error"]["code"] == "bad_request"


async def test_one_shared_redis_read_feeds_every_client(
    live_gateway: ServeGateway, settings: Settings, r: aioredis.Redis
) -> None:
    clients = 20
    async with live_gateway() as live, httpx.AsyncClient(base_url=live.url) as client:
        gateway = live.app.state.gateway
        async with asyncio.TaskGroup() as group:
            readers = []
            streams = [sse(client, "/api/events") for _ in range(clients)]
            for cm in streams:
                reader = await cm.__aenter__()
                assert (await reader.next()).event == "ready"
                readers.append(reader)
            assert len(gateway.registry.subscribers) == clients

            async def blocked_xreads() -> int:
                listed: Any = await r.client_list()
                return sum(
                    1 for c in listed
                    if c.get("name") == f"agentbus:{settings.namespace}" and c.get("cmd") == "xread"
                )  # fmt: skip

            assert await wait_for(blocked_xreads, message="the hub blocked in XREAD") == 1
            async with Agent("shared", "worker", settings=settings):
                pass
            results = [
                group.create_task(reader.through("agent_deregistered", "shared"))
                for reader in readers
            ]
        expected = [e.id for e in results[0].result()]
        assert len(expected) >= 2
        for task in results:
            assert [e.id for e in task.result()] == expected
        assert await blocked_xreads() == 1
        for cm in streams:
            await cm.__aexit__(None, None, None)
        await wait_for(lambda: not gateway.registry.subscribers, message="clients gone")


async def test_keepalives_are_real_events(live_gateway: ServeGateway) -> None:
    async with (
        live_gateway(gateway_keepalive=0.2) as live,
        httpx.AsyncClient(base_url=live.url) as client,
        sse(client, "/api/events") as s,
    ):
        ready = await s.next()
        ping = await s.next()
    assert ping.event == "keepalive"
    assert ping.id is None  # a keep-alive never moves the client's resume point
    assert ping.data["revision"] == ready.data["revision"]


async def test_a_slow_client_is_cut_off_with_a_final_event(
    settings: Settings, r: aioredis.Redis
) -> None:
    """The hub never waits for a subscriber: one that is ``limit`` events behind is dropped,
    gets what it had queued and a final ``cutoff`` event; the others keep everything."""
    hub = StreamHub(r, settings, settings.keys.events(), registry_frame, block_ms=200)
    slow = follow(hub, None, replay_all=False, limit=3, keepalive=30)
    fast = follow(hub, None, replay_all=False, limit=3, keepalive=30)
    try:
        assert (await anext(slow)).kind == "ready"
        assert (await anext(fast)).kind == "ready"
        ids = []
        for n in range(6):
            fields = {"type": "agent_updated", "name": f"a{n}", "instance_id": "i", "role": "x",
                      "at": "2026-01-01T00:00:00.000Z"}  # fmt: skip
            ids.append(await r.xadd(settings.keys.events(), fields))
            got = await asyncio.wait_for(anext(fast), 10)  # the fast one keeps up
            assert got.id == ids[-1]
        frames = [await asyncio.wait_for(anext(slow), 10) for _ in range(4)]
        assert [f.id for f in frames[:3]] == ids[:3]
        assert frames[3].kind == "cutoff"
        assert orjson.loads(frames[3].data) == {"reason": "slow_consumer", "first_missed": ids[3]}
        assert hub.cutoffs == 1
        assert len(hub.subscribers) == 1
    finally:
        await slow.aclose()
        await fast.aclose()
        await hub.stop()


async def test_a_trimmed_resume_point_gets_events_lost(
    live_gateway: ServeGateway, settings: Settings, r: aioredis.Redis
) -> None:
    key = settings.keys.events()
    fields = {"type": "agent_updated", "name": "x", "instance_id": "i", "role": "r",
              "at": "2026-01-01T00:00:00.000Z"}  # fmt: skip
    first = await r.xadd(key, fields)
    for _ in range(200):
        await r.xadd(key, fields)
    await r.xtrim(key, maxlen=10)
    async with (
        live_gateway() as live,
        httpx.AsyncClient(base_url=live.url) as client,
        sse(client, f"/api/events?since={first}") as s,
    ):
        await s.next()
        lost = await s.next()
        assert lost.event == "events_lost"
        assert lost.data["code"] == "events_lost"
        try:
            extra: SseEvent | None = await s.next(timeout=5)
        except EOFError:
            extra = None
        assert extra is None  # the stream ended


async def _emit(bus: Bus, session: str, agent: str, kinds: list[str]) -> list[str]:
    return [str((await bus.activity_log.emit(session, agent, kind, {"n": i})).id)
            for i, kind in enumerate(kinds)]  # fmt: skip


async def test_session_events_in_order_and_resumable_within_their_session(
    live_gateway: ServeGateway, settings: Settings, r: aioredis.Redis
) -> None:
    kinds = ["agent_started", "agent_thinking", "tool_executing", "tool_completed"]
    async with live_gateway() as live, Bus(settings) as bus:
        await _emit(bus, "chat-b", "helper", ["agent_started"])
        ids = await _emit(bus, "chat-a", "helper", kinds)
        async with httpx.AsyncClient(base_url=live.url) as client:
            async with sse(client, "/api/sessions/chat-a/events") as s:
                await s.next()
                held = await s.events(4)
                later = await _emit(bus, "chat-a", "helper", ["agent_completed"])
                (done,) = await s.events(1)
            assert [e.event for e in held] == kinds
            assert [e.data["seq"] for e in held] == [1, 2, 3, 4]
            assert [e.id for e in held] == ids
            assert (done.event, done.data["seq"], done.id) == ("agent_completed", 5, later[0])
            async with sse(client, "/api/sessions/chat-a/events", {"Last-Event-ID": ids[1]}) as s:
                await s.next()
                resumed = await s.events(3)
            assert [e.data["seq"] for e in resumed] == [3, 4, 5]

            # A resume id taken from another session is only a position in this one: never
            # that session's events. Stream ids are per stream, so chat-a's id may equal one of
            # chat-b's (XADDs in the same millisecond; the test used to expect that one and
            # hang): the expected events are chat-b's entries after the id, with at least one.
            async def chat_b_passed_it() -> bool:
                (eid,) = await _emit(bus, "chat-b", "helper", ["agent_thinking"])
                return id_key(eid) > id_key(ids[0])

            await wait_for(chat_b_passed_it, message="an id of chat-b after chat-a's")
            key_b = settings.keys.session_activity("chat-b")
            after: Any = await r.xrange(key_b, min=f"({ids[0]}")
            expected = [eid for eid, _ in after]
            async with sse(client, "/api/sessions/chat-b/events", {"Last-Event-ID": ids[0]}) as s:
                await s.next()
                only_b = await s.events(len(expected))
            assert [e.id for e in only_b] == expected
            assert {e.data["session"] for e in only_b} == {"chat-b"}
        await wait_for(lambda: not live.app.state.gateway.sessions, message="session hubs released")


async def test_a_client_gone_before_the_first_byte_releases_its_session_hub(
    gateway_settings: MakeSettings,
) -> None:
    """A client that goes away while the response head is being written (its socket never
    drained) cancels the response before its body runs: the session hub is released all the
    same (it used to stay held, with its blocking Redis connection, for good)."""
    app = create_app(gateway_settings())
    gateway = app.state.gateway
    await gateway.start()
    try:
        head_written = asyncio.Event()

        async def receive() -> dict[str, Any]:
            await head_written.wait()
            return {"type": "http.disconnect"}

        async def send(message: Any) -> None:
            head_written.set()
            await asyncio.Event().wait()  # a client that stopped reading

        path = "/api/sessions/chat-gone/events"
        scope = {
            "type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": "1.1", "method": "GET", "scheme": "http", "path": path,
            "raw_path": path.encode(), "query_string": b"", "headers": [], "root_path": "",
            "client": ("127.0.0.1", 50000), "server": ("127.0.0.1", 8080), "app": app,
        }  # fmt: skip
        for _ in range(3):
            head_written.clear()
            await asyncio.wait_for(app(scope, receive, send), 10)
            assert gateway.sessions == {}
            assert gateway._holders == {}
    finally:
        await gateway.stop()


async def _recv(ws: ClientConnection, timeout: float = 10.0) -> Any:
    return orjson.loads(await asyncio.wait_for(ws.recv(), timeout))


async def test_websocket_variant(live_gateway: ServeGateway, settings: Settings) -> None:
    async with live_gateway() as live, Bus(settings) as bus:
        ws_url = live.url.replace("http://", "ws://")
        async with connect(ws_url + "/api/events/ws") as ws:
            ready = await _recv(ws)
            assert ready["event"] == "ready"
            async with Agent("ws-agent", "worker", settings=settings):
                pass
            got: list[Any] = []
            async with asyncio.timeout(10):
                while not got or got[-1]["event"] != "agent_deregistered":
                    got.append(await _recv(ws))
        assert got[0]["event"] == "agent_registered"
        assert {m["data"]["name"] for m in got} == {"ws-agent"}
        async with connect(f"{ws_url}/api/events/ws?since={got[0]['id']}") as ws:
            await _recv(ws)
            again = await _recv(ws)
        assert again["id"] == got[1]["id"]
        ids = await _emit(bus, "chat-ws", "helper", ["agent_started", "agent_completed"])
        async with connect(ws_url + "/api/sessions/chat-ws/events/ws") as ws:
            await _recv(ws)
            session = [await _recv(ws) for _ in range(2)]
        assert [m["id"] for m in session] == ids
        await wait_for(lambda: not live.app.state.gateway.sessions, message="session hubs released")


async def test_streams_resume_after_redis_restarts(
    gateway_settings: Any, settings: Settings
) -> None:
    """The shared reader survives Redis going away: the events written after Redis is back
    reach the client that stayed connected."""
    from agent_sdk.embedded import RedisServer, find_redis_server
    from gateway.app import create_app
    from tests.gateway.conftest import serve

    server = RedisServer(binary=find_redis_server())
    with server:
        app = create_app(gateway_settings(redis_url=server.url, retry_max_backoff=0.1))
        own = Settings(**{**settings.model_dump(), "redis_url": server.url})
        async with (
            serve(app) as live,
            httpx.AsyncClient(base_url=live.url) as client,
            sse(client, "/api/sessions/chat-r/events") as s,
        ):
            await s.next()
            async with Bus(own) as bus:
                await _emit(bus, "chat-r", "helper", ["agent_started"])
            (before,) = await s.events(1)
            server.stop()
            server.start()
            async with Bus(own) as bus:
                await _emit(bus, "chat-r", "helper", ["agent_completed"])
            (after,) = await s.events(1)
        assert (before.event, after.event) == ("agent_started", "agent_completed")

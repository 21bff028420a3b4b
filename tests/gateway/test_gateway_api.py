"""The gateway's REST API on an ASGI client against a real Redis and coordinator: agents
(filters, search, pagination, health), stats, dead letters, send and request, and every error
mapped to its status with a JSON body."""

from __future__ import annotations

import asyncio
from contextlib import AsyncExitStack
from typing import Any

import httpx
import orjson
import redis.asyncio as aioredis

from agent_sdk import Agent
from agent_sdk.embedded import RedisServer
from agent_sdk.settings import Settings
from gateway.api_agents import agent_bytes, agent_json
from gateway.app import create_app
from tests.gateway.conftest import MakeSettings, asgi_client
from tests.support import wait_for


def _error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error"]["code"] == code, body
    assert body["error"]["description"]
    return dict(body["error"])


async def test_openapi_document_lists_every_endpoint(http: httpx.AsyncClient) -> None:
    doc = (await http.get("/openapi.json")).json()
    for path in (
        "/api/agents", "/api/agents/{name}", "/api/agents/{name}/tasks", "/api/stats",
        "/api/deadletters",
        "/api/deadletters/{letter_id}/replay", "/api/agents/{name}/messages",
        "/api/agents/{name}/requests", "/api/roles/{role}/messages", "/api/roles/{role}/requests",
        "/api/roles/{role}/gather", "/api/events", "/api/sessions/{session}/events", "/metrics",
    ):  # fmt: skip
        assert path in doc["paths"], path
    assert doc["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"


def _fleet(settings: Settings) -> list[Agent]:
    return [
        Agent("alpha", "summarizer", capabilities=["pdf", "html"], tags=["en"], version="1.2.0",
              description="Summarizes long PDF reports", settings=settings),
        Agent("beta", "summarizer", capabilities=["html"], tags=["de"], version="2.0.0",
              description="Short German digests", settings=settings),
        Agent("gamma", "translator", capabilities=["text"], tags=["en", "de"], version="1.0.0",
              description="Translates reports", settings=settings),
        Agent("delta", "summarizer", capabilities=["pdf"], tags=["fr"], version="1.5.0",
              settings=settings),
    ]  # fmt: skip


async def _names(http: httpx.AsyncClient, query: str) -> list[str]:
    response = await http.get("/api/agents" + query)
    assert response.status_code == 200, response.text
    return [a["name"] for a in response.json()["agents"]]


async def test_agents_filters_search_and_pages(http: httpx.AsyncClient, settings: Settings) -> None:
    async with AsyncExitStack() as stack:
        for agent in _fleet(settings):
            await stack.enter_async_context(agent)
        assert await _names(http, "") == ["alpha", "beta", "delta", "gamma"]
        assert await _names(http, "?role=summarizer") == ["alpha", "beta", "delta"]
        assert await _names(http, "?capability=pdf&capability=html") == ["alpha"]
        assert await _names(http, "?tag=de") == ["beta", "gamma"]
        assert await _names(http, "?version=^1&role=summarizer") == ["alpha", "delta"]
        assert await _names(http, "?q=REPORTS") == ["alpha", "gamma"]
        assert await _names(http, "?q=pdf%20reports") == ["alpha"]
        assert await _names(http, "?status=ready&min_health=100") == [
            "alpha", "beta", "delta", "gamma"
        ]  # fmt: skip
        assert await _names(http, "?status=draining") == []

        seen, cursor, pages = [], None, 0
        while True:
            query = "?limit=3" + (f"&cursor={cursor}" if cursor else "")
            page = (await http.get("/api/agents" + query)).json()
            assert page["total"] == 4
            seen += [a["name"] for a in page["agents"]]
            pages += 1
            cursor = page["next_cursor"]
            if cursor is None:
                break
        assert (seen, pages) == (["alpha", "beta", "delta", "gamma"], 2)
        first = (await http.get("/api/agents?limit=1")).json()
        assert first["agents"][0]["health"] == 100
        assert first["revision"].count("-") == 1


async def test_listed_agents_are_their_records_as_json_plus_health(
    http: httpx.AsyncClient, settings: Settings
) -> None:
    """``GET /api/agents`` encodes each record straight to JSON (``agent_bytes``): the same
    bytes as the record's JSON-mode dump plus its score, and every field of ``GET /api/agents/
    {name}``'s record."""
    agent = Agent("epsilon", "writer", capabilities=["pdf"], tags=["en"], version="1.0.0",
                  description='Ünïcode, "quotes" and \\ back', region="eu-1",
                  metadata={"team": "blue"}, max_concurrency=3, settings=settings)  # fmt: skip
    async with agent:
        listed = (await http.get("/api/agents?role=writer")).json()["agents"]
        details = (await http.get("/api/agents/epsilon")).json()
        record = agent.record
    # the two reads may straddle a heartbeat (every 100 ms here): only its fields may differ
    volatile = {"last_seen", "load", "status", "health"}
    assert len(listed) == 1
    listed_agent = {k: v for k, v in listed[0].items() if k not in volatile}
    assert listed_agent == {k: v for k, v in details["agent"].items() if k not in volatile}
    assert set(listed[0]) == set(details["agent"]) | {"health"}
    assert record is not None
    for score in (0, 87, 100):
        expected = orjson.dumps({**agent_json(record), "health": score})
        assert agent_bytes(record, score) == expected


async def test_bad_queries_are_400_with_a_code(http: httpx.AsyncClient) -> None:
    _error(await http.get("/api/agents?cursor=%%%"), 400, "bad_request")
    _error(await http.get("/api/agents?cursor=AAAA"), 400, "bad_request")
    _error(await http.get("/api/agents?limit=0"), 400, "bad_request")
    _error(await http.get("/api/agents?limit=abc"), 400, "bad_request")
    _error(await http.get("/api/agents?status=sleepy"), 400, "bad_request")
    _error(await http.get("/api/agents?version=not-a-range"), 400, "bad_request")
    _error(await http.get("/api/agents?role=bad%20role"), 400, "bad_request")
    _error(await http.get("/api/agents/bad%20name"), 400, "bad_request")
    _error(await http.get("/api/agents/nobody"), 404, "not_found")
    _error(await http.get("/api/nothing-here"), 404, "not_found")
    _error(await http.delete("/api/agents"), 405, "method_not_allowed")


async def test_request_reply_and_every_error_status(
    http: httpx.AsyncClient, settings: Settings
) -> None:
    calc = Agent("calc", "calculator", settings=settings)
    never = asyncio.Event()

    @calc.on("divide")
    async def divide(payload: dict[str, float]) -> float:
        return payload["a"] / payload["b"]

    @calc.on("hang")
    async def hang(payload: Any) -> None:
        await never.wait()

    async with calc:
        ok = await http.post(
            "/api/agents/calc/requests", json={"type": "divide", "payload": {"a": 1, "b": 4}}
        )
        assert (ok.status_code, ok.json()) == (200, {"reply": 0.25})
        by_role = await http.post(
            "/api/roles/calculator/requests", json={"type": "divide", "payload": {"a": 9, "b": 3}}
        )
        assert by_role.json() == {"reply": 3.0}
        zero = {"type": "divide", "payload": {"a": 1, "b": 0}}
        failed = _error(
            await http.post("/api/agents/calc/requests", json=zero), 502, "handler_error"
        )
        assert "ZeroDivisionError" in failed["description"]
        _error(
            await http.post("/api/agents/calc/requests", json={"type": "nope"}), 400, "unknown_type"
        )
        _error(
            await http.post("/api/agents/ghost/requests", json={"type": "divide"}), 404, "not_found"
        )
        _error(
            await http.post("/api/roles/astrologer/requests", json={"type": "x"}),
            503,
            "no_responders",
        )
        _error(
            await http.post("/api/roles/astrologer/messages", json={"type": "x"}),
            503,
            "no_responders",
        )
        _error(
            await http.post("/api/agents/calc/requests", json={"type": "divide", "timeout": 3600}),
            400,
            "bad_request",
        )
        gathered = await http.post(
            "/api/roles/calculator/gather", json={"type": "divide", "payload": {"a": 2, "b": 1}}
        )
        assert gathered.json() == {"replies": {"calc": 2.0}, "errors": {}, "missing": []}
        # last: the hanging handler holds calc's only slot until the agent stops
        _error(
            await http.post("/api/agents/calc/requests", json={"type": "hang", "timeout": 0.3}),
            504,
            "timeout",
        )
        never.set()


async def test_malformed_bodies_are_400_and_big_ones_413(
    http: httpx.AsyncClient, gateway_settings: MakeSettings
) -> None:
    url = "/api/agents/calc/messages"
    headers = {"Content-Type": "application/json"}
    bad_json = _error(
        await http.post(url, content=b"{not json", headers=headers), 400, "bad_request"
    )
    assert "JSON" in bad_json["description"]
    _error(await http.post(url, json={"payload": 1}), 400, "bad_request")  # no type
    _error(await http.post(url, json={"type": 5}), 400, "bad_request")
    _error(await http.post(url, json={"type": "x", "extra": 1}), 400, "bad_request")
    _error(await http.post(url, json=["a list"]), 400, "bad_request")
    _error(await http.post(url, json={"type": "x", "ttl": -1}), 400, "bad_request")
    limit = gateway_settings().gateway_max_body_bytes
    big = b'{"type": "x", "payload": "' + b"a" * limit + b'"}'
    _error(await http.post(url, content=big, headers=headers), 413, "too_large")

    async def chunks() -> Any:
        for _ in range(limit // 65536 + 2):
            yield b"a" * 65536

    _error(await http.post(url, content=chunks(), headers=headers), 413, "too_large")


async def test_send_to_an_agent_and_to_a_role(http: httpx.AsyncClient, settings: Settings) -> None:
    got: list[tuple[str, Any, str | None]] = []
    worker = Agent("worker-1", "worker", settings=settings)

    @worker.on("job")
    async def job(payload: Any, msg: Any) -> None:
        got.append((msg.sender, payload, msg.headers.get("session")))

    async with worker:
        sent = await http.post(
            "/api/agents/worker-1/messages", json={"type": "job", "payload": 1, "session": "chat-1"}
        )
        assert sent.status_code == 202
        assert sent.json()["id"]
        by_role = await http.post("/api/roles/worker/messages", json={"type": "job", "payload": 2})
        assert by_role.status_code == 202
        await wait_for(lambda: len(got) == 2, message="both messages handled")
    assert sorted((p, s) for _, p, s in got) == [(1, "chat-1"), (2, None)]
    _error(await http.post("/api/agents/worker-1/messages", json={"type": "job"}), 404, "not_found")
    queued = await http.post(
        "/api/agents/worker-1/messages", json={"type": "job", "queue_if_absent": True}
    )
    assert queued.status_code == 202


async def test_agent_details_usage_and_health(http: httpx.AsyncClient, settings: Settings) -> None:
    flaky = Agent("flaky", "worker", max_concurrency=2, settings=settings)

    @flaky.on("work")
    async def work(payload: dict[str, bool]) -> str:
        if payload["fail"]:
            raise RuntimeError("boom")
        return "ok"

    async with flaky:
        for fail in (False, False, False, True):
            await http.post(
                "/api/agents/flaky/requests", json={"type": "work", "payload": {"fail": fail}}
            )

        async def usage_flushed() -> dict[str, Any] | None:
            body: dict[str, Any] = (await http.get("/api/agents/flaky")).json()
            done = body["usage"] and body["usage"][0]["invocations"] == 4
            return body if done and len(body["tasks"]) == 4 else None

        body = await wait_for(usage_flushed, message="usage flushed")
        assert body["agent"]["name"] == "flaky"
        assert body["agent"]["max_concurrency"] == 2
        assert body["usage"][0]["type"] == "work"
        assert body["usage"][0]["errors"] == 1
        assert body["health"]["error_rate"] == 0.25
        assert body["health"]["score"] == 75  # 100 × (1 − 0.25), idle, fast, ready
        assert await _names(http, "?min_health=76") == []
        assert await _names(http, "?min_health=75") == ["flaky"]
        # the task history: newest first, the failure with its code, paginated
        recent = [(t["type"], t["outcome"], t["ok"]) for t in body["tasks"]]
        assert len(recent) == 4
        assert recent[0] == ("work", "handler_error", False)
        assert recent.count(("work", "ok", True)) == 3
        first = (await http.get("/api/agents/flaky/tasks?limit=3")).json()
        assert [t["entry_id"] for t in first["tasks"]] == [t["entry_id"] for t in body["tasks"][:3]]
        assert first["next_cursor"] == first["tasks"][-1]["entry_id"]
        rest = (await http.get(f"/api/agents/flaky/tasks?cursor={first['next_cursor']}")).json()
        assert [t["entry_id"] for t in rest["tasks"]] == [body["tasks"][3]["entry_id"]]
        assert rest["next_cursor"] is None
        task = rest["tasks"][0]
        assert task["sender"]
        assert task["kind"] == "request"
        assert task["duration_ms"] >= 0
    # the history outlives the agent; a name with neither is 404; bad input is 400
    kept = (await http.get("/api/agents/flaky/tasks")).json()
    assert len(kept["tasks"]) == 4
    _error(await http.get("/api/agents/nobody/tasks"), 404, "not_found")
    _error(await http.get("/api/agents/flaky/tasks?cursor=yesterday"), 400, "bad_request")
    _error(await http.get("/api/agents/flaky/tasks?limit=0"), 400, "bad_request")


async def test_stats_and_metrics(http: httpx.AsyncClient, settings: Settings) -> None:
    async with AsyncExitStack() as stack:
        for agent in _fleet(settings):
            await stack.enter_async_context(agent)
        stats = (await http.get("/api/stats")).json()
        assert stats["agents"] == 4
        assert stats["by_status"]["ready"] == 4
        assert stats["by_role"] == {"summarizer": 3, "translator": 1}
        assert stats["capacity"] == 4
        assert stats["load"] == 0
        assert stats["coordinators"] == 1
        assert stats["control_lag"] is not None
        assert stats["control_lag"] >= 0
        assert stats["deadletters"] == 0
        metrics = await http.get("/metrics")
        assert metrics.status_code == 200
        assert metrics.headers["content-type"].startswith("text/plain")
        text = metrics.text
        assert 'agentbus_agents{role="summarizer",status="ready"} 3.0' in text
        assert 'agentbus_agents{role="translator",status="draining"} 0.0' in text
        assert 'agentbus_agent_load{agent="alpha",role="summarizer"} 0.0' in text
        assert "agentbus_deadletters 0.0" in text
        assert "agentbus_control_stream_lag" in text
        assert "agentbus_coordinators_alive 1.0" in text


async def test_metrics_carry_handler_counters_and_latency(
    http: httpx.AsyncClient, settings: Settings
) -> None:
    echo = Agent("echo", "echo", settings=settings)

    @echo.on("ping")
    async def ping(payload: Any) -> Any:
        return payload

    async with echo:
        for i in range(3):
            await http.post("/api/agents/echo/requests", json={"type": "ping", "payload": i})

        async def scraped() -> str | None:
            text = (await http.get("/metrics")).text
            return (
                text
                if 'agentbus_handler_invocations_total{agent="echo",type="ping"} 3.0' in text
                else None
            )

        text = await wait_for(scraped, message="usage in /metrics")
    assert 'agentbus_handler_errors_total{agent="echo",type="ping"} 0.0' in text
    assert 'agentbus_handler_latency_seconds_bucket{agent="echo",le="+Inf",type="ping"} 3.0' in text
    assert 'agentbus_handler_latency_seconds_count{agent="echo",le' not in text


async def test_dead_letters_list_and_replay(
    http: httpx.AsyncClient, settings: Settings, r: aioredis.Redis
) -> None:
    lonely = Agent("lonely", "worker", settings=settings)
    async with lonely:
        for n in range(3):
            await http.post("/api/agents/lonely/messages", json={"type": "unheard", "payload": n})

        async def three() -> dict[str, Any] | None:
            body: dict[str, Any] = (await http.get("/api/deadletters?limit=2")).json()
            return body if body["total"] == 3 else None

        page = await wait_for(three, message="three dead letters")
    assert len(page["deadletters"]) == 2
    assert page["next_cursor"]
    first = page["deadletters"][0]
    assert first["code"] == "unknown_type"
    assert first["type"] == "unheard"
    rest = (await http.get(f"/api/deadletters?cursor={page['next_cursor']}")).json()
    assert len(rest["deadletters"]) == 1
    assert rest["next_cursor"] is None
    replayed = await http.post(f"/api/deadletters/{first['id']}/replay")
    assert replayed.status_code == 200, replayed.text
    assert replayed.json()["new_id"]
    assert (await http.get("/api/deadletters")).json()["total"] == 2
    assert await r.xlen(settings.keys.inbox("lonely")) >= 1
    _error(await http.post(f"/api/deadletters/{first['id']}/replay"), 404, "not_found")
    _error(await http.post("/api/deadletters/garbage/replay"), 400, "bad_request")
    _error(await http.get("/api/deadletters?cursor=xyz"), 400, "bad_request")


async def test_redis_down_is_503_and_the_api_recovers(gateway_settings: MakeSettings) -> None:
    from agent_sdk.embedded import find_redis_server

    server = RedisServer(binary=find_redis_server())
    with server:
        app = create_app(gateway_settings(redis_url=server.url, retry_max_backoff=0.1))
        async with asgi_client(app) as http:
            assert (await http.get("/api/agents")).status_code == 200
            server.stop()
            down = _error(await http.get("/api/agents"), 503, "connection")
            assert "cannot reach Redis" in down["description"]
            _error(await http.get("/healthz"), 503, "connection")
            server.start()
            assert (await http.get("/api/agents")).status_code == 200

"""Bus agents as A2A agents, driven by the published A2A Python SDK's own client (a2a-sdk):
agent cards from registry records, SendMessage as a bus request, SendStreamingMessage with the
session's activity as status updates, errors, tokens, and 0.3's message/send."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from a2a.client import A2ACardResolver, ClientConfig, create_client
from a2a.types.a2a_pb2 import (
    Message,
    Part,
    Role,
    SendMessageRequest,
    StreamResponse,
    TaskState,
)
from a2a.utils.errors import A2AError
from google.protobuf import json_format

from agent_sdk import Agent, Settings
from agent_sdk.messaging import Message as BusMessage
from gateway.tokens import Role as TokenRole
from gateway.tokens import TokenStore
from tests.gateway.conftest import ServeGateway
from tests.support import wait_for


def _worker(settings: Settings) -> Agent:
    agent = Agent(
        "helper-1", "assistant", version="2.1.0", description="Answers questions",
        capabilities=["search"], tags=["en"], settings=settings,
    )  # fmt: skip

    @agent.on("ask")
    async def ask(payload: Any, msg: BusMessage) -> Any:
        session = msg.headers.get("session")
        if payload == "fail":
            raise RuntimeError("cannot answer that")
        if session is None:
            return {"answer": payload}
        async with agent.activity(session) as act:
            await act.thinking({"plan": "look it up"})
            await act.tool_executing("search", {"q": payload})
            await act.tool_completed("search", {"hits": 3})
            act.result = {"answer": payload}
        return f"answer to {payload}" if isinstance(payload, str) else {"answer": payload}

    return agent


def _message(*parts: Part, context: str = "", **metadata: str) -> SendMessageRequest:
    msg = Message(message_id="m-1", role=Role.ROLE_USER, parts=list(parts), context_id=context)
    if metadata:
        msg.metadata.update(metadata)
    return SendMessageRequest(message=msg)


async def _all(stream: AsyncIterator[Any]) -> list[StreamResponse]:
    return [item async for item in stream]


def _data(part: Part) -> Any:
    return json_format.MessageToDict(part.data)


async def test_the_agent_card_comes_from_the_registry_record(
    live_gateway: ServeGateway, settings: Settings
) -> None:
    async with live_gateway() as live, _worker(settings), httpx.AsyncClient() as http:
        resolver = A2ACardResolver(http, f"{live.url}/a2a/helper-1")
        card = await resolver.get_agent_card()
        assert card.name == "helper-1"
        assert card.description == "Answers questions"
        assert card.version == "2.1.0"
        assert card.capabilities.streaming
        (interface,) = card.supported_interfaces
        assert interface.url == f"{live.url}/a2a/helper-1"
        assert interface.protocol_binding == "JSONRPC"
        assert interface.protocol_version == "1.0"
        assert [s.id for s in card.skills] == ["ask", "capability:search"]
        assert "message-type" in card.skills[0].tags
        missing = await http.get(f"{live.url}/a2a/nobody/.well-known/agent-card.json")
        assert missing.status_code == 404
        assert missing.json()["error"]["code"] == "not_found"


async def test_send_message_is_a_bus_request(
    live_gateway: ServeGateway, settings: Settings
) -> None:
    async with live_gateway() as live, _worker(settings):
        config = ClientConfig(streaming=False)
        async with await create_client(f"{live.url}/a2a/helper-1", config) as client:
            (reply,) = await _all(client.send_message(_message(Part(text="redis"))))
            assert reply.HasField("message")
            assert reply.message.role == Role.ROLE_AGENT
            assert [p.text for p in reply.message.parts] == ["answer to redis"]
            context = reply.message.context_id
            assert context  # the session the request carried
            # a data part is the payload as JSON; the type may be named in the metadata
            data = Part(data=json_format.ParseDict({"q": 1}, Part().data))
            (as_data,) = await _all(client.send_message(_message(data, type="ask")))
            assert _data(as_data.message.parts[0]) == {"answer": {"q": 1}}
            # a handler error is a failed task with the error
            (failed,) = await _all(client.send_message(_message(Part(text="fail"))))
            assert failed.HasField("task")
            assert failed.task.status.state == TaskState.TASK_STATE_FAILED
            text = failed.task.status.message.parts[0].text
            assert text.startswith("[handler_error]")
            assert "cannot answer that" in text
            # a type the agent does not handle is the caller's mistake: InvalidParams
            with pytest.raises(A2AError, match="unknown_type") as caught:
                await _all(client.send_message(_message(Part(text="x"), type="nope")))
            assert type(caught.value).__name__ == "InvalidParamsError"


async def test_streaming_maps_the_sessions_activity_to_status_updates(
    live_gateway: ServeGateway, settings: Settings
) -> None:
    async with live_gateway() as live, _worker(settings):
        client = await create_client(f"{live.url}/a2a/helper-1", ClientConfig())
        async with client:
            request = _message(Part(text="streams"), context="chat-a2a")
            events = await _all(client.send_message(request))
        await wait_for(lambda: not live.app.state.gateway.sessions, message="hub released")
    assert events[0].HasField("task")
    assert events[0].task.status.state == TaskState.TASK_STATE_SUBMITTED
    task_id = events[0].task.id
    updates = [e.status_update for e in events if e.HasField("status_update")]
    working = [u for u in updates if u.status.state == TaskState.TASK_STATE_WORKING]
    kinds = [json_format.MessageToDict(u.metadata)["agentbus.event"] for u in working]
    assert kinds == [
        "agent_started", "agent_thinking", "tool_executing", "tool_completed", "agent_completed",
    ]  # fmt: skip
    first = _data(working[0].status.message.parts[0])
    assert (first["session"], first["agent"], first["seq"]) == ("chat-a2a", "helper-1", 1)
    assert {u.task_id for u in updates} == {task_id}
    assert {u.context_id for u in updates} == {"chat-a2a"}
    artifacts = [e.artifact_update for e in events if e.HasField("artifact_update")]
    assert [p.text for p in artifacts[0].artifact.parts] == ["answer to streams"]
    assert updates[-1].status.state == TaskState.TASK_STATE_COMPLETED
    assert events[-1].HasField("status_update")


async def test_writes_need_an_operator_token(
    gateway_settings: Any, live_gateway: ServeGateway, settings: Settings, r: Any
) -> None:
    store = TokenStore(r, settings)
    viewer = await store.issue("vera", TokenRole.VIEWER)
    operator = await store.issue("otto", TokenRole.OPERATOR)
    async with live_gateway() as live, _worker(settings), httpx.AsyncClient() as http:
        base = f"{live.url}/a2a/helper-1"
        card_url = base + "/.well-known/agent-card.json"
        assert (await http.get(card_url)).status_code == 401
        seen = await http.get(card_url, headers={"Authorization": f"Bearer {viewer}"})
        assert seen.status_code == 200
        assert "bearer" in seen.json()["securitySchemes"]
        body = {"jsonrpc": "2.0", "id": 1, "method": "SendMessage", "params": {"message": {
            "messageId": "m", "role": "ROLE_USER", "parts": [{"text": "hi"}]}}}  # fmt: skip
        headers = {"A2A-Version": "1.0"}
        assert (await http.post(base, json=body, headers=headers)).status_code == 401
        refused = await http.post(
            base, json=body, headers={**headers, "Authorization": f"Bearer {viewer}"}
        )
        assert refused.status_code == 403
        accepted = await http.post(
            base, json=body, headers={**headers, "Authorization": f"Bearer {operator}"}
        )
        assert accepted.status_code == 200
        assert accepted.json()["result"]["message"]["parts"] == [{"text": "answer to hi"}]


async def test_a2a_0_3_message_send(live_gateway: ServeGateway, settings: Settings) -> None:
    async with live_gateway() as live, _worker(settings), httpx.AsyncClient() as http:
        body = {"jsonrpc": "2.0", "id": "x", "method": "message/send", "params": {"message": {
            "messageId": "m", "role": "user", "kind": "message",
            "parts": [{"kind": "text", "text": "old"}]}}}  # fmt: skip
        response = await http.post(f"{live.url}/a2a/helper-1", json=body)
        assert response.status_code == 200
        result = response.json()["result"]
        assert result["kind"] == "message"
        assert result["parts"] == [{"kind": "text", "text": "answer to old"}]

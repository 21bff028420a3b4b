"""Direct send, requests, handlers and role queues on a real Redis (registry written by hand)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import redis.asyncio as aioredis
from pydantic import BaseModel

from agent_sdk.messaging import Message
from agent_sdk.messaging.requests import Requester
from agent_sdk.settings import Settings
from schemas.envelope import Kind
from schemas.errors import (
    AgentNotFound,
    ErrorCode,
    NoResponders,
    PayloadTooLarge,
    RemoteError,
    RequestTimeout,
)
from tests.messaging_helpers import node, unregister
from tests.support import wait_for


class Doc(BaseModel):
    text: str


class Summary(BaseModel):
    words: int


async def test_send_to_agent_reaches_its_handler(settings: Settings, r: aioredis.Redis) -> None:
    got: list[Message] = []
    async with node(settings, "b", r=r) as b, node(settings, "a", r=r) as a:

        @b.on("note")
        async def note(payload: dict[str, Any], msg: Message) -> None:
            got.append(msg)

        mid = await a.send("b", "note", {"x": 1}, headers={"h": "v"})
        await wait_for(lambda: got, timeout=5, message="handler call")
    msg = got[0]
    assert (msg.id, msg.type, msg.sender, msg.kind) == (mid, "note", "a", Kind.SEND)
    assert msg.payload == {"x": 1}
    assert msg.headers == {"h": "v"}
    assert msg.delivery_count == 1
    assert msg.entry_id is not None


async def test_send_to_unknown_agent_fails_at_once_unless_queued(
    settings: Settings, r: aioredis.Redis
) -> None:
    async with node(settings, "a", r=r) as a:
        with pytest.raises(AgentNotFound, match="'ghost' is not registered"):
            await a.send("ghost", "note", {})
        assert await r.xlen(settings.keys.inbox("ghost")) == 0
        await a.send("ghost", "note", {"n": 1}, queue_if_absent=True)
        assert await r.xlen(settings.keys.inbox("ghost")) == 1


async def test_request_reply_with_models(settings: Settings, r: aioredis.Redis) -> None:
    async with node(settings, "s", r=r) as s, node(settings, "c", r=r) as c:

        @s.on("summarize")
        async def summarize(payload: Doc, msg: Message) -> Summary:
            return Summary(words=len(payload.text.split()))

        assert await c.request("s", "summarize", {"text": "a b c"}, timeout=5) == {"words": 3}
        assert await c.request("s", "summarize", Doc(text="x"), timeout=5) == {"words": 1}


async def test_request_errors_are_remote_errors_and_responder_keeps_serving(
    settings: Settings, r: aioredis.Redis
) -> None:
    async with node(settings, "s", r=r) as s, node(settings, "c", r=r) as c:

        @s.on("summarize")
        async def summarize(payload: Doc) -> Summary:
            if payload.text == "boom":
                raise RuntimeError("kaput")
            return Summary(words=1)

        with pytest.raises(RemoteError) as bad:
            await c.request("s", "summarize", {"txt": 1}, timeout=5)
        assert bad.value.code == ErrorCode.BAD_REQUEST
        assert bad.value.details["errors"][0]["loc"] == ["text"]

        with pytest.raises(RemoteError) as unknown:
            await c.request("s", "nope", {}, timeout=5)
        assert unknown.value.code == ErrorCode.UNKNOWN_TYPE

        with pytest.raises(RemoteError) as failed:
            await c.request("s", "summarize", {"text": "boom"}, timeout=5)
        assert failed.value.code == ErrorCode.HANDLER_ERROR
        assert "kaput" in failed.value.description

        assert await c.request("s", "summarize", {"text": "ok"}, timeout=5) == {"words": 1}
        # Every request was acknowledged: nothing left pending in the responder's inbox.
        pending = await r.xpending(settings.keys.inbox("s"), "agent")
        assert pending["pending"] == 0


async def test_request_timeout_cleans_up(settings: Settings, r: aioredis.Redis) -> None:
    release = asyncio.Event()
    async with node(settings, "s", r=r) as s, node(settings, "c", r=r) as c:

        @s.on("slow")
        async def slow(payload: Any) -> str:
            await release.wait()
            return "late"

        with pytest.raises(RequestTimeout, match="no reply to 'slow' from s"):
            await c.request("s", "slow", {}, timeout=0.3)
        assert c._replies is not None
        assert not c._replies._waiting  # type: ignore[attr-defined]
        release.set()


async def test_a_cancelled_request_leaves_nothing_behind(
    settings: Settings, r: aioredis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Cancelled while waiting (past liveness checks): its reply future is dropped, its timer
    and any liveness check are stopped."""
    checks = 0
    real = Requester._check_alive

    async def counted(self: Requester, *args: Any) -> None:
        nonlocal checks
        checks += 1
        await real(self, *args)

    monkeypatch.setattr(Requester, "_check_alive", counted)
    async with node(settings, "c", r=r) as c, node(settings, "s", r=r, start=False):
        task = asyncio.create_task(c.request("s", "work", {}, timeout=60))
        assert c._replies is not None
        waiting = c._replies._waiting  # type: ignore[attr-defined]
        await wait_for(lambda: checks >= 2, timeout=5, message="two liveness checks")
        fut = next(iter(waiting.values()))
        assert not task.done()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert not waiting
        assert fut.cancelled()


async def test_request_to_agent_that_dies_fails_before_the_timeout(
    settings: Settings, r: aioredis.Redis
) -> None:
    async with node(settings, "c", r=r) as c, node(settings, "s", r=r, start=False):
        # "s" is registered but never reads its inbox; then the registry drops it.
        task = asyncio.create_task(c.request("s", "work", {}, timeout=60))
        await wait_for(lambda: r.xlen(settings.keys.inbox("s")), timeout=5)
        await unregister(r, settings, "s", "worker")
        with pytest.raises(AgentNotFound, match="left or expired"):
            await asyncio.wait_for(task, timeout=30)


async def test_payload_too_large_is_refused_at_send(settings: Settings, r: aioredis.Redis) -> None:
    async with node(settings, "a", r=r) as a:
        with pytest.raises(PayloadTooLarge) as e:
            await a.send("a", "big", {"blob": "x" * settings.max_payload_bytes})
        assert e.value.details["limit"] == settings.max_payload_bytes
        assert await r.xlen(settings.keys.inbox("a")) == 0


async def test_role_send_is_handled_by_exactly_one_member(
    settings: Settings, r: aioredis.Redis
) -> None:
    seen: dict[str, list[int]] = {"w1": [], "w2": []}
    async with (
        node(settings, "w1", "pool", r=r) as w1,
        node(settings, "w2", "pool", r=r) as w2,
        node(settings, "c", "client", r=r) as c,
    ):
        for name, m in (("w1", w1), ("w2", w2)):

            def make(n: str) -> Any:
                async def job(payload: dict[str, int]) -> None:
                    seen[n].append(payload["i"])

                return job

            m.on("job")(make(name))
        for i in range(40):
            await c.send(role="pool", type="job", payload={"i": i})
        await wait_for(lambda: len(seen["w1"]) + len(seen["w2"]) >= 40, timeout=10)
        assert sorted(seen["w1"] + seen["w2"]) == list(range(40))
        with pytest.raises(NoResponders, match="no live member of role 'empty'"):
            await c.send(role="empty", type="job", payload={})


async def test_request_to_role(settings: Settings, r: aioredis.Redis) -> None:
    async with node(settings, "w1", "pool", r=r) as w1, node(settings, "c", "client", r=r) as c:

        @w1.on("echo")
        async def echo(payload: Any, msg: Message) -> Any:
            return {"echo": payload, "target": msg.target}

        reply = await c.request(role="pool", type="echo", payload=[1, 2], timeout=5)
        assert reply == {"echo": [1, 2], "target": "role:pool"}
        with pytest.raises(NoResponders):
            await c.request(role="nobody", type="echo", payload=[], timeout=5)


async def test_messages_from_one_sender_are_handled_in_order(
    settings: Settings, r: aioredis.Redis
) -> None:
    seen: list[int] = []
    async with node(settings, "w", r=r) as w, node(settings, "c", r=r) as c:

        @w.on("n")
        async def n(payload: int) -> None:
            seen.append(payload)

        for i in range(100):
            await c.send("w", "n", i)
        await wait_for(lambda: len(seen) == 100, timeout=10)
    assert seen == list(range(100))


async def test_request_many_reports_errors_and_missing_members(
    settings: Settings, r: aioredis.Redis
) -> None:
    release = asyncio.Event()
    async with (
        node(settings, "ok", "pool", r=r) as ok,
        node(settings, "bad", "pool", r=r) as bad,
        node(settings, "slow", "pool", r=r) as slow,
        node(settings, "c", "client", r=r) as c,
    ):

        @ok.on("status")
        async def fine(payload: Any) -> str:
            return "fine"

        @bad.on("status")
        async def broken(payload: Any) -> str:
            raise ValueError("broken")

        @slow.on("status")
        async def stuck(payload: Any) -> str:
            await release.wait()
            return "late"

        result = await c.request_many(role="pool", type="status", payload={}, timeout=1.0)
        assert dict(result) == {"ok": "fine"}
        assert list(result.errors) == ["bad"]
        assert result.errors["bad"].code == ErrorCode.HANDLER_ERROR
        assert result.missing == ["slow"]
        assert not result.complete
        first = await c.request_many(
            role="pool", type="status", payload={}, timeout=5, max_replies=1
        )
        assert len(first.replies) + len(first.errors) == 1
        release.set()

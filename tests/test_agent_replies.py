"""The reply router: futures by correlation id, control callback, dead letters, reconnects."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aioredis

from agent_sdk import Settings
from agent_sdk.replies import ReplyRouter
from schemas.envelope import Envelope, Kind, encode_json
from schemas.keys import KeySpace
from tests.support import wait_for


@pytest.fixture
def controls() -> list[Envelope]:
    """Control envelopes the router handed to its callback."""
    return []


@pytest.fixture
async def router(
    settings: Settings, keys: KeySpace, controls: list[Envelope]
) -> AsyncIterator[ReplyRouter]:
    rr = ReplyRouter(settings, keys.replies("me", "inst-1"), on_unsolicited=controls.append)
    await rr.start()
    yield rr
    await rr.stop()


def reply(cid: str, **kw: object) -> bytes:
    return encode_json(Envelope(kind=Kind.REPLY, type="answer", correlation_id=cid, **kw))  # type: ignore[arg-type]


async def test_expect_resolves_with_the_matching_reply(
    router: ReplyRouter, r: aioredis.Redis
) -> None:
    first, second = router.expect("c1"), router.expect("c2")
    await r.lpush(router.key, reply("c2", payload=2), reply("c1", payload=1))
    assert (await asyncio.wait_for(first, 5)).payload == 1
    assert (await asyncio.wait_for(second, 5)).payload == 2


async def test_control_without_a_waiter_goes_to_the_callback_and_late_replies_are_dropped(
    router: ReplyRouter, r: aioredis.Redis, controls: list[Envelope]
) -> None:
    router.expect("gone")
    router.discard("gone")
    late = reply("gone")
    notice = encode_json(Envelope(kind=Kind.CONTROL, type="reannounce", sender="coordinator"))
    await r.lpush(router.key, late, notice)
    await wait_for(lambda: controls, message="the control callback")
    assert [c.type for c in controls] == ["reannounce"]
    assert await r.llen(router.key) == 0


async def test_undecodable_entries_are_dead_lettered(
    router: ReplyRouter, r: aioredis.Redis, keys: KeySpace
) -> None:
    waiter = router.expect("ok")
    await r.lpush(router.key, b"not json", b'{"v": 9, "type": "x"}', reply("ok"))
    await asyncio.wait_for(waiter, 5)  # the bad entries did not stall the loop
    letters = await wait_for(lambda: r.xrange(keys.deadletter()), message="two dead letters")
    await wait_for(lambda: _count(r, keys.deadletter(), 2))
    letters = await r.xrange(keys.deadletter())
    fields = [f for _, f in letters]
    assert {f["source"] for f in fields} == {router.key}
    assert {f["code"] for f in fields} == {"undecodable", "unsupported_version"}
    assert {f["orig.data"] for f in fields} == {"not json", '{"v": 9, "type": "x"}'}
    assert all(f["reason"] and f["failed_at"].endswith("Z") for f in fields)


async def _count(r: aioredis.Redis, key: str, n: int) -> bool:
    return bool(await r.xlen(key) >= n)


async def test_survives_a_killed_connection(router: ReplyRouter, r: aioredis.Redis) -> None:
    async def blocked_ids() -> list[str]:
        clients = await r.client_list()
        return [c["id"] for c in clients if c.get("cmd") in ("brpop", "blmpop")]

    ids = await wait_for(blocked_ids, message="the router blocking in BLMPOP (BRPOP on 6.2)")
    for cid in ids:
        await r.client_kill_filter(_id=cid)
    waiter = router.expect("after")
    await r.lpush(router.key, reply("after", payload="still here"))
    assert (await asyncio.wait_for(waiter, 10)).payload == "still here"


async def test_stop_is_idempotent_and_cancels_waiters(settings: Settings, keys: KeySpace) -> None:
    rr = ReplyRouter(settings, keys.replies("me", "inst-2"))
    await rr.stop()  # before start: nothing to do
    await rr.start()
    await rr.start()
    assert rr.running
    waiter = rr.expect("never")
    await rr.stop()
    await rr.stop()
    assert rr.stopped.is_set()
    assert waiter.cancelled()


async def _pops(r: aioredis.Redis) -> int:
    stats: Any = await r.info("commandstats")
    return sum(
        int(stats.get(f"cmdstat_{c}", {}).get("calls", 0)) for c in ("brpop", "rpop", "blmpop")
    )


async def test_a_backlog_is_routed_in_order_a_batch_per_round_trip(
    router: ReplyRouter, r: aioredis.Redis, controls: list[Envelope]
) -> None:
    """A host's list can get thousands at once (its agents' announce results, a coordinator's
    re-announce requests): one pop per round trip fell behind a busy event loop for good."""
    n = 2000
    before = await _pops(r)
    notices = [
        encode_json(Envelope(kind=Kind.CONTROL, type="reannounce", sender="c", payload=i))
        for i in range(n)
    ]
    await r.lpush(router.key, *notices)
    await wait_for(lambda: len(controls) == n, message="every notice routed")
    assert [c.payload for c in controls] == list(range(n))  # in arrival order
    assert await _pops(r) - before < n // 100  # batches, not one pop per entry

"""``Heartbeats.send_now``: members asking together share reports; the members that join a
report wait on it alone (no lock hand-over per member), and one that gives up does not fail the
others. ``_send`` is replaced: what is tested is who sends what, not the wire."""

from __future__ import annotations

import asyncio
from typing import Any, Literal

import fakeredis
import pytest

from agent_sdk.heartbeats import Heartbeats
from agent_sdk.settings import Settings


class _CountingLock(asyncio.Lock):
    def __init__(self) -> None:
        super().__init__()
        self.acquired = 0

    async def acquire(self) -> Literal[True]:
        self.acquired += 1
        return await super().acquire()


class _Member:
    def __init__(self, i: int) -> None:
        self.i = i
        self.sent_at: float | None = None

    def beat_sent(self, attempt: float) -> None:
        self.sent_at = attempt


class _HeldSend:
    """Stands in for ``Heartbeats._send``: records each report's size; the first is held until
    ``release`` is set (``started`` is set as each report is sent)."""

    def __init__(self) -> None:
        self.sends: list[int] = []
        self.started, self.release = asyncio.Event(), asyncio.Event()

    async def __call__(self, due: list[Any]) -> None:
        self.sends.append(len(due))
        self.started.set()
        if len(self.sends) == 1:
            await self.release.wait()


@pytest.fixture
def beats() -> Heartbeats:
    client = fakeredis.FakeAsyncRedis()
    return Heartbeats(client, Settings(namespace="hb-reports"), host="h", reply_to="r")


async def test_members_asking_together_share_two_reports(
    beats: Heartbeats, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first asker's report goes alone; everyone asking while it is out goes in the next:
    10,000 members in 2 sends, each member told its beat was sent, and the reports' lock taken
    once per report (10,000 hand-overs of it, one per turn of a busy event loop, outlasted the
    draining report's 5 s bound on a host of 10,000 stopping)."""
    send = _HeldSend()
    monkeypatch.setattr(beats, "_send", send)
    lock = _CountingLock()
    monkeypatch.setattr(beats, "_report_lock", lock)
    members = [_Member(i) for i in range(10_000)]
    first = asyncio.create_task(beats.send_now(members[0]))  # type: ignore[arg-type]
    async with asyncio.timeout(10):
        await send.started.wait()  # the first report is out: the others go in the next
        tasks = [asyncio.create_task(beats.send_now(m)) for m in members[1:]]  # type: ignore[arg-type]
        send.release.set()
        await asyncio.gather(first, *tasks)
    assert send.sends == [1, 9_999]
    assert all(m.sent_at is not None for m in members)
    assert lock.acquired == 2


async def test_a_member_giving_up_does_not_fail_the_others(
    beats: Heartbeats, monkeypatch: pytest.MonkeyPatch
) -> None:
    send = _HeldSend()
    monkeypatch.setattr(beats, "_send", send)
    first = asyncio.create_task(beats.send_now(_Member(0)))  # type: ignore[arg-type]
    await send.started.wait()
    # the first to ask opens the next report; it gives up before the report is sent
    quitter = asyncio.create_task(beats.send_now(_Member(1)))  # type: ignore[arg-type]
    others = [asyncio.create_task(beats.send_now(_Member(i))) for i in (2, 3)]  # type: ignore[arg-type]
    await asyncio.wait([quitter], timeout=0)  # one turn: every one of them asked
    quitter.cancel()
    send.release.set()
    async with asyncio.timeout(10):
        await asyncio.gather(first, *others)
    assert quitter.cancelled()
    assert send.sends == [1, 3]  # the one that gave up was in the report already


async def test_a_failed_report_fails_every_member_in_it(
    beats: Heartbeats, monkeypatch: pytest.MonkeyPatch
) -> None:
    started, release = asyncio.Event(), asyncio.Event()
    calls = 0

    async def send(due: list[Any]) -> None:
        nonlocal calls
        calls += 1
        started.set()
        if calls == 1:
            await release.wait()
            return
        raise ConnectionError("Redis went away")

    monkeypatch.setattr(beats, "_send", send)
    first = asyncio.create_task(beats.send_now(_Member(0)))  # type: ignore[arg-type]
    await started.wait()
    rest = [asyncio.create_task(beats.send_now(_Member(i))) for i in range(1, 4)]  # type: ignore[arg-type]
    release.set()
    await first
    results = await asyncio.gather(*rest, return_exceptions=True)
    assert all(isinstance(r, ConnectionError) for r in results)

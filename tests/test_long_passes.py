"""Passes over every agent of a host let the event loop run between chunks: the heartbeat round
(which members are due, then each told its beat was sent) and the renewal of held entries. At
10,000 agents each pass held the loop 10-16 ms once a second on a slow 2-core machine, and
every handler and reply of the host waited that long (docs/BENCHMARKS.md, session 14). What is
tested is that other tasks run during a pass and that a member leaving meanwhile is left out,
not how long a pass takes. ``_send`` is replaced: the wire is not what is tested."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import fakeredis
import pytest

from agent_sdk.heartbeats import Heartbeats
from agent_sdk.messaging.plane import Plane
from agent_sdk.settings import Settings

N = 2_500


class _Progress:
    """How far a pass has got, and where it was each time another task ran."""

    def __init__(self) -> None:
        self.looked = 0
        self.seen_at: list[int] = []
        #: Called at the first turn the watcher gets once the pass has begun.
        self.once_begun: Callable[[], None] | None = None

    async def watch(self, done: asyncio.Event) -> None:
        while not done.is_set():
            self.seen_at.append(self.looked)
            if self.looked and self.once_begun is not None:
                self.once_begun()
                self.once_begun = None
            await asyncio.sleep(0)  # a turn of the loop, not a wait for anything

    def ran_between(self, low: int, high: int) -> bool:
        return any(low < at < high for at in self.seen_at)


class _Fence:
    def __init__(self, progress: _Progress) -> None:
        self._progress = progress

    @property
    def lost(self) -> None:
        self._progress.looked += 1
        return None


class _Card:
    def __init__(self, name: str) -> None:
        self.name = name


class _Member:
    """What the heartbeat round reads of a ``Membership``."""

    def __init__(self, name: str, progress: _Progress) -> None:
        self.card = _Card(name)
        self.fence = _Fence(progress)
        self.needs_announce = False
        self.last_ok = time.monotonic()
        self._progress = progress
        self.sent_at: float | None = None

    def beat_sent(self, at: float) -> None:
        self._progress.looked += 1
        self.sent_at = at


async def _alongside(progress: _Progress, work: Any) -> None:
    done = asyncio.Event()
    watcher = asyncio.create_task(progress.watch(done))
    try:
        async with asyncio.timeout(30):
            await work
    finally:
        done.set()
        await watcher


async def test_the_heartbeat_round_lets_other_tasks_run_and_skips_who_left(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    beats = Heartbeats(
        fakeredis.FakeAsyncRedis(), Settings(namespace="passes"), host="h", reply_to="r"
    )
    progress = _Progress()
    members = [_Member(f"m{i}", progress) for i in range(N)]
    beats.members = {m.card.name: m for m in members}  # type: ignore[misc]
    sent: list[list[Any]] = []

    async def send(due: list[Any]) -> None:
        sent.append(due)

    monkeypatch.setattr(beats, "_send", send)
    gone = members[-1]
    progress.once_begun = lambda: beats.remove(gone)  # type: ignore[arg-type]
    await _alongside(progress, beats._beat())  # the interval's round: every member looked at
    assert progress.ran_between(0, N - 1)  # while the due members were picked
    assert progress.ran_between(N, 2 * N - 2)  # while they were told their beat was sent
    assert [len(d) for d in sent] == [N - 1]
    assert gone not in sent[0]
    assert gone.sent_at is None
    assert all(m.sent_at is not None for m in members[:-1])


class _Stream:
    def __init__(self, progress: _Progress) -> None:
        self._progress = progress

    @property
    def held(self) -> set[str]:
        self._progress.looked += 1
        return set()


class _Consumer:
    def __init__(self, progress: _Progress) -> None:
        self.streams = [_Stream(progress), _Stream(progress)]


async def test_renewing_held_entries_lets_other_tasks_run() -> None:
    plane = Plane(fakeredis.FakeAsyncRedis(), Settings(namespace="passes"))
    progress = _Progress()
    plane.reader._consumers = {_Consumer(progress): None for _ in range(N)}  # type: ignore[misc]
    await _alongside(progress, plane.reader.renew_leases())
    assert progress.looked == 2 * N  # every agent looked at: none holds an entry
    assert progress.ran_between(0, 2 * N - 2)

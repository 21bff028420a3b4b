"""Faults with real processes: a role member SIGKILLed while it holds messages; dead agents."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from agent_sdk import Bus, Settings
from coordinator import Coordinator
from schemas.errors import AgentNotFound
from schemas.keys import AGENT_GROUP
from tests.support import wait_for

ROOT = Path(__file__).resolve().parent.parent


class Worker:
    """A ``tests.messaging_worker`` child process and the lines it printed."""

    def __init__(self, settings: Settings, name: str, role: str, conc: int, hold: str) -> None:
        env = {
            **os.environ,
            "AGENTBUS_REDIS_URL": settings.url,
            "AGENTBUS_NAMESPACE": settings.namespace,
            "AGENTBUS_HEARTBEAT_INTERVAL": str(settings.heartbeat_interval),
            "AGENTBUS_TTL": str(settings.ttl),
            "AGENTBUS_CLAIM_INTERVAL": str(settings.claim_interval),
        }
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.messaging_worker", name, role, str(conc), hold],
            cwd=ROOT, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.strip())

    def seen(self, word: str) -> list[list[str]]:
        return [line.split()[1:] for line in list(self.lines) if line.split()[0] == word]

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait()

    def close(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._reader.join(5)
        if self.proc.stdout:
            self.proc.stdout.close()
        if self.proc.stdin and not self.proc.stdin.closed:
            self.proc.stdin.close()


@pytest.fixture
def workers() -> Iterator[list[Worker]]:
    made: list[Worker] = []
    yield made
    for w in made:
        w.close()


@pytest.mark.slow
async def test_killed_role_member_work_is_handled_by_another(
    coordinator: Coordinator, settings: Settings, r: aioredis.Redis, workers: list[Worker]
) -> None:
    w1 = Worker(settings, "w1", "pool", 5, "inf")  # holds every message until killed
    workers.append(w1)
    await wait_for(lambda: w1.seen("ready"), timeout=30, message="w1 ready")
    async with Bus(settings) as bus:
        ids = [await bus.send(role="pool", type="job", payload={"i": i}) for i in range(10)]
        await wait_for(lambda: len(w1.seen("start")) == 5, timeout=30, message="w1 holds 5")
        held = {mid for mid, _ in w1.seen("start")}
        w2 = Worker(settings, "w2", "pool", 5, "0")
        workers.append(w2)
        await wait_for(lambda: w2.seen("ready"), timeout=30, message="w2 ready")
        w1.kill()
        await wait_for(
            lambda: {mid for (mid,) in w2.seen("done")} >= set(ids),
            timeout=60,
            message="every message done by w2",
        )
    done = [mid for (mid,) in w2.seen("done")]
    assert sorted(set(done)) == sorted(ids)  # none lost
    # Duplicates are bounded by what the killed member held (here: none, it finished nothing).
    assert len(done) - len(ids) <= len(held)
    redelivered = {mid: int(n) for mid, n in w2.seen("start") if mid in held}
    assert set(redelivered) == held
    assert all(n >= 2 for n in redelivered.values())  # the delivery count shows the retry
    key = settings.keys.role_queue("pool")

    async def nothing_pending() -> bool:
        return (await r.xpending(key, AGENT_GROUP))["pending"] == 0

    await wait_for(nothing_pending, timeout=30)


@pytest.mark.slow
async def test_request_to_a_killed_agent_fails_well_before_its_timeout(
    coordinator: Coordinator, settings: Settings, workers: list[Worker]
) -> None:
    w = Worker(settings, "victim", "pool", 1, "0")
    workers.append(w)
    await wait_for(lambda: w.seen("ready"), timeout=30, message="victim ready")
    async with Bus(settings) as bus:
        assert await bus.request("victim", "job", {}, timeout=30) == "victim"
        w.kill()
        # The record is still there for up to one TTL; the request notices when it goes.
        task = asyncio.create_task(bus.request("victim", "job", {}, timeout=120))
        with pytest.raises(AgentNotFound):
            await asyncio.wait_for(task, timeout=30)
        with pytest.raises(AgentNotFound):
            await bus.send("victim", "job", {})  # now refused at once

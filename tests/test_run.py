"""``agentbus run`` and ``agent.run()``: run until a signal, drain, leave, exit 0.

Each test runs the real command in a child process against the test's Redis and an in-process
coordinator, and signals it as docker stop, systemd or Ctrl-C would.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from agent_sdk import Bus
from agent_sdk.settings import Settings
from coordinator import Coordinator
from schemas.events import RegistryEvent, RegistryEventType
from schemas.keys import KeySpace
from tests.support import wait_for

ROOT = Path(__file__).resolve().parents[1]
AGENTBUS = [sys.executable, "-m", "coordinator.cli"]


class Proc:
    """A child process whose stdout and stderr go to files (read after it exits)."""

    def __init__(self, argv: list[str], env: dict[str, str], tmp: Path) -> None:
        self.out, self.err = tmp / "out.txt", tmp / "err.txt"
        with self.out.open("wb") as out, self.err.open("wb") as err:
            self.proc = subprocess.Popen(
                argv, cwd=ROOT, env=env, stdout=out, stderr=err, stdin=subprocess.DEVNULL
            )

    def stdout(self) -> str:
        return self.out.read_text()

    def stderr(self) -> str:
        return self.err.read_text()

    async def wait(self, timeout: float) -> int:
        return await asyncio.to_thread(self.proc.wait, timeout)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def spawn(settings: Settings, tmp_path: Path) -> Iterator[Any]:
    procs: list[Proc] = []

    def start(*argv: str, name: str = "runner-1", **extra: str) -> Proc:
        env = {
            **os.environ,
            "AGENTBUS_REDIS_URL": settings.url,
            "AGENTBUS_NAMESPACE": settings.namespace,
            "AGENTBUS_HEARTBEAT_INTERVAL": str(settings.heartbeat_interval),
            "AGENTBUS_TTL": str(settings.ttl),
            "AGENTBUS_SHUTDOWN_GRACE": "5",
            "RUN_TARGET_NAME": name,
            "PYTHONUNBUFFERED": "1",
            **extra,
        }
        d = tmp_path / f"p{len(procs)}"
        d.mkdir()
        proc = Proc(list(argv), env, d)
        procs.append(proc)
        return proc

    yield start
    for p in procs:
        p.close()


async def _events(r: aioredis.Redis, keys: KeySpace, name: str) -> list[RegistryEvent]:
    rows: Any = await r.xrange(keys.events())
    return [e for e in (RegistryEvent.from_fields(i, f) for i, f in rows) if e.name == name]


async def test_sigterm_drains_leaves_and_exits_zero(
    coordinator: Coordinator, settings: Settings, r: aioredis.Redis, keys: KeySpace, spawn: Any
) -> None:
    proc = spawn(*AGENTBUS, "run", "tests.run_target:make_agent")
    await wait_for(lambda: r.exists(keys.record("runner-1")), timeout=20, message="registered")
    async with Bus(settings) as bus:
        reply = asyncio.ensure_future(
            bus.request("runner-1", "job", {"n": 1, "hold": 1.0}, timeout=10)
        )
        await wait_for(lambda: "start 1" in proc.stdout(), message="the job started")
        proc.proc.send_signal(signal.SIGTERM)  # docker stop, systemd, Kubernetes
        assert await reply == "ok"  # the in-flight handler finished and replied
    assert await proc.wait(15) == 0, proc.stderr()
    assert "done 1" in proc.stdout()
    assert "Traceback" not in proc.stderr()
    assert "SIGTERM received: draining" in proc.stderr()
    assert not await r.exists(keys.record("runner-1"))
    kinds = [e.type for e in await _events(r, keys, "runner-1")]
    assert RegistryEventType.AGENT_DEREGISTERED in kinds  # left, not expired
    assert RegistryEventType.AGENT_EXPIRED not in kinds
    # a restart right away is never refused
    again = spawn(*AGENTBUS, "run", "tests.run_target:make_agent_async")
    await wait_for(lambda: r.exists(keys.record("runner-1")), timeout=20, message="again")
    again.proc.send_signal(signal.SIGINT)  # Ctrl-C
    assert await again.wait(15) == 0, again.stderr()
    assert "Traceback" not in again.stderr()


async def test_a_second_signal_exits_at_once(
    coordinator: Coordinator, settings: Settings, r: aioredis.Redis, keys: KeySpace, spawn: Any
) -> None:
    proc = spawn(sys.executable, "-m", "tests.run_target", name="runner-2")  # agent.run()
    await wait_for(lambda: r.exists(keys.record("runner-2")), timeout=20, message="registered")
    async with Bus(settings) as bus:
        await bus.send("runner-2", "job", {"n": 2, "hold": 60})
        await wait_for(lambda: "start 2" in proc.stdout(), message="the long job started")
        proc.proc.send_signal(signal.SIGTERM)
        await wait_for(lambda: "draining" in proc.stderr(), message="draining")
        proc.proc.send_signal(signal.SIGTERM)
        assert await proc.wait(5) == 128 + signal.SIGTERM
    assert "done 2" not in proc.stdout()


@pytest.mark.parametrize(
    ("target", "says"),
    [
        ("tests.run_target:not_an_agent", "is int, not an Agent, a Host"),
        ("tests.run_target:missing", "has no attribute 'missing'"),
        ("tests.nowhere:agent", "cannot import 'tests.nowhere'"),
        ("tests.run_target", "expected module:attr"),
    ],
)
async def test_a_target_that_is_not_an_agent_is_refused(spawn: Any, target: str, says: str) -> None:
    proc = spawn(*AGENTBUS, "run", target)
    assert await proc.wait(30) == 2
    assert says in proc.stderr()
    assert "Traceback" not in proc.stderr()


async def test_an_agent_that_cannot_start_exits_one(
    settings: Settings, spawn: Any, r: aioredis.Redis
) -> None:
    """No coordinator: the announcement is not answered; one line, no traceback."""
    proc = spawn(*AGENTBUS, "run", "tests.run_target:make_agent", name="runner-3")
    env_timeout = 30
    assert await proc.wait(env_timeout) == 1
    assert "cannot start" in proc.stderr()
    assert "no coordinator answered" in proc.stderr()
    assert "Traceback" not in proc.stderr()


async def test_the_echo_example_runs_through_agentbus_run(
    coordinator: Coordinator, settings: Settings, r: aioredis.Redis, keys: KeySpace, spawn: Any
) -> None:
    """The README's service example: `agentbus run examples.echo:agent`, then a request."""
    proc = spawn(*AGENTBUS, "run", "examples.echo:agent")
    await wait_for(lambda: r.exists(keys.record("echo-1")), timeout=20, message="registered")
    async with Bus(settings) as bus:
        assert await bus.request("echo-1", "ping", {"hi": 1}, timeout=10) == {"hi": 1}
    proc.proc.send_signal(signal.SIGTERM)
    assert await proc.wait(15) == 0, proc.stderr()
    assert not await r.exists(keys.record("echo-1"))


async def test_a_killed_host_takes_all_its_agents_with_it(
    coordinator: Coordinator, settings: Settings, r: aioredis.Redis, keys: KeySpace, spawn: Any
) -> None:
    """`agentbus run module:host`: a host of 20 agents, then SIGKILL (no leave): every agent it
    carried expires (heartbeat_missed), and none is left in any index."""
    proc = spawn(*AGENTBUS, "run", "tests.run_target:make_host", name="hk", RUN_TARGET_AGENTS="20")
    names = {f"hk-{i}" for i in range(20)}
    await wait_for(lambda: _all_in(r, keys, names), timeout=30, message="all registered")
    proc.proc.kill()
    await proc.wait(10)
    await wait_for(lambda: _none_in(r, keys, names), timeout=10 * settings.ttl + 5, message="gone")
    expired = [e for e in await _events_all(r, keys) if e.type is RegistryEventType.AGENT_EXPIRED]
    assert {e.name for e in expired} == names
    assert {e.reason for e in expired} == {"heartbeat_missed"}
    assert await r.smembers(keys.role_index("hosted")) == set()


async def _all_in(r: aioredis.Redis, keys: KeySpace, names: set[str]) -> bool:
    return names <= set(await r.smembers(keys.agents()))


async def _none_in(r: aioredis.Redis, keys: KeySpace, names: set[str]) -> bool:
    return not names & set(await r.smembers(keys.agents()))


async def _events_all(r: aioredis.Redis, keys: KeySpace) -> list[RegistryEvent]:
    rows: Any = await r.xrange(keys.events())
    return [RegistryEvent.from_fields(i, f) for i, f in rows]


async def test_a_factory_takes_arguments_from_the_command_line(
    coordinator: Coordinator, settings: Settings, r: aioredis.Redis, keys: KeySpace, spawn: Any
) -> None:
    """`agentbus run examples.summarizer:build --arg name=sum-cli`: the demo's way."""
    proc = spawn(*AGENTBUS, "run", "examples.summarizer:build", "--arg", "name=sum-cli")
    await wait_for(lambda: r.exists(keys.record("sum-cli")), timeout=20, message="registered")
    async with Bus(settings) as bus:
        reply = await bus.request("sum-cli", "summarize", {"text": "one two"}, timeout=10)
    assert reply["by"] == "sum-cli"
    proc.proc.send_signal(signal.SIGTERM)
    assert await proc.wait(15) == 0, proc.stderr()


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (("examples.summarizer:build", "--arg", "nope"), "expects KEY=VALUE"),
        (("examples.summarizer:build", "--arg", "colour=red"), "does not take ['colour']"),
        (("examples.echo:agent", "--arg", "name=x"), "--arg is for factories"),
    ],
)
async def test_bad_factory_arguments_are_refused(
    spawn: Any, argv: tuple[str, ...], says: str
) -> None:
    proc = spawn(*AGENTBUS, "run", *argv)
    assert await proc.wait(30) == 2
    assert says in proc.stderr()
    assert "Traceback" not in proc.stderr()

"""Hosting plugins: every plugin found runs in a worker of its own, registered with its
manifest's card; a change reloads it beside the running version, with rollback; the catalogue
and the ``plugin_*`` events say what happened. Real redis-server, real worker processes."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import psutil
import pytest
import redis.asyncio as aioredis

from agent_sdk import Agent, Bus, RemoteError
from agent_sdk.settings import Settings
from coordinator import Coordinator
from coordinator.plugins import PluginSupervisor
from schemas.events import RegistryEvent, RegistryEventType
from schemas.keys import KeySpace
from tests.plugin_support import write_plugin
from tests.support import wait_for

ROOT = Path(__file__).resolve().parents[1]

Make = Callable[..., PluginSupervisor]


@pytest.fixture
async def make_supervisor(settings: Settings) -> AsyncIterator[Make]:
    made: list[PluginSupervisor] = []

    def make(*roots: Path, **kwargs: Any) -> PluginSupervisor:
        kwargs.setdefault("ready_timeout", 30.0)
        kwargs.setdefault("debounce_ms", 100)
        supervisor = PluginSupervisor(settings, list(roots), **kwargs)
        made.append(supervisor)
        return supervisor

    yield make
    for supervisor in made:
        await supervisor.stop()


async def _events(
    r: aioredis.Redis, keys: KeySpace, *types: RegistryEventType
) -> list[RegistryEvent]:
    rows: Any = await r.xrange(keys.events())
    events = [RegistryEvent.from_fields(i, f) for i, f in rows]
    return [e for e in events if e.type in types] if types else events


def _popen(argv: list[str], env: dict[str, str], err: Any) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        argv, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=err, stdin=subprocess.DEVNULL
    )


def _children() -> set[int]:
    return {p.pid for p in psutil.Process().children(recursive=True) if p.is_running()}


async def test_every_plugin_found_is_hosted_with_its_card_and_a_broken_one_is_refused(
    coordinator: Coordinator,
    settings: Settings,
    r: aioredis.Redis,
    keys: KeySpace,
    tmp_path: Path,
    make_supervisor: Make,
) -> None:
    before = _children()
    write_plugin(tmp_path, "alpha", version="1.0.0", capabilities=["echo"], tags=["t"])
    write_plugin(tmp_path, "beta", version="2.0.0", role="betas", replicas={"min": 2, "max": 3})
    write_plugin(tmp_path, "broken", code="def oops(:\n")
    (tmp_path / "not-a-plugin").mkdir()
    supervisor = make_supervisor(tmp_path)
    async with supervisor, Bus(settings) as bus:
        assert set(await r.smembers(keys.agents())) == {"alpha.a0", "beta.a0", "beta.a1"}
        record = await bus.get("alpha.a0")
        assert record is not None
        assert (record.role, record.version, record.capabilities) == ("alpha", "1.0.0", ("echo",))
        assert record.metadata["plugin"] == "alpha"
        assert record.pid != os.getpid()  # a worker process of its own
        reply = await bus.request(role="betas", type="echo", payload={"n": 1}, timeout=5)
        assert reply == {"echo": {"n": 1}, "version": "2.0.0"}
        # the broken one: a plugin_failed event naming the file and the line, catalogued failed
        (failed,) = await _events(r, keys, RegistryEventType.PLUGIN_FAILED)
        assert failed.name == "broken"
        assert failed.version == "1.0.0"
        assert "syntax error in broken_mod.py, line 1" in (failed.reason or "")
        assert await r.hget(keys.plugin("broken"), "status") == "failed"
        loaded = await _events(r, keys, RegistryEventType.PLUGIN_LOADED)
        assert sorted(e.name for e in loaded) == ["alpha", "beta"]
        entry = await r.hgetall(keys.plugin("beta"))
        assert entry["status"] == "running"
        assert entry["agents"] == "beta.a0,beta.a1"
        assert entry["path"] == str(tmp_path / "beta")
        assert len(_children() - before) == 2  # two workers (the broken one's has exited)
    assert await r.smembers(keys.agents()) == set()  # drained and left
    assert await r.hget(keys.plugin("beta"), "status") == "stopped"
    assert _children() - before == set()
    kinds = {e.type for e in await _events(r, keys)}
    assert RegistryEventType.AGENT_EXPIRED not in kinds


async def test_a_changed_plugin_is_reloaded_beside_the_old_one_which_then_drains(
    coordinator: Coordinator,
    settings: Settings,
    r: aioredis.Redis,
    keys: KeySpace,
    tmp_path: Path,
    make_supervisor: Make,
) -> None:
    directory = write_plugin(tmp_path, "gamma", version="1.0.0")
    async with make_supervisor(tmp_path) as supervisor, Bus(settings) as bus:
        first = await r.hget(keys.record("gamma.a0"), "pid")
        write_plugin(tmp_path, "gamma", version="1.1.0")
        await supervisor.apply({directory})
        assert set(await r.smembers(keys.agents())) == {"gamma.b0"}
        assert await r.hget(keys.record("gamma.b0"), "pid") != first
        reply = await bus.request(role="gamma", type="echo", payload=1, timeout=5)
        assert reply == {"echo": 1, "version": "1.1.0"}
        (reloaded,) = await _events(r, keys, RegistryEventType.PLUGIN_RELOADED)
        assert (reloaded.name, reloaded.version) == ("gamma", "1.1.0")
        deregistered = await _events(r, keys, RegistryEventType.AGENT_DEREGISTERED)
        assert [e.name for e in deregistered] == ["gamma.a0"]  # drained and left, not expired
        assert await r.hget(keys.plugin("gamma"), "version") == "1.1.0"
        # and back to slot a on the next reload
        write_plugin(tmp_path, "gamma", version="1.2.0")
        await supervisor.apply({directory})
        assert set(await r.smembers(keys.agents())) == {"gamma.a0"}


BROKEN_VERSIONS = {
    "syntax": ({"code": "def oops(:\n"}, "syntax error in gamma_mod.py, line 1"),
    "import": ({"code": "import agentbus_missing_dep\n"}, "'agentbus_missing_dep' was not found"),
    "manifest": ({"replicas": {"min": 0}}, "replicas.min: Input should be greater than"),
    "dependency": ({"dependencies": ["agentbus-absent>=1"]}, "'agentbus-absent>=1' is not"),
    "healthcheck": (
        {
            "code": """
from agent_sdk.plugin import handler

@handler("echo")
async def echo(payload):
    return payload

@handler("healthcheck")
async def healthcheck(payload):
    raise RuntimeError("the model is not loaded")
"""
        },
        "the healthcheck of gamma.b0 failed: [handler_error] RuntimeError: the model is not",
    ),
    "crash-at-start": (
        {"code": "import os\nos._exit(7)\n"},
        "exited with status 7 before it was ready",
    ),
    "hang": ({"code": "import time\ntime.sleep(3600)\n"}, "not ready within 3s"),
}


@pytest.mark.parametrize("case", sorted(BROKEN_VERSIONS))
async def test_a_broken_new_version_is_rolled_back_and_the_old_one_keeps_serving(
    coordinator: Coordinator,
    settings: Settings,
    r: aioredis.Redis,
    keys: KeySpace,
    tmp_path: Path,
    make_supervisor: Make,
    case: str,
) -> None:
    fields, says = BROKEN_VERSIONS[case]
    directory = write_plugin(tmp_path, "gamma", version="1.0.0")
    async with make_supervisor(tmp_path) as supervisor, Bus(settings) as bus:
        before = _children()
        old_pid = await r.hget(keys.record("gamma.a0"), "pid")
        write_plugin(tmp_path, "gamma", version="2.0.0", **fields)
        # only the version that hangs gets the short deadline: on a loaded CI machine any
        # worker's start (a Python process importing the SDK) can take more than 3 s, and the
        # other broken versions must fail for their own reason, not the deadline's
        supervisor.ready_timeout = 3.0 if case == "hang" else 30.0
        await supervisor.apply({directory})
        supervisor.ready_timeout = 30.0
        # the old version still serves, untouched
        assert set(await r.smembers(keys.agents())) == {"gamma.a0"}
        assert await r.hget(keys.record("gamma.a0"), "pid") == old_pid
        reply = await bus.request(role="gamma", type="echo", payload=1, timeout=5)
        assert reply == {"echo": 1, "version": "1.0.0"}
        (failed,) = await _events(r, keys, RegistryEventType.PLUGIN_FAILED)
        assert says in (failed.reason or ""), failed.reason
        assert "the running version keeps serving" in (failed.reason or "")
        entry = await r.hgetall(keys.plugin("gamma"))
        assert (entry["status"], entry["version"]) == ("running", "1.0.0")
        assert says in entry["last_error"]
        assert _children() - before == set()  # the new worker is gone
        # a fixed version then loads
        write_plugin(tmp_path, "gamma", version="2.0.1")
        await supervisor.apply({directory})
        reply = await bus.request(role="gamma", type="echo", payload=2, timeout=5)
        assert reply == {"echo": 2, "version": "2.0.1"}
        assert await r.hget(keys.plugin("gamma"), "last_error") == ""


async def test_a_remote_error_is_not_a_healthcheck_pass(
    coordinator: Coordinator, settings: Settings, tmp_path: Path, make_supervisor: Make
) -> None:
    """The plugin serves its handlers; a handler's error reaches the caller as RemoteError."""
    code = """
from agent_sdk.plugin import handler

@handler("fail")
async def fail(payload):
    raise ValueError("no")
"""
    write_plugin(tmp_path, "delta", code=code)
    async with make_supervisor(tmp_path), Bus(settings) as bus:
        with pytest.raises(RemoteError, match="no"):
            await bus.request("delta.a0", "fail", {}, timeout=5)


async def test_agentbus_run_plugins_serves_until_sigterm_then_drains(
    coordinator: Coordinator, settings: Settings, r: aioredis.Redis, keys: KeySpace, tmp_path: Path
) -> None:
    write_plugin(tmp_path / "plugins", "echoer", version="3.0.0")
    env = {
        **os.environ,
        "AGENTBUS_REDIS_URL": settings.url,
        "AGENTBUS_NAMESPACE": settings.namespace,
        "AGENTBUS_HEARTBEAT_INTERVAL": str(settings.heartbeat_interval),
        "AGENTBUS_TTL": str(settings.ttl),
        "AGENTBUS_SHUTDOWN_GRACE": "5",
    }
    err = (tmp_path / "err.txt").open("wb")
    proc = _popen(
        [sys.executable, "-m", "coordinator.cli", "run", "--plugins", str(tmp_path / "plugins")],
        env, err,
    )  # fmt: skip
    try:
        await wait_for(lambda: r.exists(keys.record("echoer.a0")), timeout=30, message="hosted")
        async with Bus(settings) as bus:
            reply = await bus.request(role="echoer", type="echo", payload="hi", timeout=5)
            assert reply == {"echo": "hi", "version": "3.0.0"}
        worker_pid = int(await r.hget(keys.record("echoer.a0"), "pid") or 0)
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(proc.wait, 30) == 0, (tmp_path / "err.txt").read_text()
        assert not psutil.pid_exists(worker_pid) or psutil.Process(worker_pid).status() == "zombie"
        assert await r.smembers(keys.agents()) == set()
        assert "Traceback" not in (tmp_path / "err.txt").read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        err.close()


async def test_requests_during_a_reload_are_all_answered(
    coordinator: Coordinator,
    settings: Settings,
    r: aioredis.Redis,
    keys: KeySpace,
    tmp_path: Path,
    make_supervisor: Make,
) -> None:
    """A steady stream of requests to the plugin's role while it reloads: none fails, none is
    lost; the answers switch from the old version to the new."""
    directory = write_plugin(tmp_path, "steady", version="1.0.0")
    async with make_supervisor(tmp_path) as supervisor, Bus(settings) as bus:
        stop = asyncio.Event()
        versions: list[str] = []
        errors: list[BaseException] = []

        async def client() -> None:
            while not stop.is_set():
                try:
                    reply = await bus.request(role="steady", type="echo", payload=0, timeout=10)
                    versions.append(reply["version"])
                except Exception as e:
                    errors.append(e)

        clients = [asyncio.create_task(client()) for _ in range(4)]
        await wait_for(lambda: len(versions) >= 20, message="traffic flows")
        write_plugin(tmp_path, "steady", version="2.0.0")
        await supervisor.apply({directory})
        served = len(versions)
        await wait_for(lambda: len(versions) >= served + 20, message="traffic after the reload")
        stop.set()
        await asyncio.gather(*clients)
        assert errors == []
        assert versions[0] == "1.0.0"
        assert versions[-1] == "2.0.0"


async def test_a_plugin_whose_name_a_live_agent_holds_is_refused_and_the_others_load(
    coordinator: Coordinator,
    settings: Settings,
    r: aioredis.Redis,
    keys: KeySpace,
    tmp_path: Path,
    make_supervisor: Make,
) -> None:
    """A name clash with a live agent (not a plugin): the plugin fails with the holder named,
    the live agent keeps its name, the other plugins load."""
    write_plugin(tmp_path, "gamma", version="1.0.0")
    write_plugin(tmp_path, "delta", version="1.0.0")
    squatter = Agent("gamma.a0", "squatter", settings=settings)
    async with squatter, make_supervisor(tmp_path, ready_timeout=10.0):
        (failed,) = await _events(r, keys, RegistryEventType.PLUGIN_FAILED)
        assert failed.name == "gamma"
        assert "gamma.a0" in (failed.reason or "")
        assert await r.hget(keys.record("gamma.a0"), "instance_id") == squatter.instance_id
        assert "delta.a0" in set(await r.smembers(keys.agents()))

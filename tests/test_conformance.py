"""The conformance check (``coordinator.conformance``, ``agentbus conformance``) against the Python
SDK, against agents that break the rules on purpose (each broken rule must FAIL its check), and
against the Node.js example in examples/node (node and npm are required: never skipped)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis
from click.testing import CliRunner, Result

from agent_sdk import Agent
from agent_sdk.settings import Settings
from agent_sdk.tasks import cancel_and_wait
from coordinator.cli import cli
from coordinator.conformance import (
    CHECKS,
    ConformanceOptions,
    Report,
    Verdict,
    run_conformance,
    shell_action,
    spawn_action,
)
from coordinator.conformance.lifecycle import expand
from schemas.agent import AgentRecord
from schemas.errors import ConfigurationError
from schemas.keys import AGENT_GROUP, KeySpace
from tests.fake_agents import FakeAgent
from tests.support import wait_for

pytestmark = pytest.mark.usefixtures("coordinator")

ROOT = Path(__file__).resolve().parent.parent
NODE_DIR = ROOT / "examples" / "node"
REDELIVERY = ("redelivery.restart", "redelivery.queued", "redelivery.pending")


def verdicts(report: Report) -> dict[str, Verdict]:
    return {r.check: r.verdict for r in report.results}


def reason(report: Report, check: str) -> str:
    return next(r.reason for r in report.results if r.check == check)


def assert_conforms(report: Report, *, skipped: tuple[str, ...] = ()) -> None:
    """Every check reported, in order; all passed but the one that is INFO by nature and the
    ``skipped`` ones."""
    text = "\n".join(report.lines())
    assert [r.check for r in report.results] == list(CHECKS), text
    for result in report.results:
        expected = Verdict.PASS
        if result.check == "broadcast.handled":
            expected = Verdict.INFO
        elif result.check in skipped:
            expected = Verdict.SKIP
        assert result.verdict is expected, text
    assert report.ok, text


def echo_agent(settings: Settings, name: str = "py-echo") -> Agent:
    agent = Agent(name, "echo", capabilities=["ping"], settings=settings)

    @agent.on("ping")
    async def ping(payload: Any) -> Any:
        return payload

    return agent


async def invoke(settings: Settings, *args: str) -> Result:
    """Run the CLI in a thread (it has its own event loop) while this loop serves the agents."""
    argv = ["--redis-url", settings.url, "--namespace", settings.namespace, *args]
    return await asyncio.to_thread(CliRunner().invoke, cli, argv)


# -- the Python SDK -------------------------------------------------------------------------------
async def test_python_sdk_agent_passes_every_check(
    settings: Settings, r: aioredis.Redis, keys: KeySpace
) -> None:
    agent = echo_agent(settings)
    await agent.start()
    try:

        async def stop(record: AgentRecord) -> None:
            await agent.stop()

        report = await run_conformance(settings, "py-echo", ConformanceOptions(stop=stop))
    finally:
        await agent.stop()
    assert_conforms(report, skipped=REDELIVERY)
    assert "reason left" in reason(report, "lifecycle.leave")
    # the check cleans up after itself: its reply list and the dead letters it caused are gone
    assert await r.xlen(keys.deadletter()) == 0
    assert not await r.keys(f"{keys.agents_prefix}{{conformance-*")


async def test_cli_prints_one_line_per_check_and_exits_0(settings: Settings) -> None:
    async with echo_agent(settings, "py-cli"):
        result = await invoke(settings, "conformance", "py-cli", "--payload", '{"a": [1, "ü"]}')
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert len(lines) == len(CHECKS) + 1
    for check, line in zip(CHECKS, lines, strict=False):
        assert line.split()[:2] in (["PASS", check], ["INFO", check], ["SKIP", check]), line
    assert lines[-1].startswith("py-cli conforms: 18 passed, 0 failed, 1 info, 5 skipped")


async def test_cli_reports_a_failing_stop_command(settings: Settings) -> None:
    async with echo_agent(settings, "py-stays"):
        result = await invoke(settings, "conformance", "py-stays", "--stop-command", "exit 3")
    assert result.exit_code == 1, result.output
    lines = result.stdout.splitlines()
    assert lines[-3].startswith("SKIP  lifecycle.draining")
    assert lines[-2].startswith("FAIL  lifecycle.leave")
    assert "the stop command failed: `exit 3` exited with status 3" in lines[-2]


async def test_cli_exits_1_when_the_agent_is_absent(settings: Settings) -> None:
    result = await invoke(settings, "conformance", "nobody", "--wait", "0")
    assert result.exit_code == 1, result.output
    lines = result.stdout.splitlines()
    assert lines[0].startswith("FAIL  registration.record")
    assert "not registered" in lines[0]
    assert all(line.startswith("SKIP") for line in lines[1:-1])
    assert "does NOT conform: 0 passed, 1 failed" in lines[-1]
    usage = await invoke(settings, "conformance", "nobody", "--kill-command", "true")
    assert usage.exit_code == 2
    assert "--kill-command and --start-command go together" in usage.output


# -- agents that break the rules on purpose -------------------------------------------------------
async def test_an_agent_that_never_reads_fails_the_data_plane_and_leave_checks(
    settings: Settings, r: aioredis.Redis, keys: KeySpace
) -> None:
    """Registered and heartbeating, but it reads nothing and never leaves: it just stops."""
    fake = FakeAgent(r, keys, "deaf", role="echo")
    await fake.register()
    fake.start_heartbeats()
    try:
        options = ConformanceOptions(timeout=0.5, stop=lambda record: fake.stop_heartbeats())
        report = await run_conformance(settings, "deaf", options)
    finally:
        await fake.stop_heartbeats()
    got = verdicts(report)
    for check in ("registration.record", "registration.indexes", "registration.epoch"):
        assert got[check] is Verdict.PASS, report.lines()
    for check in ("heartbeat.last_seen", "heartbeat.deadline", "heartbeat.payload"):
        assert got[check] is Verdict.PASS, report.lines()
    assert got["heartbeat.epoch"] is Verdict.INFO  # its heartbeats carry no epoch
    failed = [
        "request.name", "request.role", "error.unknown_type", "request.expired", "send.ack",
        "send.unknown_type", "broadcast.subscribed", "lifecycle.draining", "lifecycle.leave",
    ]  # fmt: skip
    assert [r.check for r in report.failures] == failed, report.lines()
    assert "has no consumer group 'agent'" in reason(report, "request.name")
    assert "must get an error reply, not a timeout" in reason(report, "error.unknown_type")
    assert "the agent never created it" in reason(report, "send.ack")  # no consumer group
    assert "expired (heartbeat_missed)" in reason(report, "lifecycle.leave")
    assert got["request.echo"] is Verdict.SKIP
    assert not report.ok


async def test_an_agent_that_stops_heartbeating_fails_the_heartbeat_checks(
    settings: Settings, r: aioredis.Redis, keys: KeySpace
) -> None:
    silent = FakeAgent(r, keys, "silent", heartbeat_ms=100, ttl_ms=30_000)
    await silent.register()
    report = await run_conformance(settings, "silent", ConformanceOptions(timeout=0.3))
    got = verdicts(report)
    assert got["registration.record"] is Verdict.PASS
    for check in ("heartbeat.last_seen", "heartbeat.deadline", "heartbeat.payload"):
        assert got[check] is Verdict.FAIL, report.lines()
    assert "did not advance within 700 ms" in reason(report, "heartbeat.last_seen")


async def test_a_bad_heartbeat_is_reported_with_its_dead_letter(
    settings: Settings, r: aioredis.Redis, keys: KeySpace
) -> None:
    """``load`` as a fraction (a misreading the issue saw): the coordinator refuses it."""
    sloppy = FakeAgent(r, keys, "sloppy", heartbeat_ms=100, ttl_ms=30_000)
    await sloppy.register()

    async def beat() -> None:
        while True:
            await sloppy.send("heartbeat", {"instance_id": sloppy.instance_id, "load": 0.5})
            await asyncio.sleep(0.1)  # the fake agent's heartbeat cadence

    task = asyncio.create_task(beat())
    try:
        report = await run_conformance(settings, "sloppy", ConformanceOptions(timeout=0.3))
    finally:
        await cancel_and_wait(task)
    assert verdicts(report)["heartbeat.last_seen"] is Verdict.FAIL
    assert "heartbeat was dead-lettered [invalid_record]" in reason(report, "heartbeat.last_seen")
    assert verdicts(report)["heartbeat.payload"] is Verdict.FAIL
    assert "load" in reason(report, "heartbeat.payload")


@contextlib.asynccontextmanager
async def sloppy_responder(fake: FakeAgent, *, correlate: bool) -> AsyncIterator[None]:
    """Answers every entry of the inbox with ``"nope"``: no headers, never acknowledged, also
    expired requests and unknown types; with ``correlate=False`` under a wrong correlation id."""
    inbox = fake.keys.inbox(fake.name)
    with contextlib.suppress(Exception):
        await fake.r.xgroup_create(inbox, AGENT_GROUP, "0", mkstream=True)

    async def serve() -> None:
        while True:
            got: Any = await fake.r.xreadgroup(
                AGENT_GROUP, fake.instance_id, {inbox: ">"}, count=10, block=100
            )
            for _, entries in got or []:
                for _, fields in entries:
                    if fields.get("kind") != "request":
                        continue
                    answer = {
                        "v": 1, "kind": "reply", "type": fields["type"], "sender": fake.name,
                        "correlation_id": fields["id"] if correlate else "not-" + fields["id"],
                        "payload": "nope",
                    }  # fmt: skip
                    await fake.r.lpush(fields["reply_to"], orjson.dumps(answer))

    task = asyncio.create_task(serve())
    try:
        yield
    finally:
        await cancel_and_wait(task)


async def _check_sloppy(
    settings: Settings,
    r: aioredis.Redis,
    keys: KeySpace,
    name: str,
    *,
    correlate: bool,
    timeout: float,
) -> Any:
    """The conformance report of a heartbeating fake agent answered by ``sloppy_responder``."""
    fake = FakeAgent(r, keys, name, role="echo")
    await fake.register()
    fake.start_heartbeats()
    try:
        async with sloppy_responder(fake, correlate=correlate):
            return await run_conformance(settings, name, ConformanceOptions(timeout=timeout))
    finally:
        await fake.stop_heartbeats()


async def test_sloppy_replies_fail_echo_headers_ack_and_errors(
    settings: Settings, r: aioredis.Redis, keys: KeySpace
) -> None:
    report = await _check_sloppy(settings, r, keys, "sloppy-replier", correlate=True, timeout=1.0)
    got = verdicts(report)
    assert got["request.name"] is Verdict.PASS, report.lines()  # kind, type, correlation: right
    for check in ("request.echo", "request.headers", "request.ack", "error.unknown_type"):
        assert got[check] is Verdict.FAIL, report.lines()
    assert "read it (delivered 1x) but neither answered nor acknowledged" in reason(
        report, "request.ack"
    )
    assert "with a payload, not an error" in reason(report, "error.unknown_type")
    assert "deadline had passed was handled" in reason(report, "request.expired")


async def test_a_reply_with_the_wrong_correlation_id_fails(
    settings: Settings, r: aioredis.Redis, keys: KeySpace
) -> None:
    report = await _check_sloppy(settings, r, keys, "miscorrelated", correlate=False, timeout=0.5)
    assert verdicts(report)["request.name"] is Verdict.FAIL
    assert "replies came with other correlation ids ['not-" in reason(report, "request.name")


# -- process control from shell commands ----------------------------------------------------------
def _record(pid: int | None = 4242) -> AgentRecord:
    now = datetime.now(UTC)
    return AgentRecord(
        name="a-1", role="echo", instance_id="inst-1", registered_at=now, last_seen=now,
        heartbeat_ms=100, ttl_ms=500, pid=pid,
    )  # fmt: skip


async def test_commands_get_the_records_placeholders(tmp_path: Path) -> None:
    out = tmp_path / "out"
    await shell_action(f"echo {{name}} {{pid}} {{instance_id}} > {out}")(_record())
    assert out.read_text().split() == ["a-1", "4242", "inst-1"]
    with pytest.raises(ConfigurationError, match=r"uses \{pid\} but the agent's record has none"):
        expand("kill {pid}", _record(pid=None))
    with pytest.raises(ConfigurationError, match="exited with status 3: oops"):
        await shell_action("echo oops; exit 3")(_record())
    flag, done = tmp_path / "go", tmp_path / "done"
    started = time.monotonic()
    await spawn_action(f"while [ ! -e {flag} ]; do sleep 0.01; done; echo ok > {done}")(_record())
    assert not done.exists()  # the spawned command runs on in the background
    flag.touch()
    await wait_for(done.exists, message="the background command finished")
    assert time.monotonic() - started < 10


# -- the Node.js example --------------------------------------------------------------------------
@pytest.fixture(scope="session")
def node_agent() -> list[str]:
    """``node examples/node/agent.js``, its dependencies installed (``npm ci``) if missing."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.fail(
            "node and npm are required to check the Node.js example (examples/node): install "
            "Debian's nodejs and npm packages (.ci/run does), then `npm ci --prefix examples/node`"
        )
    if not (NODE_DIR / "node_modules" / "redis").is_dir():
        subprocess.run([npm, "ci", "--prefix", str(NODE_DIR)], check=True, timeout=300)
    return [node, str(NODE_DIR / "agent.js")]


def node_env(settings: Settings, name: str) -> dict[str, str]:
    return {
        "AGENTBUS_REDIS_URL": settings.url,
        "AGENTBUS_NAMESPACE": settings.namespace,
        "AGENTBUS_NAME": name,
        "AGENTBUS_ROLE": "echo",
        "AGENTBUS_HEARTBEAT_INTERVAL": str(settings.heartbeat_interval),
        "AGENTBUS_TTL": str(settings.ttl),
        "AGENTBUS_CLAIM_INTERVAL": str(settings.claim_interval),
    }


@contextlib.contextmanager
def node_process(
    command: list[str], env: dict[str, str], log: Path
) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("wb") as out:
        proc = subprocess.Popen(
            command, env={**os.environ, **env}, stdin=subprocess.DEVNULL, stdout=out,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)


async def test_node_example_conforms_and_exits_0_on_sigterm(
    settings: Settings, node_agent: list[str], tmp_path: Path
) -> None:
    log = tmp_path / "node.log"
    with node_process(node_agent, node_env(settings, "node-echo"), log) as proc:

        async def stop(record: AgentRecord) -> None:
            assert record.pid == proc.pid
            proc.send_signal(signal.SIGTERM)

        report = await run_conformance(settings, "node-echo", ConformanceOptions(stop=stop))
        code = await asyncio.to_thread(proc.wait, 10)
    assert code == 0, log.read_text()
    assert_conforms(report, skipped=REDELIVERY)
    assert "draining, then leaving" in log.read_text()


async def test_node_example_conforms_through_the_cli_with_kill_and_restart(
    settings: Settings, node_agent: list[str], tmp_path: Path
) -> None:
    """What CI runs: every check, the kill -9 and restart included, from shell commands."""
    env = node_env(settings, "node-cli")
    pidfile = tmp_path / "restarted.pid"
    restart = " ".join(
        [*(f"{k}={v}" for k, v in env.items()), *node_agent, f">{tmp_path / 'restarted.log'}"]
    )
    with node_process(node_agent, env, tmp_path / "first.log"):
        try:
            result = await invoke(
                settings, "conformance", "node-cli",
                "--kill-command", "kill -KILL {pid}",
                "--start-command", f"{restart} 2>&1 & echo $! > {pidfile}",
                "--stop-command", "kill -TERM {pid}",
            )  # fmt: skip
        finally:
            with contextlib.suppress(FileNotFoundError, ProcessLookupError, ValueError):
                os.kill(int(pidfile.read_text()), signal.SIGKILL)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert [line.split()[1] for line in lines[:-1]] == list(CHECKS)
    assert lines[-1].startswith("node-cli conforms: 23 passed, 0 failed, 1 info, 0 skipped")

"""``agentbus demo``: a private bus, a coordinator and the example agents, in seven steps.

A gateway runs beside them when its extra is installed: the demo prints the dashboard's URL
first, so the page shows the agents register, work, die and come back as the steps go; with
``--stay`` the agents stay up after step 6 until Ctrl-C (their task history, usage and health
on the page), then leave.

Nothing to set up: Redis is embedded (a ``redis-server`` on PATH or the ``embedded`` extra's),
in a temporary directory, on a free port. The agents (``examples/``: a planner, two summarizers,
a reviewer) are separate processes; the demo itself is a client (``Bus``). Every wait is on an
event (a line an agent printed, a registry change), bounded by a timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import signal
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import click
from rich.console import Console

from agent_sdk.bus import Bus
from agent_sdk.embedded import RedisServer
from coordinator.cli.base import console, dumps, run_async
from coordinator.cli.demo_fleet import Fleet, find_examples
from coordinator.cli.render import agents_table
from coordinator.service import Coordinator
from coordinator.settings import CoordinatorSettings
from schemas.agent import AgentRecord
from schemas.errors import AgentbusError

__all__ = ["demo"]

DOC = (
    "Redis streams give each agent an inbox with consumer groups, so a message is acknowledged "
    "only after its handler finished; when an agent dies its unacknowledged work is claimed by "
    "a live member of the same role and handled again, which is why handlers get the message "
    "id as an idempotency key and the delivery count."
)
SUMMARIZERS = ["summarizer-1", "summarizer-2"]
EVERYONE = ["planner", *SUMMARIZERS, "reviewer"]


@click.command(short_help="Run example agents on a private bus (~10 s).")
@click.option(
    "--examples",
    "examples_dir",
    type=click.Path(file_okay=False, exists=True, path_type=Path),
    help="Directory of the example agents [default: examples/ of this checkout].",
)
@click.option(
    "--stay",
    is_flag=True,
    help="Keep the agents and the dashboard up after the steps, until Ctrl-C.",
)
def demo(examples_dir: Path | None, stay: bool) -> None:
    """Run a private bus with example agents and show what it does (about 10 seconds)."""
    examples = find_examples(examples_dir)
    out = console()
    workdir = Path(tempfile.mkdtemp(prefix="agentbus-demo-"))
    try:
        with RedisServer(data_dir=workdir / "redis", appendonly=True, new_session=True) as server:
            settings = CoordinatorSettings(
                redis_url=server.url, namespace="demo", heartbeat_interval=0.2, ttl=1.0,
                claim_interval=0.25, sweep_interval=0.05, health_interval=0.5,
                request_timeout=20.0, shutdown_grace=5.0,
            )  # fmt: skip
            run_async(lambda: Demo(settings, examples, out, stay=stay).run(server))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


class Demo:
    def __init__(
        self, settings: CoordinatorSettings, examples: Path, out: Console, *, stay: bool = False
    ) -> None:
        self.settings = settings
        self.out = out
        self.stay = stay
        env = {
            "AGENTBUS_REDIS_URL": settings.url,
            "AGENTBUS_NAMESPACE": settings.namespace,
            "AGENTBUS_HEARTBEAT_INTERVAL": str(settings.heartbeat_interval),
            "AGENTBUS_TTL": str(settings.ttl),
            "AGENTBUS_CLAIM_INTERVAL": str(settings.claim_interval),
            "AGENTBUS_REQUEST_TIMEOUT": str(settings.request_timeout),
        }
        self.fleet = Fleet(examples, env, out.print)
        self.t0 = time.monotonic()

    def step(self, number: int, title: str) -> None:
        self.out.print()
        self.out.print(f"[bold]== {number}. {title} ==[/]")

    def say(self, text: str) -> None:
        self.out.print(f"  [dim]{time.monotonic() - self.t0:5.1f}s[/]  {text}")

    async def run(self, server: RedisServer) -> None:
        s = self.settings
        self.out.print(
            f"[bold green]agentbus demo[/]: Redis {server.url} ({server.binary}), "
            f"namespace {s.namespace!r}, heartbeat {s.heartbeat_interval}s, TTL {s.ttl}s"
        )
        async with (
            Coordinator(self.settings),
            Bus(self.settings) as bus,
            _dashboard(self.settings) as dashboard,
        ):
            self.say("coordinator running")
            if dashboard:
                self.say(f"dashboard: {dashboard}/  (open it to watch the steps)")
            try:
                await self.registration(bus)
                await self.discovery(bus)
                await self.request_reply(bus)
                await self.role_queue_with_a_kill(bus)
                await self.scatter_gather(bus)
                await self.broadcast(bus)
                if self.stay:
                    await self.hold(dashboard)
            finally:
                codes = await self.fleet.stop_all()
            await self.shutdown(bus, codes)
        self.out.print()
        self.out.print("[bold green]demo complete[/]: every step passed")

    async def registration(self, bus: Bus) -> None:
        self.step(1, "Registration: four agents announce themselves")
        for name, script in (
            ("planner", "planner.py"),
            ("summarizer-1", "summarizer.py"),
            ("summarizer-2", "summarizer.py"),
            ("reviewer", "reviewer.py"),
        ):
            await self.fleet.start(name, script)
        await self.fleet.wait_all(r"is running", EVERYONE)
        records = await bus.discover()
        self.out.print(agents_table(records, self.out.width, title="agentbus agents"))
        self.say(f"registered: {', '.join(sorted(EVERYONE))}")

    async def discovery(self, bus: Bus) -> None:
        self.step(2, "Discovery: find agents by role, capability, tag and version")
        by_role = [r.name for r in await bus.discover(role="summarizer")]
        self.say(f"discover(role='summarizer') -> {by_role}")
        reviewers = [r.name for r in await bus.discover(capabilities=["review"], tags=["en"])]
        self.say(f"discover(capabilities=['review'], tags=['en']) -> {reviewers}")
        modern = [r.name for r in await bus.discover(version=">=1.0")]
        self.say(f"discover(version='>=1.0') -> {modern}")
        chosen = await bus.select(role="summarizer", strategy="least_loaded")
        self.say(f"select(role='summarizer', strategy='least_loaded') -> {chosen.name}")

    async def request_reply(self, bus: Bus) -> None:
        self.step(
            3, "Request-reply: the planner fans out to the summarizers, then asks the reviewer"
        )
        reply = await bus.request("planner", "plan", {"text": DOC, "parts": 2})
        by = sorted({s["by"] for s in reply["summaries"]})
        self.say(f"planner replied: {len(reply['summaries'])} summaries by {by}")
        self.say(f"review: {dumps(reply['review'])}")

    async def role_queue_with_a_kill(self, bus: Bus) -> None:
        self.step(4, "Role queue: a summarizer is killed mid-task; its task is redelivered")
        since = self.fleet.mark()
        task = asyncio.create_task(
            bus.request(
                role="summarizer", type="summarize", payload={"text": DOC, "work_seconds": 1.0}
            )
        )
        holder, match = await self.fleet.wait_line(
            r"summarizing message (\S+) \(delivery 1\)", SUMMARIZERS, since=since
        )
        message_id = match.group(1)
        self.fleet.kill(holder.name)
        killed_at = time.monotonic()
        self.say(f"kill -9 {holder.name} (pid {holder.pid}) while it holds message {message_id}")
        reply = await task
        took = time.monotonic() - killed_at
        self.say(
            f"redelivered: {reply['by']} handled message {message_id} on delivery "
            f"{reply['delivery']}, {took:.1f}s after the kill (TTL {self.settings.ttl}s + claim)"
        )
        if reply["by"] == holder.name or reply["delivery"] < 2:
            raise AgentbusError(f"expected a redelivery to another member, got {reply}")
        await _until(lambda: bus.get(holder.name), present=False)
        self.say(f"{holder.name} expired from the registry (missed heartbeats)")
        await self.fleet.start(holder.name, holder.script)
        await self.fleet.wait_line(r"is running", [holder.name])
        self.say(f"{holder.name} restarted and registered again")

    async def scatter_gather(self, bus: Bus) -> None:
        self.step(5, "Scatter-gather: ask every summarizer for its status")
        result = await bus.request_many(role="summarizer", type="status", timeout=5.0)
        for name, status in sorted(result.replies.items()):
            self.say(f"{name} -> {dumps(status)}")
        self.say(f"{len(result.replies)} replies, missing: {result.missing or 'none'}")
        if sorted(result.replies) != SUMMARIZERS:
            raise AgentbusError(f"expected replies from {SUMMARIZERS}, got {result.replies}")

    async def broadcast(self, bus: Bus) -> None:
        self.step(6, "Broadcast: one message to every live agent")
        since = self.fleet.mark()
        receivers = await bus.broadcast("announcement", {"text": "the demo is over, thanks!"})
        await self.fleet.wait_all(r"^got broadcast", EVERYONE, since=since)
        self.say(
            f"broadcast delivered to {receivers} subscriber connection(s); all 4 agents got it"
        )

    async def hold(self, dashboard: str | None) -> None:
        where = f"; dashboard {dashboard}/" if dashboard else ""
        self.say(f"the agents stay up{where}: Ctrl-C to go on to the shutdown")
        go_on = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):  # the executable edge: a CLI command
            loop.add_signal_handler(sig, go_on.set)
        try:
            await go_on.wait()
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)

    async def shutdown(self, bus: Bus, codes: dict[str, int | None]) -> None:
        self.step(7, "Shutdown: agents leave cleanly (deregistered at once, not after the TTL)")
        left = await bus.discover()
        self.say(f"exit codes: {codes}; agents still registered: {[r.name for r in left]}")
        if left:
            raise AgentbusError(f"agents still registered after leaving: {left}")


@contextlib.asynccontextmanager
async def _dashboard(settings: CoordinatorSettings) -> AsyncIterator[str | None]:
    """A gateway on 127.0.0.1 (8080 when free) for the demo's bus; ``None`` without its extra."""
    try:
        from gateway.server import running
        from gateway.settings import GatewaySettings
    except ImportError:
        yield None
        return
    values = settings.model_dump(include=set(GatewaySettings.model_fields))
    async with running(GatewaySettings(**{**values, "gateway_port": 8080}), fallback=True) as url:
        yield url


async def _until(
    read: Callable[[], Awaitable[AgentRecord | None]], *, present: bool, timeout: float = 15.0
) -> None:
    """Poll a registry read until it is (not) ``None`` (the demo's sweeper runs every 50 ms)."""
    async with asyncio.timeout(timeout):
        while (await read() is not None) != present:  # noqa: ASYNC110 (state in another process)
            await asyncio.sleep(0.05)

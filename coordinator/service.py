"""``Coordinator``: the registry owner, as an async context manager.

    async with Coordinator(CoordinatorSettings(redis_url=...)) as c:
        await c.wait_stopped()

``start()`` creates the consumer group, writes the health key and starts four loops: the
control-stream consumer, the claimer (entries left by dead coordinators), the sweeper and the
health reporter; ``ready`` is set when they run. ``stop()`` drains: the batch in hand is finished
and acknowledged, then the health key is deleted. Both are idempotent. Installs no signal
handlers (that is ``coordinator.daemon``'s job).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from types import TracebackType

import redis.asyncio as aioredis

from agent_sdk import telemetry
from agent_sdk.connection import make_client, redis_errors
from agent_sdk.tasks import cancel_all
from coordinator.control import ControlConsumer
from coordinator.health import HealthReporter
from coordinator.liveness import Sweeper
from coordinator.loops import RETRYABLE, periodic
from coordinator.recovery import Recovery
from coordinator.registry import Registry
from coordinator.settings import CoordinatorSettings
from coordinator.stats import CoordinatorStats

__all__ = ["Coordinator"]

log = logging.getLogger("agentbus.coordinator")


class Coordinator:
    """One coordinator: consumes the control stream, sweeps, reports health."""

    def __init__(self, settings: CoordinatorSettings) -> None:
        self.settings = settings
        self.stats = CoordinatorStats()
        self.ready = asyncio.Event()
        self._stopping = asyncio.Event()
        self._stopped = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._client: aioredis.Redis | None = None
        self._health: HealthReporter | None = None
        self._consumer: ControlConsumer | None = None
        self._sweeper: Sweeper | None = None
        self._started = False
        self._fatal_stop: asyncio.Task[None] | None = None

    @property
    def control(self) -> ControlConsumer | None:
        """The control-stream consumer (None before ``start``)."""
        return self._consumer

    @property
    def id(self) -> str:
        return self.settings.coordinator_id

    @property
    def running(self) -> bool:
        return self._started and not self._stopped.is_set()

    @property
    def sweeper(self) -> Sweeper | None:
        return self._sweeper

    async def __aenter__(self) -> Coordinator:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def start(self) -> None:
        """Connect, create the group, start the loops; returns when ready. Idempotent."""
        if self._started:
            return
        self._started = True
        s = self.settings
        client = self._client = make_client(s)
        registry = Registry(client, s)
        self._consumer = ControlConsumer(client, registry, s, self.stats)
        recovery = Recovery(client, self._consumer, s, self.stats)
        self._sweeper = Sweeper(registry, s, self.stats)
        self._health = HealthReporter(client, s, self.stats.as_dict)
        try:
            with redis_errors(s, "starting the coordinator"):
                await self._consumer.ensure_group()
                await self._health.beat()
        except BaseException:
            await client.aclose()
            self._stopped.set()
            raise
        loops = {
            "control": self._consumer.run(self._stopping),
            "claimer": periodic("claiming", s.claim_idle / 2, recovery.step, self._stopping, log),
            "sweeper": self._sweeper.run(self._stopping),
            "health": self._health.run(self._stopping),
        }
        for name, coro in loops.items():
            task = asyncio.create_task(coro, name=f"coordinator-{s.coordinator_id}-{name}")
            task.add_done_callback(self._task_done)
            self._tasks.append(task)
        # counters as metrics; after a stop the final values stay reported (cumulative)
        telemetry.observe_coordinator(s.coordinator_id, self.stats.as_dict)
        log.info(
            "coordinator %s ready on %s namespace %s",
            s.coordinator_id,
            s.display_url,
            s.namespace,
        )
        self.ready.set()

    def _task_done(self, task: asyncio.Task[None]) -> None:
        if task.cancelled() or self._stopping.is_set():
            return
        exc = task.exception()
        log.error("coordinator loop %s ended unexpectedly: %r", task.get_name(), exc)
        self._stopping.set()
        self._fatal_stop = asyncio.get_running_loop().create_task(self.stop())

    async def stop(self) -> None:
        """Drain and stop: finish the batch in hand, ack it, delete the health key."""
        if not self._started:
            self._started = True
            self._stopped.set()
            return
        if self._stopping.is_set() and not self._tasks:
            await self._stopped.wait()
            return
        self._stopping.set()
        tasks, self._tasks = self._tasks, []
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=self.settings.drain_timeout)
            for task in pending:
                log.warning("%s did not drain in time; cancelling it", task.get_name())
            await cancel_all(pending)
        if self._health is not None:
            with contextlib.suppress(*RETRYABLE, TimeoutError):  # bounded: Redis may be gone
                await asyncio.wait_for(self._health.clear(), self.settings.drain_timeout or 1.0)
        await self._close()
        log.info("coordinator %s stopped (%s)", self.settings.coordinator_id, self.stats.as_dict())

    async def kill(self) -> None:
        """Stop at once without draining or cleanup, as a crash would (fault tests)."""
        self._stopping.set()
        tasks, self._tasks = self._tasks, []
        await cancel_all(tasks)
        await self._close()

    async def _close(self) -> None:
        client, self._client = self._client, None
        if self._consumer is not None:
            with contextlib.suppress(*RETRYABLE):
                await self._consumer.registry.aclose()
        if client is not None:
            with contextlib.suppress(*RETRYABLE):
                await client.aclose()
        self.ready.clear()
        self._stopped.set()

    async def wait_stopped(self) -> None:
        """Return once the coordinator has stopped (by ``stop()`` or a fatal error)."""
        await self._stopped.wait()

"""The nemesis's hands: applies a plan's faults to a real fleet, recording each in the timeline.

Each lane (see ``nemesis_plan``) runs in its own task, its faults one after the other at their
planned times; lanes overlap. A fault ends when the system is back in the state the plan meant
(a restarted coordinator is running, a replacement's agents are registered), so the next fault
of the lane never lands on a half-recovered slot. Waits on the system have deadlines; the only
sleeps are the schedule's pacing and the faults' durations.
"""

from __future__ import annotations

import asyncio
import shutil
import signal
import time
from collections import defaultdict
from collections.abc import Callable

import redis

from tests.faults.harness import Cluster, CoordinatorProc
from tests.faults.nemesis_plan import Fault, Kind
from tests.faults.nemesis_world import AgentProc, Fleet, Timeline

__all__ = ["Nemesis"]

#: Longest wait for a replacement's agents to register (they wait for the old ones to expire),
#: in TTLs plus seconds; then the lane goes on (the final checks judge the replacement).
_REPLACEMENT_DEADLINE = (4, 5.0)


async def until(condition: Callable[[], bool], timeout: float, interval: float = 0.05) -> bool:
    """Poll ``condition`` until true (True) or ``timeout`` seconds passed (False)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(interval)  # polling child processes and files: no event to wait on
    return True


class Nemesis:
    """Applies faults to ``cluster``'s Redis, its coordinators and the fleet's processes."""

    def __init__(
        self,
        cluster: Cluster,
        fleet: Fleet,
        coordinators: list[CoordinatorProc],
        timeline: Timeline,
        on_data_loss: Callable[[], None],
    ) -> None:
        self.cluster = cluster
        self.fleet = fleet
        self.coordinators = coordinators
        self.timeline = timeline
        self.on_data_loss = on_data_loss
        self.down: set[int] = set()  # coordinators killed or stopped right now
        self.ttl = cluster.settings.ttl
        self.replacement_deadline = _REPLACEMENT_DEADLINE[0] * self.ttl + _REPLACEMENT_DEADLINE[1]

    async def run(self, faults: list[Fault], seconds: float) -> None:
        """Apply every fault at its time (seconds after now); return when all are over and at
        least ``seconds`` have passed."""
        t0 = time.monotonic()
        lanes: dict[str, list[Fault]] = defaultdict(list)
        for f in faults:
            lanes[f.lane].append(f)
        await asyncio.gather(*(self._lane(t0, fs) for fs in lanes.values()))
        await asyncio.sleep(max(0.0, t0 + seconds - time.monotonic()))  # the phase's length

    async def _lane(self, t0: float, faults: list[Fault]) -> None:
        for f in faults:
            await asyncio.sleep(max(0.0, t0 + f.at - time.monotonic()))  # the schedule
            await self.apply(f)

    async def apply(self, f: Fault) -> None:
        match f.kind:
            case Kind.COORD_KILL | Kind.COORD_STOP:
                await self._coordinator(f)
            case Kind.AGENT_KILL:
                await self._agent_kill(f)
            case Kind.AGENT_ZOMBIE:
                await self._zombie(f)
            case Kind.CLIENT_KILL:
                await self._client_kill()
            case Kind.REDIS_SLEEP:
                await self._redis_sleep(f.duration)
            case Kind.REDIS_RESTART | Kind.REDIS_WIPE:
                await self._redis_restart(f.kind, f.duration)

    # -- coordinators ---------------------------------------------------------------------------
    async def _coordinator(self, f: Fault) -> None:
        c = self.coordinators[f.target]
        # never all at once: wait for another one to come back if the schedule drifted
        if not await until(lambda: len(self.down | {f.target}) < len(self.coordinators), 10):
            self.timeline.end(self.timeline.begin(f.kind, c.id, "skipped: all others down"))
            return
        self.down.add(f.target)
        rec = self.timeline.begin(f.kind, c.id)
        if f.kind is Kind.COORD_KILL:
            c.kill()
            await asyncio.sleep(f.duration)  # the outage
            c.start()
        else:
            c.signal(signal.SIGSTOP)
            await asyncio.sleep(f.duration)  # the pause
            c.signal(signal.SIGCONT)
        self.down.discard(f.target)
        self.timeline.end(rec)

    # -- agent processes ------------------------------------------------------------------------
    async def _agent_kill(self, f: Fault) -> None:
        old = self.fleet.current[f.target]
        rec = self.timeline.begin(f.kind, old.label)
        if old.fleet.alive:
            old.fleet.kill()
            old.killed_at = time.time()
            self.timeline.end(rec)
        else:  # it exited on its own (e.g. gave up waiting for its names): only replace it
            self.timeline.end(rec, "skipped: it had exited")
        await asyncio.sleep(f.delay)  # the replacement starts a little later
        new = self.fleet.spawn(f.target)
        if not await self._registered(new, self.replacement_deadline):
            rec.add_note(f"{new.label} not registered in {self.replacement_deadline:g}s")

    async def _zombie(self, f: Fault) -> None:
        """Freeze past the TTL; a replacement takes the names; the old process resumes."""
        old = self.fleet.current[f.target]
        if not old.fleet.alive:  # it exited on its own: a kill is all that is left to do
            await self._agent_kill(f)
            return
        rec = self.timeline.begin(f.kind, old.label)
        old.fleet.signal(signal.SIGSTOP)
        freeze = [time.time(), float("inf")]
        old.freezes.append(freeze)
        await asyncio.sleep(f.delay)  # frozen before the replacement starts: the fault
        new = self.fleet.spawn(f.target)
        await asyncio.sleep(max(0.0, f.duration - f.delay))  # frozen at least this long
        # resume only once the replacement holds the names, or the zombie case is not made
        took_over = await self._registered(new, self.replacement_deadline)
        old.fleet.signal(signal.SIGCONT)
        freeze[1] = time.time()
        if not took_over:
            new.may_give_up = True  # the old one may keep its names: the new one may give up
        self.timeline.end(rec, "" if took_over else f"resumed before {new.label} registered")
        if not took_over:
            await self._registered(new, self.replacement_deadline)

    async def _registered(self, proc: AgentProc, timeout: float) -> bool:
        return await until(
            lambda: self.fleet.ready(proc) or not proc.fleet.alive, timeout
        ) and self.fleet.ready(proc)

    # -- Redis ----------------------------------------------------------------------------------
    def _sync(self) -> redis.Redis:
        return redis.Redis(port=self.cluster.redis.port, socket_timeout=None)

    async def _client_kill(self) -> None:
        rec = self.timeline.begin(Kind.CLIENT_KILL, "redis")

        def kill() -> str:
            with self._sync() as r:
                return str(r.execute_command("CLIENT", "KILL", "TYPE", "normal"))

        try:
            killed = await asyncio.to_thread(kill)
            self.timeline.end(rec, f"{killed} connections")
        except redis.RedisError as e:  # Redis down or asleep on another lane's fault
            self.timeline.end(rec, f"failed: {e}")

    async def _redis_sleep(self, seconds: float) -> None:
        rec = self.timeline.begin(Kind.REDIS_SLEEP, "redis", f"{seconds:.2f}s")

        def sleep() -> None:
            with self._sync() as r:
                r.execute_command("DEBUG", "SLEEP", f"{seconds:.3f}")

        await asyncio.to_thread(sleep)
        self.timeline.end(rec)

    async def _redis_restart(self, kind: Kind, down: float) -> None:
        server = self.cluster.redis
        rec = self.timeline.begin(kind, "redis", f"down {down:.2f}s")
        server.kill()
        if kind is Kind.REDIS_WIPE:
            shutil.rmtree(server.data_dir / "appendonlydir", ignore_errors=True)
            self.on_data_loss()
        await asyncio.sleep(down)  # the outage
        # started from the main thread: the server's parent-death signal follows the thread
        server.start(timeout=30)
        self.timeline.end(rec)

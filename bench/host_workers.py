"""Worker processes of the ``host`` group: a ``Host`` driven by commands, and a lone agent.

A host worker builds its agents (``HostSpec``), says it is ready, then obeys the commands the
bench puts on its queue, answering each with one result:

* ``("start",)``: ``await host.start()`` (every agent at once, or in waves: ``HostSpec.wave``),
  timed;
* ``("add", k)``: ``k`` more agents added at once to the running host, each made
  (``host.agent``) and started in a task of its own, timed from before it is made, with where
  the time went (``StartPhases``);
* ``("stop",)``: ``await host.stop()`` (every agent drains and leaves), then the worker ends.

Every hosted agent answers ``echo`` (request-reply) and handles ``work`` (role-queue items): a
host with ``hold=True`` takes its items and never finishes them (the host that gets SIGKILLed);
otherwise it reports each item it handled (``{"item": i, "t": <CLOCK_MONOTONIC ns>}``).
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from bench.common import now_ns
from bench.procs import WorkerContext
from bench.protocol import card_for

__all__ = [
    "PHASES",
    "HostSpec",
    "StartPhases",
    "host_worker",
    "lone_agent_worker",
    "settings",
]


def settings(
    url: str, ns: str, heartbeat: float, ttl: float, announce_timeout: float | None = None
) -> Any:
    from agent_sdk.settings import Settings

    base = Settings(redis_url=url, namespace=ns, heartbeat_interval=heartbeat, ttl=ttl)
    if announce_timeout is None:
        return base
    return base.model_copy(update={"announce_timeout": announce_timeout})


@dataclass(frozen=True, slots=True)
class HostSpec:
    """What a host worker carries: ``count`` agents named ``<prefix>-<i>`` (i from ``first``),
    with the cards of ``bench.protocol.card_for`` (10 roles, 1 % match a discovery query), or
    all in ``role`` when given."""

    name: str
    prefix: str
    count: int
    first: int = 0
    role: str | None = None
    max_concurrency: int = 1
    hold: bool = False  # take ``work`` items and never finish them
    heartbeat: float = 1.0
    ttl: float = 3.0
    announce_timeout: float | None = None  # the SDK's default (5 s) unless given
    #: 0: every agent made first and started by ``host.start()`` at once; else the host starts
    #: empty and its agents are made and started ``wave`` at a time (a fallback, see host_runs)
    wave: int = 0


#: The parts of ``Agent.start()`` timed by ``StartPhases`` (the rest is CPU in between).
PHASES = {
    "create": "host.agent(...) and its handlers (the agent made in the task that starts it)",
    "announce": "announce: control XADD → coordinator → announce_result (Membership.announce)",
    "usage": "usage stats (UsageRecorder.start: marks it for the host's flusher)",
    "activate": "groups and doorbells ready, reads begin (Reader.activate; made and subscribed "
    "in the announcement's round trips)",
}


async def _loop_lag(lags: list[float]) -> None:
    """Record how late a 1 ms sleep wakes up, until cancelled (the event loop blocked)."""
    while True:
        t = time.perf_counter()
        await asyncio.sleep(0.001)
        lags.append(time.perf_counter() - t - 0.001)


class StartPhases:
    """Time spent in each of ``PHASES``, per task (one ``start()`` per task), measured by
    wrapping the SDK's methods in this process only: the SDK is not changed."""

    def __init__(self) -> None:
        self.spent: dict[asyncio.Task[Any] | None, dict[str, float]] = {}
        self._installed = False

    def install(self) -> None:
        if self._installed:
            return
        self._installed = True
        from agent_sdk.membership import Membership
        from agent_sdk.messaging.reader import Reader
        from agent_sdk.usage import UsageRecorder

        for cls, attr, phase in (
            (Membership, "announce", "announce"),
            (UsageRecorder, "start", "usage"),
            (Reader, "activate", "activate"),
        ):
            setattr(cls, attr, self._timed(getattr(cls, attr), phase))

    def _timed(
        self, fn: Callable[..., Awaitable[Any]], phase: str
    ) -> Callable[..., Awaitable[Any]]:
        @functools.wraps(fn)
        async def timed(*args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return await fn(*args, **kwargs)
            finally:
                mine = self.spent.setdefault(asyncio.current_task(), {})
                mine[phase] = mine.get(phase, 0.0) + time.perf_counter() - t0

        return timed

    def take(self, task: asyncio.Task[Any] | None) -> dict[str, float]:
        return self.spent.pop(task, {})


async def host_worker(ctx: WorkerContext, url: str, ns: str, spec: HostSpec, commands: Any) -> None:
    """A ``Host`` of ``spec.count`` agents, driven by ``commands`` (module docstring)."""
    from agent_sdk import Host

    phases = StartPhases()
    phases.install()
    host = Host(settings(url, ns, spec.heartbeat, spec.ttl, spec.announce_timeout), name=spec.name)
    held = asyncio.Event()  # never set: a held item is never finished

    def make(i: int, prefix: str, card: Any = None) -> Any:
        card = card or card_for(i, prefix)
        agent = host.agent(
            f"{prefix}-{i}", spec.role or card.role, capabilities=card.capabilities,
            tags=card.tags, max_concurrency=spec.max_concurrency,
        )  # fmt: skip

        @agent.on("echo")
        async def echo(payload: Any) -> Any:
            return payload

        @agent.on("work")
        async def work(payload: Any) -> None:
            ctx.put({"item": payload["i"], "t": now_ns(), "agent": agent.name})
            if spec.hold:
                await held.wait()

        return agent

    ids = range(spec.first, spec.first + spec.count)
    if not spec.wave:
        for i in ids:
            make(i, spec.prefix)
    ctx.ready()
    added = 0
    while True:
        cmd = await asyncio.to_thread(commands.get)
        if cmd[0] == "start":
            t0 = time.perf_counter()
            await host.start()
            for k in range(0, len(ids) if spec.wave else 0, spec.wave or 1):
                wave = [make(i, spec.prefix) for i in ids[k : k + spec.wave]]
                await asyncio.gather(*(a.start() for a in wave))
            ctx.put({"register_s": time.perf_counter() - t0, "agents": len(host.agents)})
        elif cmd[0] == "add":
            first, added = added, added + cmd[1]
            # the bench's own cards (what a server knows already) are made before the clock
            cards = {i: card_for(i, f"{spec.prefix}-u") for i in range(first, added)}

            async def timed(i: int, card: Any) -> tuple[float, dict[str, float]]:
                # as a server adding an agent per request: made and started in the same task
                t = time.perf_counter()
                agent = make(i, f"{spec.prefix}-u", card)
                made = time.perf_counter()
                await agent.start()
                spent = phases.take(asyncio.current_task())
                spent["create"] = made - t
                return time.perf_counter() - t, spent

            lags: list[float] = []
            ticker = asyncio.create_task(_loop_lag(lags))
            cpu0, wall0 = time.process_time(), time.perf_counter()
            results = await asyncio.gather(
                *(asyncio.create_task(timed(i, cards[i])) for i in range(first, added))
            )
            wall = time.perf_counter() - wall0
            ticker.cancel()
            ctx.put({
                "added_s": [s for s, _ in results], "phases": [p for _, p in results],
                "loop_lag_max_s": max(lags, default=0.0),
                "loop_blocked_s": sum(x for x in lags if x > 0.01),
                "cpu_s": time.process_time() - cpu0, "wall_s": wall,
            })  # fmt: skip
        elif cmd[0] == "stop":
            t0 = time.perf_counter()
            await host.stop()
            ctx.put({"stopped_s": time.perf_counter() - t0})
            return


async def lone_agent_worker(
    ctx: WorkerContext, url: str, ns: str, index: int, heartbeat: float, ttl: float
) -> None:
    """One lone ``Agent`` (a process of its own) with the card ``card_for(index, "solo")``."""
    from agent_sdk import Agent

    card = card_for(index, "solo")
    async with Agent(
        f"solo-{index}", card.role, capabilities=card.capabilities, tags=card.tags,
        settings=settings(url, ns, heartbeat, ttl),
    ):  # fmt: skip
        ctx.ready()
        await asyncio.Event().wait()

"""Agents for fault scenarios: several ``Agent``s in one process, each writing what it handles.

Usage::

    python -m tests.faults.fleet --log FILE --names a0,a1 [--role pool] [--concurrency 2]
                                 [--hold 0] [--topic 'news.*'] [--caps c1,c2] [--tags t1]

The bus comes from the ``AGENTBUS_*`` environment. Every event is one line appended to ``FILE``
with a single ``write()`` on an ``O_APPEND`` descriptor, so lines survive a SIGKILL of this process
and a Redis that lost its data (the ledger does not live in the system under test)::

    ready <agent> <instance>        registered
    start <agent> <msg id> <entry id> <delivery count> <type> <instance>
    done  <agent> <msg id> <entry id> <delivery count> <type> <instance>
    live  <agent> <msg id> <type>  a pub/sub broadcast handled
    topic <agent> <msg id>         a topic message received
    term  <agent>                  SIGTERM received: stopping
    stopped <agent>                left the registry (``agent.stop()`` returned)
    lost  <agent> <instance> <code>  the agent stopped by itself because it lost its name
                                   (``agent.name_lost`` is set: another instance holds it)
    halted <agent> <instance>      the agent stopped by itself for another reason

When every agent stopped by itself, the process exits 0. Readers index words from the front: the
instance id is the last word of ``start``/``done`` so the older positions stay where they were.

Handlers: ``job`` and ``ask`` (hold ``payload["hold"]`` seconds, or ``payload["hold"][name]``,
or ``--hold``; reply the agent's name), ``bcast`` (broadcasts), ``stall`` (blocks the event loop
``payload["seconds"]``: the fault of scenario 6). SIGTERM (or stdin closing) stops every agent
gracefully, then the process exits 0.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
import time
from typing import Any

from agent_sdk import Agent
from agent_sdk.messaging import Message


class Ledger:
    """Appends one line per event; atomic per line (O_APPEND, one write)."""

    def __init__(self, path: str) -> None:
        self.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def write(self, *words: object) -> None:
        os.write(self.fd, (" ".join(str(w) for w in words) + "\n").encode())


def build(
    name: str,
    role: str,
    concurrency: int,
    hold: float,
    ledger: Ledger,
    capabilities: list[str],
    tags: list[str],
) -> Agent:
    agent = Agent(name, role, max_concurrency=concurrency, capabilities=capabilities, tags=tags)
    me = agent.instance_id

    async def work(payload: Any, msg: Message) -> str:
        ledger.write("start", name, msg.id, msg.entry_id, msg.delivery_count, msg.type, me)
        seconds = payload.get("hold", hold) if isinstance(payload, dict) else hold
        if isinstance(seconds, dict):  # {"agent name": seconds}: only some agents are slow
            seconds = seconds.get(name, hold)
        if seconds:
            await asyncio.sleep(float(seconds))  # the work itself
        ledger.write("done", name, msg.id, msg.entry_id, msg.delivery_count, msg.type, me)
        return name

    agent.on("job")(work)
    agent.on("ask")(work)

    @agent.on("bcast")
    async def bcast(payload: Any, msg: Message) -> None:
        if msg.entry_id is None:
            ledger.write("live", name, msg.id, msg.type)
        else:
            ledger.write("done", name, msg.id, msg.entry_id, msg.delivery_count, msg.type, me)

    @agent.on("stall")
    async def stall(payload: Any, msg: Message) -> str:
        ledger.write("start", name, msg.id, msg.entry_id, msg.delivery_count, msg.type, me)
        time.sleep(float(payload["seconds"]))  # noqa: ASYNC251 - blocking the loop IS the fault
        ledger.write("done", name, msg.id, msg.entry_id, msg.delivery_count, msg.type, me)
        return name

    return agent


async def listen(agent: Agent, pattern: str, ledger: Ledger, ready: asyncio.Event) -> None:
    async with agent.subscribe(pattern) as sub:
        ready.set()
        async for msg in sub:
            ledger.write("topic", agent.name, msg.id)


async def watch(agent: Agent, ledger: Ledger, stop: asyncio.Event) -> None:
    """Write ``lost`` as soon as ``agent.name_lost`` is set (the agent then stops: its drain may
    take a while), or ``halted`` when the agent stopped by itself for another reason."""
    while not agent.stopped.is_set() and not getattr(agent, "name_lost", None):
        with contextlib.suppress(TimeoutError):  # name_lost is a plain attribute: looked at
            await asyncio.wait_for(agent.stopped.wait(), 0.05)  # every 50 ms
    if not stop.is_set():
        lost = getattr(agent, "name_lost", None)
        if lost is not None:
            ledger.write("lost", agent.name, agent.instance_id, getattr(lost, "code", "?"))
        else:
            ledger.write("halted", agent.name, agent.instance_id)
        await agent.wait_stopped()


async def main(args: argparse.Namespace) -> None:
    ledger = Ledger(args.log)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    names = [n for n in args.names.split(",") if n]
    caps = [c for c in args.caps.split(",") if c]
    tags = [t for t in args.tags.split(",") if t]
    agents = [build(n, args.role, args.concurrency, args.hold, ledger, caps, tags) for n in names]
    await asyncio.gather(*(a.start() for a in agents))
    listeners: list[asyncio.Task[None]] = []
    for a in agents:
        if args.topic:
            subscribed = asyncio.Event()
            listeners.append(asyncio.create_task(listen(a, args.topic, ledger, subscribed)))
            await subscribed.wait()
        ledger.write("ready", a.name, a.instance_id)
    watchers = [asyncio.ensure_future(watch(a, ledger, stop)) for a in agents]
    all_stopped = asyncio.ensure_future(asyncio.gather(*watchers))  # each stopped on its own
    stdin_closed = asyncio.ensure_future(asyncio.to_thread(sys.stdin.read))
    stopping = asyncio.ensure_future(stop.wait())
    await asyncio.wait({stdin_closed, stopping, all_stopped}, return_when=asyncio.FIRST_COMPLETED)
    if not all_stopped.done():  # asked to stop (not: every agent stopped on its own)
        for a in agents:
            ledger.write("term", a.name)

    async def stop_one(a: Agent) -> None:
        await a.stop()
        ledger.write("stopped", a.name)

    stop.set()  # from here on an agent stopping is our doing, not its own
    for task in [*listeners, *watchers]:
        task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.gather(*listeners, *watchers, return_exceptions=True)
    await asyncio.gather(*(stop_one(a) for a in agents))
    stopping.cancel()
    os._exit(0)  # the stdin reader thread may still block; nothing else is left to flush


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--log", required=True)
    p.add_argument("--names", required=True)
    p.add_argument("--role", default="pool")
    p.add_argument("--concurrency", type=int, default=2)
    p.add_argument("--hold", type=float, default=0.0)
    p.add_argument("--topic", default="")
    p.add_argument("--caps", default="", help="capabilities of every agent, comma-separated")
    p.add_argument("--tags", default="", help="tags of every agent, comma-separated")
    asyncio.run(main(p.parse_args()))

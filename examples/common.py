"""What every example agent shares: printing a line, and running until SIGTERM or Ctrl-C."""

from __future__ import annotations

import asyncio
import signal

from agent_sdk import Agent


def say(name: str, text: str) -> None:
    """One line on stdout (``agentbus demo`` shows it in its transcript)."""
    print(f"{name}: {text}", flush=True)


async def serve(agent: Agent) -> None:
    """Register, handle messages until SIGTERM/SIGINT, then leave the registry cleanly."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with agent:
        say(agent.name, f"ready (role {agent.role}, instance {agent.instance_id})")
        await stop.wait()
    say(agent.name, "left the bus")

"""Targets of ``agentbus run`` in tests (``tests/test_run.py``): an agent factory whose ``job``
handler prints when it starts and ends, holding ``payload["hold"]`` seconds (the work)."""

from __future__ import annotations

import asyncio
import os
from typing import Any

from agent_sdk import Agent, Host


def make_agent() -> Agent:
    agent = Agent(os.environ.get("RUN_TARGET_NAME", "runner-1"), "runner")

    @agent.on("job")
    async def job(payload: Any) -> str:
        print(f"start {payload['n']}", flush=True)
        await asyncio.sleep(float(payload.get("hold", 0)))  # the work itself
        print(f"done {payload['n']}", flush=True)
        return "ok"

    return agent


async def make_agent_async() -> Agent:
    return make_agent()


def make_host() -> Host:
    """A host of ``RUN_TARGET_AGENTS`` agents named ``<RUN_TARGET_NAME>-<i>``."""
    host = Host(name=os.environ.get("RUN_TARGET_NAME", "host-1"))
    for i in range(int(os.environ.get("RUN_TARGET_AGENTS", "10"))):
        host.agent(f"{host.name}-{i}", "hosted")
    return host


not_an_agent = 42

if __name__ == "__main__":
    raise SystemExit(make_agent().run())

"""A role member in its own process, for tests that SIGKILL it while it holds messages.

Usage: ``python -m tests.messaging_worker NAME ROLE MAX_CONCURRENCY HOLD``. The bus comes from
the ``AGENTBUS_*`` environment. Prints ``ready <instance_id>``, then for each ``job`` message
``start <message id> <delivery count>`` and, after holding it ``HOLD`` seconds (``inf``: until
killed), ``done <message id>``. Exits when stdin closes.
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any

from agent_sdk import Agent
from agent_sdk.messaging import Message


async def main(name: str, role: str, max_concurrency: int, hold: float) -> None:
    forever = asyncio.Event()
    async with Agent(name, role, max_concurrency=max_concurrency) as agent:

        @agent.on("job")
        async def job(payload: Any, msg: Message) -> str:
            print(f"start {msg.id} {msg.delivery_count}", flush=True)
            if hold == float("inf"):
                await forever.wait()
            else:
                await asyncio.sleep(hold)  # the job's work itself (the behaviour under test)
            print(f"done {msg.id}", flush=True)
            return name

        print(f"ready {agent.instance_id}", flush=True)
        await asyncio.to_thread(sys.stdin.read)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])))

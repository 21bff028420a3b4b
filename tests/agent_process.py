"""A tiny agent program for tests that need a real, separate process (e.g. to SIGKILL it).

Usage: ``python -m tests.agent_process NAME [ROLE] [CAP,CAP] [TAG,TAG]``. The bus comes from the
``AGENTBUS_*`` environment variables. Prints ``ready <instance_id>`` once registered, then runs
until killed (or until its stdin closes, so it never outlives a crashed test).
"""

from __future__ import annotations

import asyncio
import sys

from agent_sdk import Agent


async def main(argv: list[str]) -> None:
    name = argv[0]
    role = argv[1] if len(argv) > 1 else "worker"
    caps = [c for c in (argv[2] if len(argv) > 2 else "").split(",") if c]
    tags = [t for t in (argv[3] if len(argv) > 3 else "").split(",") if t]
    async with Agent(name, role, capabilities=caps, tags=tags) as agent:
        print(f"ready {agent.instance_id}", flush=True)
        # Run until stdin closes (the test ended or died): reading it in a thread keeps the
        # event loop free for heartbeats.
        await asyncio.to_thread(sys.stdin.read)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1:]))

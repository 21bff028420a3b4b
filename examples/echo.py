"""The smallest service: an agent that answers ``ping`` with what it was sent.

    agentbus run examples.echo:agent      # until SIGTERM or Ctrl-C
    python examples/echo.py               # the same, through agent.run()

Settings come from ``AGENTBUS_REDIS_URL`` / ``AGENTBUS_NAMESPACE`` (``agentbus up`` prints them).
"""

from __future__ import annotations

from typing import Any

from agent_sdk import Agent

agent = Agent("echo-1", "echo", capabilities=["ping"])


@agent.on("ping")
async def ping(payload: Any) -> Any:
    return payload


if __name__ == "__main__":
    raise SystemExit(agent.run())

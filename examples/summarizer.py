"""A summarizer: one member of the ``summarizer`` role (competing consumers of its queue).

    python examples/summarizer.py summarizer-1

Settings come from ``AGENTBUS_REDIS_URL`` / ``AGENTBUS_NAMESPACE`` (``agentbus up`` prints them).
"""

from __future__ import annotations

import asyncio
import sys

from pydantic import BaseModel

from agent_sdk import Agent
from agent_sdk.types import Message


def say(name: str, text: str) -> None:
    """One line on stdout (``agentbus demo`` shows it in its transcript)."""
    print(f"{name}: {text}", flush=True)


class Doc(BaseModel):
    text: str
    work_seconds: float = 0.0  # stands in for the time a model call takes


class Summary(BaseModel):
    summary: str
    by: str
    delivery: int


def build(name: str = "summarizer-1") -> Agent:
    agent = Agent(
        name, "summarizer", capabilities=["summarize"], tags=["en"], version="1.2.0",
        max_concurrency=2,
    )  # fmt: skip

    done = 0  # summaries this run finished

    @agent.on("summarize")
    async def summarize(doc: Doc, msg: Message) -> Summary:
        nonlocal done
        # msg.id is the same on every delivery: the idempotency key if the work had side effects
        say(name, f"summarizing message {msg.id} (delivery {msg.delivery_count})")
        await asyncio.sleep(doc.work_seconds)  # the "model call"
        words = doc.text.split()
        summary = " ".join(words[:6]) + (" ..." if len(words) > 6 else "")
        done += 1
        return Summary(summary=summary, by=name, delivery=msg.delivery_count)

    @agent.on("status")
    async def status(payload: object) -> dict[str, object]:
        return {"summaries_done": done, "version": agent.card.version, "status": agent.status}

    @agent.on("announcement")
    async def announcement(payload: dict[str, str]) -> None:
        say(name, f"got broadcast: {payload['text']}")

    return agent


if __name__ == "__main__":  # or: agentbus run summarizer:build --arg name=...
    sys.exit(build(sys.argv[1] if len(sys.argv) > 1 else "summarizer-1").run())

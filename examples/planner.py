"""A planner: splits a document, fans the parts out to the ``summarizer`` role, and has the
result reviewed by whichever agent can ``review`` (discovery + role queue + request-reply).

    python examples/planner.py
"""

from __future__ import annotations

import asyncio
import sys

from pydantic import BaseModel, Field

from agent_sdk import Agent


def say(name: str, text: str) -> None:
    """One line on stdout (``agentbus demo`` shows it in its transcript)."""
    print(f"{name}: {text}", flush=True)


class Job(BaseModel):
    text: str
    parts: int = Field(default=2, ge=1, le=16)


def split(text: str, parts: int) -> list[str]:
    words = text.split()
    size = max(1, -(-len(words) // parts))  # ceiling division
    return [" ".join(words[i : i + size]) for i in range(0, len(words), size)]


def build(name: str = "planner") -> Agent:
    agent = Agent(name, "planner", capabilities=["plan"], version="1.0.0", max_concurrency=4)

    @agent.on("plan")
    async def plan(job: Job) -> dict[str, object]:
        chunks = split(job.text, job.parts)
        say(name, f"planning: {len(chunks)} parts to the summarizer role")
        summaries = await asyncio.gather(
            *(agent.request(role="summarizer", type="summarize", payload={"text": c})
              for c in chunks)
        )  # fmt: skip
        reviewer = await agent.select(capabilities=["review"], strategy="least_loaded")
        draft = " / ".join(s["summary"] for s in summaries)
        review = await agent.request(reviewer.name, "review", {"summary": draft})
        say(name, f"done: reviewed by {reviewer.name}")
        return {"summaries": summaries, "review": review}

    @agent.on("announcement")
    async def announcement(payload: dict[str, str]) -> None:
        say(name, f"got broadcast: {payload['text']}")

    return agent


if __name__ == "__main__":  # or: agentbus run planner:build --arg name=...
    sys.exit(build(sys.argv[1] if len(sys.argv) > 1 else "planner").run())

"""A reviewer: checks a summary and answers a request (request-reply).

python examples/reviewer.py
"""

from __future__ import annotations

import sys

from pydantic import BaseModel

from agent_sdk import Agent


def say(name: str, text: str) -> None:
    """One line on stdout (``agentbus demo`` shows it in its transcript)."""
    print(f"{name}: {text}", flush=True)


class Draft(BaseModel):
    summary: str


class Review(BaseModel):
    approved: bool
    notes: str
    by: str


def build(name: str = "reviewer") -> Agent:
    agent = Agent(name, "reviewer", capabilities=["review"], tags=["en"], version="0.9.0")

    @agent.on("review")
    async def review(draft: Draft) -> Review:
        words = len(draft.summary.split())
        say(name, f"reviewing a {words}-word summary")
        if words > 40:
            return Review(approved=False, notes="too long: keep it under 40 words", by=name)
        return Review(approved=True, notes="clear and short", by=name)

    @agent.on("announcement")
    async def announcement(payload: dict[str, str]) -> None:
        say(name, f"got broadcast: {payload['text']}")

    return agent


if __name__ == "__main__":  # or: agentbus run reviewer:build --arg name=...
    sys.exit(build(sys.argv[1] if len(sys.argv) > 1 else "reviewer").run())

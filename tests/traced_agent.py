"""An agent in its own process that records its spans, for the cross-process trace test.

Usage: ``python -m tests.traced_agent NAME``; the bus comes from the ``AGENTBUS_*`` environment.
Prints ``ready`` once registered; when its stdin closes it stops and prints each finished span as
one JSON line (name, kind, trace_id, span_id, parent_span_id, parent_is_remote).
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any

import orjson
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from agent_sdk import Agent


async def main(name: str) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)  # as an application would: the global provider
    async with Agent(name, "traced") as agent:

        @agent.on("echo")
        async def echo(payload: Any) -> Any:
            return payload

        print("ready", flush=True)
        await asyncio.to_thread(sys.stdin.read)
    for span in exporter.get_finished_spans():
        parent = span.parent
        print(
            orjson.dumps(
                {
                    "name": span.name,
                    "kind": span.kind.name,
                    "trace_id": f"{span.context.trace_id:032x}",
                    "span_id": f"{span.context.span_id:016x}",
                    "parent_span_id": f"{parent.span_id:016x}" if parent else None,
                    "parent_is_remote": parent.is_remote if parent else None,
                }
            ).decode(),
            flush=True,
        )


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))

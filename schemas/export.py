"""Export JSON Schema files for the wire types into ``schemas/json/``.

Run ``python -m schemas.export`` after changing a wire type; a test fails while the committed
files differ from what the models produce, so the published contract cannot drift.
"""

from __future__ import annotations

import sys
from pathlib import Path

import orjson
from pydantic import BaseModel

from schemas.agent import (
    AgentCard,
    AgentRecord,
    Announce,
    Heartbeat,
    Lease,
    Leave,
    LeaveResult,
    Reannounce,
)
from schemas.envelope import Envelope
from schemas.errors import DeadLetterEntry, ErrorInfo
from schemas.events import ActivityEvent, RegistryEvent
from schemas.plugin import PluginManifest

__all__ = ["JSON_DIR", "WIRE_TYPES", "render", "write"]

JSON_DIR = Path(__file__).parent / "json"

#: File name -> model. The names are part of the documented contract.
WIRE_TYPES: dict[str, type[BaseModel]] = {
    "envelope": Envelope,
    "error": ErrorInfo,
    "agent-card": AgentCard,
    "agent-record": AgentRecord,
    "announce": Announce,
    "heartbeat": Heartbeat,
    "leave": Leave,
    "lease": Lease,
    "leave-result": LeaveResult,
    "reannounce": Reannounce,
    "dead-letter": DeadLetterEntry,
    "registry-event": RegistryEvent,
    "activity-event": ActivityEvent,
    "plugin-manifest": PluginManifest,
}


def render(model: type[BaseModel]) -> bytes:
    schema = model.model_json_schema(mode="serialization")
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    return orjson.dumps(schema, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS) + b"\n"


def write(directory: Path = JSON_DIR) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, model in WIRE_TYPES.items():
        path = directory / f"{name}.schema.json"
        path.write_bytes(render(model))
        written.append(path)
    return written


if __name__ == "__main__":
    for p in write():
        sys.stdout.write(f"wrote {p}\n")

"""The coordinator's Lua scripts (``coordinator/lua/*.lua``), registered with a Redis client.

A script line ``-- @include common`` is replaced by ``common.lua`` (shared helpers), so each file
still starts with its own comment naming its KEYS and ARGV. redis-py's ``register_script`` runs
them with ``EVALSHA`` and reloads them after ``NOSCRIPT`` (a restarted Redis).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from importlib import resources

import redis.asyncio as aioredis
from redis.commands.core import AsyncScript

__all__ = ["Scripts", "script_source"]

_INCLUDE = "-- @include "


@cache
def script_source(name: str) -> str:
    """The full source of ``coordinator/lua/<name>.lua`` with its includes pasted in."""
    text = resources.files("coordinator").joinpath("lua", f"{name}.lua").read_text()
    out: list[str] = []
    for line in text.splitlines():
        if line.startswith(_INCLUDE):
            out.append(script_source(line[len(_INCLUDE) :].strip()))
        else:
            out.append(line)
    return "\n".join(out) + "\n"


@dataclass(frozen=True, slots=True)
class Scripts:
    """Every coordinator script, bound to one client."""

    control: AsyncScript
    sweep: AsyncScript
    trim: AsyncScript
    reindex: AsyncScript

    @classmethod
    def register(cls, client: aioredis.Redis) -> Scripts:
        return cls(
            control=client.register_script(script_source("control")),
            sweep=client.register_script(script_source("sweep")),
            trim=client.register_script(script_source("trim")),
            reindex=client.register_script(script_source("reindex")),
        )

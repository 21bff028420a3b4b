"""The data plane's Lua scripts, loaded once per client and run with ``EVALSHA``.

Each script's header comment names its KEYS and ARGV. redis-py's ``Script`` sends ``EVALSHA`` and
falls back to ``SCRIPT LOAD`` after a ``NOSCRIPT`` (for example after Redis restarted).

Note for Redis Cluster: ``send``, ``reply`` and ``deadletter`` touch keys of two hash tags (the
registry and an inbox; a reply list and a stream). They run on a single node (standalone or
Sentinel); on a cluster they would need splitting.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources

import redis.asyncio as aioredis
from redis.commands.core import AsyncScript

__all__ = ["Scripts", "load_script_text"]


def load_script_text(name: str) -> str:
    """The source of ``lua/<name>.lua``."""
    return (resources.files("agent_sdk.messaging") / "lua" / f"{name}.lua").read_text()


@dataclass(frozen=True, slots=True)
class Scripts:
    """Every data-plane script, registered on one client."""

    send: AsyncScript
    reply: AsyncScript
    lease: AsyncScript
    claim: AsyncScript
    deadletter: AsyncScript
    leave: AsyncScript

    @classmethod
    def register(cls, client: aioredis.Redis) -> Scripts:
        return cls(
            send=client.register_script(load_script_text("send")),
            reply=client.register_script(load_script_text("reply")),
            lease=client.register_script(load_script_text("lease")),
            claim=client.register_script(load_script_text("claim")),
            deadletter=client.register_script(load_script_text("deadletter")),
            leave=client.register_script(load_script_text("leave")),
        )

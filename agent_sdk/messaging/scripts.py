"""The data plane's Lua scripts, loaded once per client and run with ``EVALSHA``.

Each script's header comment names its KEYS and ARGV. redis-py's ``Script`` sends ``EVALSHA`` and
falls back to ``SCRIPT LOAD`` after a ``NOSCRIPT`` (for example after Redis restarted).

On one server ``send``, ``reply`` and ``deadletter`` each do their check-and-write in one call
over two hash tags (the registry and an inbox; a reply list and a stream; the dead-letter stream
and a stream). On a Redis Cluster every call stays in one slot: the same scripts are called with
the keys of one slot only and the caller does the other half in a call of its own
(``Sender.deliver`` checks the registry first; ``Replier`` and the dead-letter path ``XACK``
after writing), and ``send`` rings its doorbell with ``SPUBLISH`` (a sharded channel of the
stream's slot) instead of ``PUBLISH``.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources

import redis.asyncio as aioredis
from redis.commands.core import AsyncScript

from agent_sdk.connection import is_cluster

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
    #: Whether the client is a Redis Cluster's (each call must stay in one slot).
    cluster: bool = False

    @classmethod
    def register(cls, client: aioredis.Redis) -> Scripts:
        cluster = is_cluster(client)
        send = load_script_text("send")
        if cluster:
            send = send.replace("redis.call('PUBLISH'", "redis.call('SPUBLISH'")
        return cls(
            cluster=cluster,
            send=client.register_script(send),
            reply=client.register_script(load_script_text("reply")),
            lease=client.register_script(load_script_text("lease")),
            claim=client.register_script(load_script_text("claim")),
            deadletter=client.register_script(load_script_text("deadletter")),
        )

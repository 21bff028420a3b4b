"""The data plane's Lua scripts, loaded once per client and run with ``EVALSHA``.

Each script's header comment names its KEYS and ARGV. redis-py's ``Script`` sends ``EVALSHA`` and
falls back to ``SCRIPT LOAD`` after a ``NOSCRIPT`` (for example after Redis restarted).

On one server ``send``, ``reply`` and ``deadletter`` each do their check-and-write in one call
over two hash tags (the registry and an inbox; a reply list and a stream; the dead-letter stream
and a stream). On a Redis Cluster every call stays in one slot: the same scripts are called with
the keys of one slot only and the caller does the other half in a call of its own
(``Sender.deliver`` checks the registry first; ``Replier`` and the dead-letter path ``XACK``
after writing), and ``send`` rings its doorbell with ``SPUBLISH`` (a sharded channel of the
stream's slot) instead of ``PUBLISH``. The acl-mode scripts (``*_secure``, ``*_proved``) read
proofs in the sender's slot: they run on one server or under Sentinel only (``Settings``
refuses acl mode on a cluster).
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from functools import cache
from importlib import resources

import redis.asyncio as aioredis
from redis.commands.core import AsyncScript

from agent_sdk.connection import is_cluster

__all__ = ["SECURE_SCRIPTS", "Scripts", "load_script_text", "script_text"]

#: The acl-mode scripts: each starts with ``proof.lua`` (digests, verification, proving).
SECURE_SCRIPTS = frozenset(
    {"send_secure", "read_secure", "claim_secure", "xadd_proved", "publish_proved"}
)


def load_script_text(name: str) -> str:
    """The source of ``lua/<name>.lua`` (with ``proof.lua`` before it for acl-mode scripts)."""
    folder = resources.files("agent_sdk.messaging") / "lua"
    body = (folder / f"{name}.lua").read_text()
    if name in SECURE_SCRIPTS:
        return (folder / "proof.lua").read_text() + "\n" + body
    return body


@cache
def script_text(name: str) -> str:
    """``load_script_text``, read once."""
    return load_script_text(name)


_REGISTERED: weakref.WeakKeyDictionary[aioredis.Redis, dict[str, AsyncScript]] = (
    weakref.WeakKeyDictionary()
)


def registered(client: aioredis.Redis, source: str) -> AsyncScript:
    """``client.register_script(source)``, once per client and source (registering hashes the
    source: 40 µs for a large one, which an agent's start must not pay each time)."""
    known = _REGISTERED.setdefault(client, {})
    script = known.get(source)
    if script is None:
        script = known[source] = client.register_script(source)
    return script


@dataclass(frozen=True, slots=True)
class Scripts:
    """Every data-plane script, registered on one client."""

    send: AsyncScript
    reply: AsyncScript
    lease: AsyncScript
    claim: AsyncScript
    deadletter: AsyncScript
    #: acl mode (docs/SECURITY.md): sends with limits and proofs, verified reads and claims,
    #: proved appends and publishes, replies without PEXPIRE.
    send_secure: AsyncScript
    read_secure: AsyncScript
    claim_secure: AsyncScript
    xadd_proved: AsyncScript
    publish_proved: AsyncScript
    reply_secure: AsyncScript
    #: a clean stop: the instance's consumer leaves the groups where it holds nothing
    leave: AsyncScript
    #: Whether the client is a Redis Cluster's (each call must stay in one slot; acl mode is
    #: refused there by ``Settings``).
    cluster: bool = False

    @classmethod
    def register(cls, client: aioredis.Redis) -> Scripts:
        cluster = is_cluster(client)
        names = (
            "send", "reply", "lease", "claim", "deadletter", "send_secure", "read_secure",
            "claim_secure", "xadd_proved", "publish_proved", "reply_secure", "leave",
        )  # fmt: skip
        texts = {n: script_text(n) for n in names}
        if cluster:  # a doorbell is a sharded channel of its stream's slot
            texts["send"] = texts["send"].replace("redis.call('PUBLISH'", "redis.call('SPUBLISH'")
        return cls(cluster=cluster, **{n: client.register_script(t) for n, t in texts.items()})

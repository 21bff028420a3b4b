"""The data plane's Lua scripts, loaded once per client and run with ``EVALSHA``.

Each script's header comment names its KEYS and ARGV. redis-py's ``Script`` sends ``EVALSHA`` and
falls back to ``SCRIPT LOAD`` after a ``NOSCRIPT`` (for example after Redis restarted).

Note for Redis Cluster: ``send``, ``reply`` and ``deadletter`` touch keys of two hash tags (the
registry and an inbox; a reply list and a stream). They run on a single node (standalone or
Sentinel); on a cluster they would need splitting.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from importlib import resources

import redis.asyncio as aioredis
from redis.commands.core import AsyncScript

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

    @classmethod
    def register(cls, client: aioredis.Redis) -> Scripts:
        names = (
            "send", "reply", "lease", "claim", "deadletter", "send_secure", "read_secure",
            "claim_secure", "xadd_proved", "publish_proved", "reply_secure", "leave",
        )  # fmt: skip
        return cls(**{n: client.register_script(script_text(n)) for n in names})

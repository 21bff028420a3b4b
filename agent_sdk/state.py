"""``agent.state``: a small key-value store per agent name that survives restarts.

One Redis hash per name, ``<ns>:agent:{<name>}:state`` (``KeySpace.agent_state``): each field
is a key, each value its JSON text, so ``redis-cli HGETALL`` shows it. The next instance of the
same name reads what the previous one wrote::

    async with Agent("planner", "planner") as agent:
        runs = (await agent.state.get("runs")) or 0
        await agent.state.set("runs", runs + 1)

Writes are **fenced** with the registration's epoch (docs/PROTOCOL.md, "Fencing"): the hash keeps
the largest epoch that wrote to it in the field ``_epoch``, and one script call (``state.lua``)
refuses a write from a smaller epoch with ``NameLost``. So an instance that was replaced while
frozen cannot overwrite what its successor wrote, even before it learns that it lost its name.
Values are limited to ``max_payload_bytes`` each.
"""

from __future__ import annotations

from importlib import resources
from typing import Any

import orjson
import redis.asyncio as aioredis
from redis.commands.core import AsyncScript

from agent_sdk.connection import redis_errors
from agent_sdk.fence import Fence
from agent_sdk.settings import Settings
from schemas.errors import InvalidInput, NameLost, PayloadTooLarge

__all__ = ["EPOCH_FIELD", "AgentState"]

#: The field holding the epoch of the last registration that wrote (not a user key).
EPOCH_FIELD = "_epoch"

_SCRIPT = resources.files("agent_sdk").joinpath("lua/state.lua").read_text()


class AgentState:
    """The persisted state of one agent name, written under the fence of one instance."""

    def __init__(self, client: aioredis.Redis, settings: Settings, name: str, fence: Fence) -> None:
        self._client = client
        self._settings = settings
        self._key = settings.keys.agent_state(name)
        self._name = name
        self._fence = fence
        self._script: AsyncScript = client.register_script(_SCRIPT)

    @property
    def key(self) -> str:
        return self._key

    async def get(self, key: str, default: Any = None) -> Any:
        """The value of ``key`` (``default`` if absent)."""
        _check_key(key)
        with redis_errors(self._settings, f"reading state {key!r} of {self._name!r}"):
            raw = await self._client.hget(self._key, key)
        return default if raw is None else orjson.loads(raw)

    async def all(self) -> dict[str, Any]:
        """Every key and value."""
        with redis_errors(self._settings, f"reading the state of {self._name!r}"):
            raw: Any = await self._client.hgetall(self._key)
        return {
            (k.decode() if isinstance(k, bytes) else k): orjson.loads(v)
            for k, v in raw.items()
            if (k.decode() if isinstance(k, bytes) else k) != EPOCH_FIELD
        }

    async def set(self, key: str, value: Any) -> None:
        """Store ``value`` (any JSON value) under ``key``."""
        _check_key(key)
        data = orjson.dumps(value)
        if len(data) > self._settings.max_payload_bytes:
            raise PayloadTooLarge(
                f"state {key!r} of {self._name!r} is {len(data)} bytes encoded; the limit is "
                f"max_payload_bytes ({self._settings.max_payload_bytes})"
            )
        await self._write("set", key, data)

    async def delete(self, key: str) -> None:
        """Remove ``key`` (no error if absent)."""
        _check_key(key)
        await self._write("del", key, b"")

    async def _write(self, op: str, key: str, data: bytes) -> None:
        epoch = self._fence.epoch
        if self._fence.lost is not None:
            raise self._fence.lost
        if epoch is None:
            raise InvalidInput(f"{self._name!r} is not registered: state is written once started")
        with redis_errors(self._settings, f"writing state {key!r} of {self._name!r}"):
            held: Any = await self._script(keys=[self._key], args=[epoch, op, key, data])
        if held is not None:
            raise NameLost(
                f"{self._name!r}: a newer registration (epoch {int(held)}) owns this state; "
                f"this instance's epoch is {epoch}: it lost its name",
                details={"name": self._name, "epoch": int(held), "own_epoch": epoch},
            )


def _check_key(key: str) -> None:
    if not isinstance(key, str) or not key or key == EPOCH_FIELD or len(key) > 256:
        raise InvalidInput(f"state key must be a non-empty string of <= 256 characters, not "
                           f"{EPOCH_FIELD!r}: got {key!r}")  # fmt: skip

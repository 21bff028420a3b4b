"""The registry writer: every change of the registry is one Lua script call (atomic).

Each script updates the record hash, its indexes (``R:agents``, ``R:role:*``, ``R:cap:*``,
``R:tag:*``), ``R:deadlines`` and writes the change-feed event (``XADD R:events`` + ``PUBLISH``)
in the same call, so a reader never sees a record without its event or an index without its
record. Only coordinators call this module.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis

from coordinator.scripts import Scripts
from coordinator.settings import CoordinatorSettings
from coordinator.validation import FastHeartbeat, PreparedAnnounce
from schemas.errors import ErrorCode, ErrorInfo
from schemas.keys import COORDINATOR_GROUP

__all__ = ["AnnounceOutcome", "Registry", "SweepResult"]


@dataclass(frozen=True, slots=True)
class AnnounceOutcome:
    """What an announcement did: the stored record (JSON-ready) or why it was refused."""

    record: dict[str, Any] | None = None
    error: ErrorInfo | None = None
    event: str = ""


@dataclass(frozen=True, slots=True)
class SweepResult:
    expired: int
    cutoff_ms: int
    now_ms: int
    watermark_ms: int | None
    stall_began: bool


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class Registry:
    """Applies announce / heartbeat batches / leave / sweeps for one namespace."""

    def __init__(self, client: aioredis.Redis, settings: CoordinatorSettings) -> None:
        self._scripts = Scripts.register(client)
        self.settings = settings
        keys = settings.keys
        self._keys = [keys.agents(), keys.deadlines(), keys.events()]
        self._args: list[str | int] = [
            keys.record_prefix,
            keys.role_index_prefix,
            keys.capability_index_prefix,
            keys.tag_index_prefix,
            settings.events_maxlen,
            keys.events_channel(),
        ]
        self._control = keys.control()
        self._clock = keys.clock()

    async def announce(self, entry_id: str, ann: PreparedAnnounce) -> AnnounceOutcome:
        args: list[Any] = [
            *self._args,
            ann.name,
            ann.instance_id,
            entry_id,
            ann.record.ttl_ms,
            ann.record_json,
        ]
        for k, v in ann.fields.items():
            args += (k, v)
        result = await self._scripts.announce(keys=self._keys, args=args)
        status = _text(result[0])
        if status == "name_taken":
            inst, host, pid, last_seen, expires = (_text(x) for x in result[1:6])
            return AnnounceOutcome(
                error=ErrorInfo(
                    code=ErrorCode.NAME_TAKEN,
                    description=(
                        f"the name {ann.name!r} is held by live instance {inst} "
                        f"(host {host or '?'}, pid {pid or '?'}); it expires in {expires} ms "
                        "unless that instance heartbeats"
                    ),
                    details={
                        "name": ann.name,
                        "instance_id": inst,
                        "host": host or None,
                        "pid": int(pid) if pid.isdigit() else None,
                        "last_seen": last_seen or None,
                        "expires_in_ms": int(float(expires)),
                    },
                )
            )
        record = ann.record.model_dump(mode="json", exclude_none=True)
        record["last_seen"] = ann.fields["last_seen"]
        record["registered_at"] = _text(result[1])
        return AnnounceOutcome(record=record, event=_text(result[2]))

    async def heartbeats(self, batch: list[FastHeartbeat]) -> list[int]:
        """Apply a batch of heartbeats and XACK them; return 0-based positions of unknown ones."""
        if not batch:
            return []
        blob = "\n".join([" ".join(hb) for hb in batch])  # one argument: cheap to pack
        args: list[Any] = [*self._args, COORDINATOR_GROUP, blob]
        unknown = await self._scripts.heartbeat(keys=[*self._keys, self._control], args=args)
        return [int(i) - 1 for i in unknown]

    async def leave(self, name: str, instance_id: str) -> bool:
        removed = await self._scripts.leave(keys=self._keys, args=[*self._args, name, instance_id])
        return bool(removed)

    async def sweep(self, limit: int = 1000) -> SweepResult:
        s = self.settings
        grace = max(s.ttl_ms, s.stall_ms)
        res = await self._scripts.sweep(
            keys=[*self._keys, self._control, self._clock],
            args=[*self._args, COORDINATOR_GROUP, s.stall_ms, grace, limit],
        )
        n, cutoff, now, wm, began = (int(x) for x in res)
        return SweepResult(n, cutoff, now, wm if wm >= 0 else None, bool(began))

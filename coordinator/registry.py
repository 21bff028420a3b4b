"""The registry writer: every change of the registry is a Lua script call (atomic).

``apply`` hands a batch of control entries (heartbeats, announces, leaves, in stream order) to
``coordinator/lua/control.lua`` in one call: it updates the record hashes, their indexes
(``R:agents``, ``R:role:*``, ``R:cap:*``, ``R:tag:*``), ``R:deadlines``, writes the change-feed
events (``XADD R:events`` + ``PUBLISH``), answers accepted announces and leaves on their reply
lists (on a Redis Cluster it returns those answers, pushed by the caller: other slots) and
``XACK``s what it applied, so a reader never sees a record without its event or an
index without its record, and an entry is acknowledged exactly when it was applied. Only
coordinators call this module.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from itertools import chain
from typing import Any

import orjson
import redis.asyncio as aioredis
from redis.exceptions import NoScriptError, ResponseError

from agent_sdk.cluster_lane import AnyLane, open_lane
from agent_sdk.connection import is_cluster
from coordinator.outbox import LEAVE_RESULT, reply_head
from coordinator.scripts import Scripts
from coordinator.settings import CoordinatorSettings
from coordinator.validation import FastHeartbeat, PreparedAnnounce
from schemas.agent import ControlType
from schemas.errors import ErrorCode, ErrorInfo
from schemas.keys import COORDINATOR_GROUP

__all__ = ["ControlBatch", "ControlResult", "Registry", "SweepResult", "name_taken"]


@dataclass(frozen=True, slots=True)
class SweepResult:
    expired: int
    cutoff_ms: int
    now_ms: int
    watermark_ms: int | None
    stall_began: bool


@dataclass(slots=True)
class ControlBatch:
    """Control entries for one script call, in stream order (the script's ARGV after the
    common part). Consecutive heartbeats are packed into one argument."""

    args: list[Any] = field(default_factory=list)
    entries: int = 0
    _run: list[str] = field(default_factory=list)

    def heartbeat(self, hb: FastHeartbeat) -> None:
        self._run.append(" ".join(hb))
        self.entries += 1

    def announce(
        self,
        entry_id: str,
        ann: PreparedAnnounce,
        reply_to: str = "",
        correlation_id: str | None = None,
    ) -> None:
        """An announce (control.lua's header): its parts as arguments, its record hash as one
        JSON array the script decodes in C and hands to ``HSET`` as it is."""
        self._close_run()
        head = ""
        if reply_to:
            head = reply_head(
                type=ControlType.ANNOUNCE_RESULT, target=ann.name, correlation_id=correlation_id
            ).decode()
        tail: tuple[str, ...] = ("seen_ms", "", "epoch", "") if ann.lease else ("epoch", "")
        record = orjson.dumps([*chain.from_iterable(ann.fields.items()), *tail])
        self.args += (
            "a", entry_id, ann.name, ann.instance_id, ann.ttl_ms, ann.registered_at_offset,
            reply_to, head, ann.record_json[:-1], ann.lease or "", ann.role,
            len(ann.capabilities), *ann.capabilities, len(ann.tags), *ann.tags, record,
        )  # fmt: skip
        self.entries += 1

    def renew(
        self, entry_id: str, lease: str, ttl_ms: int, pairs: list[tuple[str, str]], members: int
    ) -> None:
        """The renewal part of a lease entry: the deadline of ``lease``, which the names it
        holds live by; ``members``: how many names the entry carries (renewed or beating)."""
        self._close_run()
        names = orjson.dumps([n for n, _ in pairs])
        insts = orjson.dumps([i for _, i in pairs])
        self.args += ("r", entry_id, lease, str(ttl_ms), names, insts, str(members))
        self.entries += 1

    def leave(
        self,
        entry_id: str,
        name: str,
        instance_id: str,
        reply_to: str = "",
        correlation_id: str | None = None,
    ) -> None:
        self._close_run()
        head = b""
        if reply_to:
            head = reply_head(type=LEAVE_RESULT, target=name, correlation_id=correlation_id)
        self.args += ("l", entry_id, name, instance_id, reply_to, head)
        self.entries += 1

    def _close_run(self) -> None:
        if self._run:
            self.args += ("h", "\n".join(self._run))  # one argument: cheap to pack
            self._run = []

    def finish(self) -> list[Any]:
        self._close_run()
        return self.args


@dataclass(frozen=True, slots=True)
class ControlResult:
    """What a batch did besides the applied, answered and acknowledged entries."""

    #: heartbeats from instances the registry does not hold: (entry id, name, instance id, the
    #: instance that holds the name instead or "" if nobody does)
    unknown: list[tuple[str, str, str, str]]
    refused: dict[str, tuple[str, str, str, str, str]]  # announce entry id -> the holder
    removed: int  # leaves that removed their instance
    failed: list[tuple[str, str]] = field(default_factory=list)  # (entry id, Redis's error)
    #: announces written before their instance left or expired, applied late: not applied
    stale: list[str] = field(default_factory=list)
    #: on a Redis Cluster, the answers the script could not push (other slots): (reply list,
    #: envelope JSON), for the caller to push
    replies: list[tuple[str, bytes]] = field(default_factory=list)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _bytes(value: Any) -> bytes:
    return value if isinstance(value, bytes) else str(value).encode()


def name_taken(name: str, holder: tuple[str, str, str, str, str]) -> ErrorInfo:
    """The refusal of an announce for a name a live instance holds (the script's answer)."""
    inst, host, pid, last_seen, expires = holder
    return ErrorInfo(
        code=ErrorCode.NAME_TAKEN,
        description=(
            f"the name {name!r} is held by live instance {inst} "
            f"(host {host or '?'}, pid {pid or '?'}); it expires in {expires} ms "
            "unless that instance heartbeats"
        ),
        details={
            "name": name,
            "instance_id": inst,
            "host": host or None,
            "pid": int(pid) if pid.isdigit() else None,
            "last_seen": last_seen or None,
            "expires_in_ms": int(float(expires)),
        },
    )


class Registry:
    """Applies control batches and sweeps for one namespace."""

    def __init__(self, client: aioredis.Redis, settings: CoordinatorSettings) -> None:
        self._scripts = Scripts.register(client)
        self.settings = settings
        keys = settings.keys
        self._control = keys.control()
        # the convention of every registry script (coordinator/lua/common.lua)
        self._keys = [
            keys.agents(),
            keys.deadlines(),
            keys.events(),
            self._control,
            keys.clock(),
            keys.tombstones(),
            keys.leases(),
        ]
        self._args: list[str | int] = [
            keys.record_prefix,
            keys.role_index_prefix,
            keys.capability_index_prefix,
            keys.tag_index_prefix,
            settings.events_maxlen,
            keys.events_channel(),
            COORDINATOR_GROUP,
            settings.stall_ms,
            max(settings.ttl_ms, settings.stall_ms),  # the grace after a stall
            settings.tombstone_keep_ms,
            keys.lease_prefix,
        ]
        self._control_keys = [*self._keys, keys.epoch()]
        #: on a cluster the script returns its replies instead of pushing them (other slots);
        #: so it does with replica_acks, so that no answer goes out before the WAIT
        self.cluster = is_cluster(client)
        acks = settings.replica_acks
        returned = self.cluster or acks > 0
        reply_ttl: int | str = "return" if returned else settings.reply_ttl_ms
        self._control_args: list[Any] = [*self._args, reply_ttl]
        #: replica_acks: each control script is followed by WAIT on its connection
        self._wait = (acks, round(settings.replica_ack_timeout * 1000)) if acks else None
        self._client = client
        #: the control script's own connection (``_run_control``)
        self._lane: AnyLane | None = None
        self._lane_lock = asyncio.Lock()

    async def aclose(self) -> None:
        """Hand back the control script's connection, if one was opened."""
        lane, self._lane = self._lane, None
        if lane is not None:
            await lane.aclose()

    async def _run_control(self, args: list[Any]) -> Any:
        """The control script, on a connection of its own (a lane: packed by hiredis, no pool
        checkout per call; 10 % fewer instructions per announcement than redis-py's script
        call, docs/BENCHMARKS.md), then ``WAIT replica_acks`` on it when set: it returns once
        a replica holds what the script wrote (or the timeout passed: the lane then writes
        without ``WAIT`` for ``UNREPLICATED_HOLD`` seconds, as the SDK's sends do)."""
        script = self._scripts.control
        keys = self._control_keys
        command = ("EVALSHA", script.sha, len(keys), *keys, *args)
        async with self._lane_lock:
            if self._lane is None:
                self._lane = open_lane(self._client)
            (reply,) = await self._lane.execute((command,), wait=self._wait)
            if isinstance(reply, NoScriptError):  # a restarted or new node: load it, again
                await self._client.script_load(script.script)
                (reply,) = await self._lane.execute((command,), wait=self._wait)
        if isinstance(reply, ResponseError):
            raise reply
        return reply

    async def apply(self, batch: ControlBatch) -> ControlResult:
        """Apply, answer and ``XACK`` a batch in one script call; refused announces and
        entries Redis refused are left to the caller (not acknowledged)."""
        args = batch.finish()
        if not args:
            return ControlResult([], {}, 0)
        res: Any = await self._run_control([*self._control_args, *args])
        unknown = [(_text(e), _text(n), _text(i), _text(h)) for e, n, i, h in res[0]]
        refused: dict[str, tuple[str, str, str, str, str]] = {}
        for row in res[1]:
            eid, inst, host, pid, last_seen, expires = (_text(x) for x in row)
            refused[eid] = (inst, host, pid, last_seen, expires)
        failed = [(_text(eid), _text(err)) for eid, err in res[3]]
        stale = [_text(x) for x in res[4]]
        replies = [(_text(to), _bytes(text)) for to, text in res[5]]
        return ControlResult(unknown, refused, int(res[2]), failed, stale, replies)

    async def announce(self, entry_id: str, ann: PreparedAnnounce) -> ErrorInfo | None:
        """Apply one announce without a reply (tests, tools); the refusal, if any."""
        batch = ControlBatch()
        batch.announce(entry_id, ann)
        result = await self.apply(batch)
        holder = result.refused.get(entry_id)
        return None if holder is None else name_taken(ann.name, holder)

    async def heartbeats(self, run: list[FastHeartbeat]) -> list[int]:
        """Apply heartbeats and XACK them; return 0-based positions of unknown ones."""
        batch = ControlBatch()
        for hb in run:
            batch.heartbeat(hb)
        unknown = {(name, inst) for _, name, inst, _ in (await self.apply(batch)).unknown}
        return [i for i, hb in enumerate(run) if (hb[1], hb[2]) in unknown]

    async def leave(self, name: str, instance_id: str, entry_id: str = "0-0") -> bool:
        batch = ControlBatch()
        batch.leave(entry_id, name, instance_id)
        return (await self.apply(batch)).removed == 1

    async def reindex(self, count: int = 1000) -> int:
        """Build the role x capability sets of records written before them (``reindex.lua``),
        ``count`` names per call, until the layout is 2; how many calls it took (0: nothing to
        do)."""
        keys = self.settings.keys
        layout = await self._client.get(keys.layout())
        if layout in ("2", b"2"):
            return 0
        cursor, calls = "0", 0
        while True:
            cursor = _text(await self._scripts.reindex(
                keys=[keys.agents(), keys.layout()],
                args=[keys.record_prefix, keys.role_index_prefix, cursor, count],
            ))  # fmt: skip
            calls += 1
            if cursor == "0":
                return calls

    async def trim_control(self) -> int:
        """Drop processed control entries, cap the rest at ``control_maxlen``; how many went."""
        n = await self._scripts.trim(
            keys=[self._control], args=[COORDINATOR_GROUP, self.settings.control_maxlen]
        )
        return int(n)

    async def sweep(self, limit: int = 1000) -> SweepResult:
        res = await self._scripts.sweep(keys=self._keys, args=[*self._args, limit])
        n, cutoff, now, wm, began = (int(x) for x in res)
        return SweepResult(n, cutoff, now, wm if wm >= 0 else None, bool(began))

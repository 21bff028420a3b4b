"""Dead letters: entries that cannot be handled, kept for a person to inspect or replay.

An entry is dead-lettered when it cannot be decoded (``undecodable``), has a version this side
cannot read (``unsupported_version``), names a type nobody handles (``unknown_type``), carries an
invalid payload (``bad_request``), expired before it was handled (``deadline_exceeded``) or failed
``max_deliveries`` times (``max_deliveries``). The dead letter is an entry of ``<ns>:deadletter``
with the fields ``reason`` (a sentence), ``code``, ``source`` (stream key), ``source_id`` (entry
id), ``failed_at`` (ISO-8601 UTC), and every original field as ``orig.<field>``. Writing it and
acknowledging the original are one script, so a reader never stalls on a bad entry (on a Redis
Cluster two calls, one per slot: the dead letter is written first, then the original is
acknowledged, so a failure in between leaves it pending, to be dead-lettered again, never lost).

``list_dead_letters`` and ``replay`` are what ``agentbus deadletter`` shows and does.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import redis.asyncio as aioredis

from agent_sdk.connection import is_cluster, queue_ring, redis_errors
from agent_sdk.messaging.codec import iso
from agent_sdk.messaging.scripts import Scripts, registered, script_text
from agent_sdk.settings import Settings
from schemas.display import safe_text
from schemas.errors import InvalidInput
from schemas.priority import PRIORITIES

__all__ = [
    "ORIG_PREFIX",
    "DeadLetter",
    "dead_letter",
    "delete_dead_letter",
    "list_dead_letters",
    "replay",
]

ORIG_PREFIX = "orig."
_REPLAYABLE_KINDS = frozenset({"send", "request", "broadcast"})
_ENTRY_ID = re.compile(r"^\d{1,20}(-\d{1,20})?$")


def _text(v: Any) -> str:
    return v.decode(errors="replace") if isinstance(v, bytes) else v


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """One entry of the dead-letter stream."""

    id: str
    reason: str
    code: str
    source: str
    source_id: str
    failed_at: str
    original: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_entry(cls, entry_id: str, fields: Mapping[Any, Any]) -> DeadLetter:
        plain = {_text(k): _text(v) for k, v in fields.items()}
        return cls(
            id=entry_id,
            reason=plain.get("reason", ""),
            code=plain.get("code", ""),
            source=plain.get("source", ""),
            source_id=plain.get("source_id", ""),
            failed_at=plain.get("failed_at", ""),
            original={
                k[len(ORIG_PREFIX) :]: v for k, v in plain.items() if k.startswith(ORIG_PREFIX)
            },
        )

    @property
    def type(self) -> str | None:
        return self.original.get("type")


async def dead_letter(
    client: aioredis.Redis,
    scripts: Scripts,
    settings: Settings,
    *,
    source: str,
    entry_id: str,
    fields: Mapping[Any, Any],
    reason: str,
    code: str,
    group: str | None,
) -> str:
    """Move one entry to the dead-letter stream and XACK it in ``group`` (one EVALSHA)."""
    args: list[str | bytes] = [
        group or "", str(settings.deadletter_maxlen), entry_id,
        "reason", reason, "code", code, "source", source, "source_id", entry_id,
        "failed_at", iso(datetime.now(UTC)),
    ]  # fmt: skip
    for k, v in fields.items():
        args += [ORIG_PREFIX + _text(k), v]
    with redis_errors(settings, "dead-lettering a message"):
        if scripts.cluster:  # two slots: write the dead letter, then acknowledge
            args[0] = ""
            new_id = await scripts.deadletter(keys=[settings.keys.deadletter()], args=args)
            if group:
                await client.xack(source, group, entry_id)
        else:
            new_id = await scripts.deadletter(keys=[settings.keys.deadletter(), source], args=args)
    return _text(new_id)


async def list_dead_letters(
    client: aioredis.Redis, settings: Settings, *, count: int = 100, newest_first: bool = True
) -> list[DeadLetter]:
    """The dead letters, newest first by default."""
    key = settings.keys.deadletter()
    with redis_errors(settings, "listing dead letters"):
        if newest_first:
            entries: Any = await client.xrevrange(key, count=count)
        else:
            entries = await client.xrange(key, count=count)
    return [DeadLetter.from_entry(_text(eid), f) for eid, f in entries]


async def replay(client: aioredis.Redis, settings: Settings, dead_letter_id: str) -> str:
    """Put a dead letter's original fields back on its source stream; delete the dead letter.

    The message gets a new entry id (and a fresh delivery count) but keeps its message ``id``
    when the original had one, so idempotent handlers still recognise it. Returns the new entry id.
    """
    if not _ENTRY_ID.match(dead_letter_id):
        raise InvalidInput(
            f"{dead_letter_id!r} is not a dead letter id (a stream entry id like 1700000000000-0)"
        )
    key = settings.keys.deadletter()
    with redis_errors(settings, "replaying a dead letter"):
        entries: Any = await client.xrange(key, min=dead_letter_id, max=dead_letter_id, count=1)
        if not entries:
            raise InvalidInput(f"no dead letter {dead_letter_id!r} in {key}")
        letter = DeadLetter.from_entry(_text(entries[0][0]), entries[0][1])
        if not letter.source or not letter.original:
            raise InvalidInput(f"dead letter {dead_letter_id!r} has no source or no fields")
        check_replay_target(settings, letter)
        fields: dict[Any, Any] = dict(letter.original)
        fields.setdefault("id", letter.source_id)
        if settings.secure:  # proved again under its sender (operators are trusted to)
            return await _replay_proved(client, settings, letter, fields, dead_letter_id)
        if is_cluster(client):  # two slots: no MULTI; back on its stream first, then deleted
            async with client.pipeline(transaction=False) as pipe:
                pipe.xadd(letter.source, fields)
                queue_ring(pipe, settings.keys.bell(_family(letter.source)))
                new_id, _ = await pipe.execute()
            await client.xdel(key, dead_letter_id)
            return _text(new_id)
        async with client.pipeline(transaction=True) as pipe:
            pipe.xadd(letter.source, fields)
            pipe.xdel(key, dead_letter_id)
            pipe.publish(settings.keys.bell(_family(letter.source)), "")
            new_id, _, _ = await pipe.execute()
    return _text(new_id)


def _family(stream: str) -> str:
    """The normal-priority stream of ``stream``'s family (whose doorbell rings for all)."""
    for p in PRIORITIES:
        if p != "normal":
            stream = stream.removesuffix(f":{p}")
    return stream


def check_replay_target(settings: Settings, letter: DeadLetter) -> None:
    """A dead letter goes back only to an inbox or a role queue of this namespace, and only
    as a message: never to the control stream, a reply list, or a key outside the namespace
    (a dead letter's fields are whatever its writer put there)."""
    if not _replay_target(settings.namespace).match(letter.source):
        raise InvalidInput(
            f"dead letter {letter.id} names source {safe_text(letter.source, 200)!r}, which is "
            "not an inbox or role queue of this namespace: not replayed"
        )
    kind = letter.original.get("kind", "")
    if kind not in _REPLAYABLE_KINDS:
        raise InvalidInput(
            f"dead letter {letter.id} is a {safe_text(kind, 50)!r} entry; only messages "
            f"({', '.join(sorted(_REPLAYABLE_KINDS))}) are replayed"
        )


def _replay_target(ns: str) -> re.Pattern[str]:
    name = r"[A-Za-z0-9][A-Za-z0-9._@/-]{0,127}"
    prio = r"(:(critical|important|low))?"
    return re.compile(
        rf"^{re.escape(ns)}:(agent:\{{{name}\}}:inbox|role:\{{{name}\}}:queue){prio}$"
    )


async def _replay_proved(
    client: aioredis.Redis, settings: Settings, letter: DeadLetter, fields: dict[Any, Any],
    dead_letter_id: str,
) -> str:  # fmt: skip
    sender = fields.get("sender", "")
    if not _replay_target(settings.namespace).match(
        f"{settings.namespace}:agent:{{{sender}}}:inbox"
    ):
        raise InvalidInput(f"dead letter {letter.id} has no valid sender: not replayed")
    keys = settings.keys
    family = _family(letter.source)
    script = registered(client, script_text("xadd_proved"))
    flat = [x for pair in fields.items() for x in pair]
    new_id = await script(
        keys=[letter.source, keys.proofs(sender)],
        args=[0, settings.proof_keep * 1000, keys.bell(family), *flat],
    )
    await client.xdel(keys.deadletter(), dead_letter_id)
    return _text(new_id)


async def delete_dead_letter(client: aioredis.Redis, settings: Settings, *ids: str) -> int:
    """Delete dead letters by id; returns how many existed."""
    if not ids:
        return 0
    with redis_errors(settings, "deleting dead letters"):
        return int(await client.xdel(settings.keys.deadletter(), *ids))

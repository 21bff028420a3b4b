"""Reading the registry change feed: resumable, filtered, surviving reconnects.

The feed is the capped stream ``R:events`` (``KeySpace.events()``); the entry id is the
**revision**. ``watch_registry`` reads it with ``XREAD BLOCK`` from a revision and remembers the
last id it saw, so after a dropped connection (or a restart of the caller, which passes the last
``event.revision`` it handled as ``since``) it continues exactly where it stopped: every event once,
in order.

``since``:

* ``None``: every event the stream still holds, then new ones;
* ``"now"``: only events written after the call (resolved at once to a concrete revision, so a
  reconnect loses nothing);
* a revision (``"1700000000000-0"``): the events after it.

When the stream was trimmed past the resume point (events were lost to ``MAXLEN``), the reader
raises ``EventsLost`` naming the oldest revision still held, instead of silently skipping.
``tail_stream`` is the generic reader, also used for session activity (``agent_sdk.activity``).
"""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator, Collection
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from agent_sdk.connection import CONNECTION_ERRORS
from agent_sdk.retry import Backoff, retrying
from schemas.errors import EventsLost, InvalidInput
from schemas.events import RegistryEvent, RegistryEventType
from schemas.keys import KeySpace

__all__ = ["EventsLost", "check_resumable", "latest_id", "tail_stream", "watch_registry"]

log = logging.getLogger("agentbus.watch")

_ID_RE = re.compile(r"^\d+(-\d+)?$")
_BLOCK_MS = 5_000
_BATCH = 256
_BACKOFF_MAX = 2.0


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _id_tuple(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


async def latest_id(client: aioredis.Redis, key: str) -> str:
    """The id of the newest entry of stream ``key`` (``0-0`` when empty or missing)."""
    newest: Any = await client.xrevrange(key, count=1)
    return _text(newest[0][0]) if newest else "0-0"


async def _check_not_trimmed(client: aioredis.Redis, key: str, after: str) -> None:
    """Raise ``EventsLost`` if entries newer than ``after`` may have been removed from ``key``.

    Trimming removes the oldest entries. If the resume point itself is gone and the oldest entry
    left is newer, the entries just after the resume point went with it (``MAXLEN ~`` trims whole
    nodes). ``XDEL`` is caught through ``max-deleted-entry-id``.
    """
    if after == "0-0":
        return
    try:
        info: dict[Any, Any] = await client.xinfo_stream(key)
    except ResponseError:  # no such key: nothing was ever written, or it expired whole
        return
    first = info.get("first-entry")
    first_id = _text(first[0]) if first else None
    deleted = info.get("max-deleted-entry-id")
    lost_by_xdel = deleted is not None and _id_tuple(_text(deleted)) > _id_tuple(after)
    lost_by_trim = (
        first_id is not None
        and _id_tuple(first_id) > _id_tuple(after)
        and not await client.xrange(key, min=after, max=after, count=1)
        and int(info.get("entries-added", 0) or 0) > int(info.get("length", 0) or 0)
    )
    if lost_by_xdel or lost_by_trim:
        raise EventsLost(
            f"stream {key} no longer holds the entries after {after}: events were trimmed"
            + (f"; the oldest still held is {first_id}" if first_id else ""),
            details={"key": key, "after": after, "first": first_id},
        )


async def check_resumable(client: aioredis.Redis, key: str, after: str) -> None:
    """Raise ``EventsLost`` if stream ``key`` no longer holds every entry after ``after`` (for a
    reader that replays with ``XRANGE`` instead of ``tail_stream``, such as the gateway)."""
    await _check_not_trimmed(client, key, after)


async def tail_stream(
    client: aioredis.Redis,
    key: str,
    since: str | None = None,
    *,
    block_ms: int = _BLOCK_MS,
    batch: int = _BATCH,
) -> AsyncIterator[tuple[str, dict[Any, Any]]]:
    """Yield ``(entry id, fields)`` of stream ``key`` after ``since``, forever, in order.

    Connection errors are logged and retried with backoff (``agent_sdk.retry``), resuming from
    the last id yielded.
    """
    if since is not None and since != "now" and not _ID_RE.match(since):
        raise InvalidInput(
            f"invalid resume point {since!r}: use a stream entry id such as 1700000000000-0, "
            '"now", or None for everything held'
        )
    if since == "now":
        since = await latest_id(client, key)
    last = since or "0-0"
    if since is not None:
        await _check_not_trimmed(client, key, last)
    backoff = Backoff(cap=_BACKOFF_MAX)
    while True:
        reply: Any = None
        async for attempt in retrying(
            f"reading {key} from {last}", log=log, cap=_BACKOFF_MAX, retry_on=CONNECTION_ERRORS,
            backoff=backoff,
        ):  # fmt: skip
            with attempt:
                if attempt.retry_state.attempt_number > 1:  # reconnected: anything lost?
                    await _check_not_trimmed(client, key, last)
                reply = await client.xread({key: last}, count=batch, block=block_ms)
        backoff.reset()
        if not reply:
            continue
        entries = reply[0][1]
        for entry_id, fields in entries:
            last = _text(entry_id)
            yield last, fields
        if len(entries) == batch:  # a reader this far behind may be overtaken by trimming
            await _check_not_trimmed(client, key, last)


async def watch_registry(
    client: aioredis.Redis,
    keys: KeySpace,
    since: str | None = None,
    *,
    roles: Collection[str] | None = None,
    types: Collection[RegistryEventType | str] | None = None,
    names: Collection[str] | None = None,
    block_ms: int = _BLOCK_MS,
) -> AsyncIterator[RegistryEvent]:
    """Registry events after ``since`` (see the module docstring), optionally filtered.

    ``roles``, ``types`` and ``names`` keep only events whose role, type or agent name is listed.
    An entry that does not decode is logged and skipped: a bad entry never stalls the reader.
    """
    role_set = frozenset(roles) if roles else None
    try:
        type_set = frozenset(RegistryEventType(t) for t in types) if types else None
    except ValueError as e:
        known = ", ".join(t.value for t in RegistryEventType)
        raise InvalidInput(f"unknown registry event type in {types!r}: use {known}") from e
    name_set = frozenset(names) if names else None
    async for entry_id, fields in tail_stream(client, keys.events(), since, block_ms=block_ms):
        try:
            event = RegistryEvent.from_fields(entry_id, fields)
        except ValueError as e:
            log.warning("skipping undecodable change-feed entry %s: %s", entry_id, e)
            continue
        if type_set is not None and event.type not in type_set:
            continue
        if role_set is not None and event.role not in role_set:
            continue
        if name_set is not None and event.name not in name_set:
            continue
        yield event

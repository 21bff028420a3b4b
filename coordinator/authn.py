"""acl mode: the coordinator accepts a control entry only from whoever owns the name it claims.

Before a batch is applied, one round trip (a ``ZMSCORE`` per claimed sender) checks, for every
entry, that the proof zset of its ``sender`` (``<ns>:agent:{<sender>}:sent``, writable only by
the Redis user that owns that name: ``agentbus acl``) holds the entry's digest
(``agent_sdk.security.proof_digest``). An entry without that proof was written by someone else:
it is dead-lettered with code ``unauthenticated`` and **not** answered (its ``reply_to`` may be
a victim's). Then:

* an **announce** must also fit the policy (``R:policy``): the identity that owns the name may
  take the card's role and capabilities (else ``forbidden``) and has fewer than ``max_agents``
  live names (else ``quota``); both are answered, as any refusal. The host that reads the
  announce's ``reply_to`` becomes the name's **lessee**: the field ``lessee`` of the record,
  written with it by the control script (it goes when the record goes);
* a **lease** (heartbeats of a host's agents) renews only the names whose lessee is the lease's
  proved sender: a beat for any other name is dropped and counted. Its renewal part (protocol
  1.2) is kept only if the lease id is the sender's own (``<sender>:<instance>``): a lease's
  set holds only names whose announcements named that lease, and an announcement may name only
  a lease of its lessee, so no per-name lookup is needed.

Unproved entries are refused **in bulk** (``queue_unproved``): per batch, one dead letter per
claimed sender (the first such entry, whole, with ``count`` and ``last_source_id``) and one log
line, all of them acknowledged. A flood of forged control entries then costs the coordinator a
read, a SHA-1, a ``ZMSCORE`` member and an ``XACK`` per entry, not a dead letter and a log line
each: it is read through several times faster, so new agents wait less behind it
(docs/SECURITY.md).

The price: one round trip per batch (a ``ZMSCORE`` per claimed sender, and the lessee of each
name its leases beat for, read from the records by one script call, packed by hiredis) and one
SHA-1 per entry (docs/SECURITY.md).
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson
import redis.asyncio as aioredis
from redis.asyncio.client import Pipeline
from redis.exceptions import NoScriptError, ResponseError

from agent_sdk.cluster_lane import AnyLane, open_lane
from agent_sdk.security import proof_digest
from coordinator.acl.policy import Policy
from coordinator.outbox import queue_dead_letter
from coordinator.scripts import script_source
from coordinator.settings import CoordinatorSettings
from coordinator.validation import FastLease, is_identifier
from schemas.display import safe_text
from schemas.errors import ErrorCode, ErrorInfo
from schemas.names import lease_host

__all__ = ["Screen", "Verdicts", "queue_unproved"]

log = logging.getLogger("agentbus.coordinator.authn")

_POLICY_REFRESH = 2.0  # seconds between reads of R:policy

#: coordinator/lua/lessees.lua: the lessee of each record, in one command
_LESSEES_LUA = script_source("lessees")
_LESSEES_SHA = hashlib.sha1(_LESSEES_LUA.encode(), usedforsecurity=False).hexdigest()


@dataclass(slots=True)
class Verdicts:
    """What the screen decided for one batch."""

    #: entries refused: their error, and whether to answer it (not when unauthenticated)
    refused: dict[str, tuple[ErrorInfo, bool]] = field(default_factory=dict)
    #: name -> the host that may heartbeat for it (for the lease entries of the batch; raw)
    lessees: dict[str, bytes] = field(default_factory=dict)
    #: entry id -> the proved sender (leases; raw, as lessees are compared)
    senders: dict[str, bytes] = field(default_factory=dict)
    #: entry id -> the host an accepted announce makes its name's lessee (written in the record)
    lessee_of: dict[str, str] = field(default_factory=dict)
    dropped_beats: int = 0

    def lease(self, eid: str, lease: FastLease) -> FastLease:
        """What lease ``eid``'s proved sender may give: the beats of names it is the lessee
        of, and the renewal only if the lease is the sender's own (``<sender>:<instance>``:
        a lease set holds only names whose announcements named that lease, and acl mode
        accepts those only from the lease's host)."""
        host = self.senders.get(eid)
        if host is None:
            beats: list[Any] = []
        else:
            lessee = self.lessees.get
            beats = [b for b in lease.beats if lessee(b[1]) == host]
        renew, lease_id = lease.renew, lease.lease
        if lease_id is not None and (host is None or lease_host(lease_id) != _text(host)):
            renew, lease_id = [], None  # another host's lease: neither renewed nor extended
        dropped = len(lease.beats) - len(beats) + len(lease.renew) - len(renew)
        if dropped or lease_id != lease.lease:
            self.dropped_beats += dropped
            not_own = "" if lease_id == lease.lease else ", and the lease is not its own"
            log.warning("lease %s of %s: %d beat(s) for names it does not hold dropped%s", eid,
                        safe_text(_text(host) or "?"), dropped, not_own)  # fmt: skip
            return FastLease(beats, lease_id, lease.ttl_ms if lease_id else 0, renew,
                             lease.members if lease_id else None)  # fmt: skip
        return lease


def _text(v: bytes | str | None) -> str:
    if v is None:
        return ""
    return v.decode(errors="replace") if isinstance(v, bytes) else v


class Screen:
    """Checks control entries against proofs and the policy (acl mode only)."""

    def __init__(self, client: aioredis.Redis, settings: CoordinatorSettings) -> None:
        self.client = client
        self.settings = settings
        self.keys = settings.keys
        self._lane: AnyLane | None = None  # the lookups' round trips (one at a time)
        self._policy: Policy | None = None
        self._policy_at = 0.0
        #: entries refused as unauthenticated, forbidden, over quota (for stats and tests)
        self.unauthenticated = 0
        self.forbidden = 0
        #: lease beats dropped: names the lease's sender is not the lessee of
        self.dropped_beats = 0

    async def policy(self) -> Policy | None:
        now = time.monotonic()
        if now - self._policy_at > _POLICY_REFRESH:
            raw = await self.client.get(self.keys.policy())
            self._policy = None if raw is None else Policy.from_json(raw)
            self._policy_at = now
        return self._policy

    async def screen(self, entries: list[tuple[Any, dict[bytes, bytes] | None]]) -> Verdicts:
        out = Verdicts()
        control = self.keys.control()
        checks: list[tuple[str, str, dict[bytes, bytes]]] = []
        digests: dict[str, list[str]] = {}  # sender -> the digests of its entries, in order
        for raw_id, fields in entries:
            if fields is None:
                continue
            eid = _text(raw_id)
            sender = _text(fields.get(b"sender"))
            if not is_identifier(sender):
                out.refused[eid] = (_unproved(sender), False)
                continue
            flat = [x for pair in fields.items() for x in pair]
            digests.setdefault(sender, []).append(proof_digest(control, eid, flat))
            checks.append((eid, sender, fields))
        # the names the batch's leases beat for: their lessees come in the proofs' round trip
        leases = [f for _, _, f in checks if f.get(b"type") == b"lease"]
        names = list({n for f in leases for n in _beat_names(f)})
        scores, lessees = await self._lookups(digests, names)
        announces: list[tuple[str, str, dict[bytes, bytes]]] = []
        for eid, sender, fields in checks:
            if next(scores[sender]) is None:
                out.refused[eid] = (_unproved(sender), False)
                continue
            kind = fields.get(b"type")
            if kind == b"announce":
                announces.append((eid, sender, fields))
            elif kind == b"lease":
                out.senders[eid] = sender.encode()
        if announces:
            await self._announces(announces, out)
        out.lessees = {n: h for n, h in zip(names, lessees, strict=True) if h is not None}
        self.unauthenticated += sum(1 for _, answer in out.refused.values() if not answer)
        return out

    async def _lookups(
        self, digests: dict[str, list[str]], names: list[str]
    ) -> tuple[dict[str, Iterator[Any]], list[bytes | None]]:
        """One round trip: the score of each digest in its sender's proof zset (None: no proof),
        one ``ZMSCORE`` per sender, and the lessee of each name (its record's ``lessee``, raw
        bytes: ``lessees.lua``). Packed by hiredis on a lane of its own: redis-py's encoder cost
        more than the check itself for a lease of 1,000 names."""
        commands: list[tuple[Any, ...]] = [
            ("ZMSCORE", self.keys.proofs(s), *d) for s, d in digests.items()
        ]
        records = [self.keys.record(n) for n in names]
        if records:  # one command for them all: a lease names up to 1,000
            commands.append(("EVALSHA", _LESSEES_SHA, len(records), *records))
        if not commands:
            return {}, []
        if self._lane is None:
            self._lane = open_lane(self.client)
        replies = await self._lane.execute(commands)
        if records and isinstance(replies[-1], NoScriptError):  # first use, or Redis restarted
            (replies[-1],) = await self._lane.execute(
                [("EVAL", _LESSEES_LUA, len(records), *records)]
            )
        for reply in replies:
            if isinstance(reply, ResponseError):
                raise reply
        lessees: list[bytes | None] = replies[-1] if records else []
        scores = replies[: len(digests)]
        return {sender: iter(r) for sender, r in zip(digests, scores, strict=True)}, lessees

    async def _announces(
        self, announces: list[tuple[str, str, dict[bytes, bytes]]], out: Verdicts
    ) -> None:
        policy = await self.policy()
        prefix = self.keys.agents_prefix + "{"
        for eid, name, fields in announces:
            error = None if policy is None else await self._allowed(policy, name, fields)
            if error is not None:
                self.forbidden += 1
                out.refused[eid] = (error, True)
                continue
            reply_to = _text(fields.get(b"reply_to"))
            host = name
            if reply_to.startswith(prefix) and "}:" in reply_to:
                host = reply_to[len(prefix) : reply_to.index("}:")]
            out.lessee_of[eid] = host

    async def _allowed(
        self, policy: Policy, name: str, fields: dict[bytes, bytes]
    ) -> ErrorInfo | None:
        owner = policy.owner_of(name)
        if owner is None:
            return _refusal(
                ErrorCode.FORBIDDEN, f"no identity of the policy may take the name {name!r}"
            )
        identity, ident = owner
        try:
            card = orjson.loads(fields.get(b"payload", b"{}")).get("card", {})
        except (orjson.JSONDecodeError, AttributeError):
            return None  # the announce's own validation answers it
        role = card.get("role") if isinstance(card, dict) else None
        if isinstance(role, str) and not ident.may_role(role):
            return _refusal(
                ErrorCode.FORBIDDEN, f"identity {identity!r} may not take role {role!r}"
            )
        for cap in card.get("capabilities", []) if isinstance(card, dict) else []:
            if isinstance(cap, str) and not ident.may_capability(cap):
                return _refusal(
                    ErrorCode.FORBIDDEN,
                    f"identity {identity!r} may not announce capability {cap!r}",
                )
        key = self.keys.identity_names(identity)
        if not await self.client.sismember(key, name):
            if await self.client.scard(key) >= ident.max_agents:
                await self._prune(key)
                if await self.client.scard(key) >= ident.max_agents:
                    return _refusal(
                        ErrorCode.QUOTA,
                        f"identity {identity!r} already has {ident.max_agents} live agents "
                        "(max_agents)",
                    )
            await self.client.sadd(key, name)
        return None

    async def _prune(self, key: str) -> None:
        """Forget the names of an identity that are no longer registered."""
        names = [_text(n) for n in await self.client.smembers(key)]
        async with self.client.pipeline(transaction=False) as pipe:
            for n in names:
                pipe.exists(self.keys.record(n))
            alive = await pipe.execute()
        gone = [n for n, a in zip(names, alive, strict=True) if not a]
        if gone:
            await self.client.srem(key, *gone)


def queue_unproved(
    pipe: Pipeline, settings: CoordinatorSettings, unproved: list[tuple[str, dict[bytes, bytes]]]
) -> int:
    """Dead-letter a batch's unproved entries in bulk: one letter and one log line per claimed
    sender (its first entry, whole, with ``count`` and ``last_source_id``). The caller acks
    them all. Returns the number of letters queued."""
    by_sender: dict[str, list[tuple[str, dict[bytes, bytes]]]] = {}
    for eid, fields in unproved:
        by_sender.setdefault(_text(fields.get(b"sender"))[:200], []).append((eid, fields))
    for sender, items in by_sender.items():
        (first, fields), last = items[0], items[-1][0]
        info = _unproved(sender)
        if len(items) > 1:
            info = _refusal(
                ErrorCode.UNAUTHENTICATED,
                f"{info.description}; {len(items)} such entries in one batch ({first} .. "
                f"{last}), this letter stands for all of them",
            )
        log.warning("dead-lettering %d control entries from %s to %s: [%s] %s", len(items),
                    first, last, info.code, info.description)  # fmt: skip
        extra = {"count": str(len(items)), "last_source_id": last}
        queue_dead_letter(pipe, settings, first, fields, info, extra=extra)
    return len(by_sender)


def _beat_names(fields: dict[bytes, bytes]) -> list[str]:
    try:
        beats = orjson.loads(fields.get(b"payload", b"{}")).get("beats", [])
        return [b[0] for b in beats if isinstance(b, list) and b and isinstance(b[0], str)]
    except (orjson.JSONDecodeError, AttributeError, TypeError):
        return []


def _unproved(sender: str) -> ErrorInfo:
    return _refusal(
        ErrorCode.UNAUTHENTICATED,
        f"control entry claims sender {safe_text(sender, 200)!r} but that name's owner did not "
        "write it (no proof): not applied",
    )


def _refusal(code: ErrorCode, description: str) -> ErrorInfo:
    return ErrorInfo(code=code, description=description, details={})

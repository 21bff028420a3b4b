"""Invariants 1 and 3: the registry's indexes agree with its records, and the change feed
replays to the registry.

1. **Index consistency**, on every (atomic) snapshot: every member of ``R:agents``, ``R:role:*``,
   ``R:cap:*``, ``R:tag:*`` and ``R:deadlines`` has a record; every record is in ``R:agents``,
   ``R:deadlines`` and exactly the indexes its role, capabilities and tags name; no record or
   index key exists for a name or value nobody uses.
3. **Change feed**: revisions strictly increase; each event fits the replayed state (an
   ``agent_registered`` finds the name free, ``agent_updated``/``agent_deregistered``/
   ``agent_expired`` find it held by that instance); the replay up to the snapshot's revision
   holds exactly the snapshot's names and instances. A Redis data loss restarts the feed: the
   replay starts again from the empty registry.

Who held each name is kept for the whole run (the one-server check needs it across data
losses): every ``agent_registered`` with its revision's time (exact: the Redis time of the
script), and every change of holder between two snapshots, at the later snapshot's time. The
records' ``registered_at`` is not used: it is the announce's entry time, which may be long
before the registration (a backlog, a frozen coordinator).
"""

from __future__ import annotations

import collections

import orjson

from schemas.events import RegistryEvent, RegistryEventType
from schemas.keys import KeySpace
from tests.faults.nemesis_observe import Snapshot
from tests.faults.nemesis_world import Violations

__all__ = ["RegistryChecks"]

_REMOVALS = (RegistryEventType.AGENT_DEREGISTERED, RegistryEventType.AGENT_EXPIRED)


def _rev(revision: str) -> tuple[int, int]:
    ms, _, seq = revision.partition("-")
    return int(ms), int(seq or 0)


def _json_list(text: str | None) -> list[str]:
    try:
        value = orjson.loads(text or "[]")
    except orjson.JSONDecodeError:
        return []
    return [str(v) for v in value] if isinstance(value, list) else []


class RegistryChecks:
    def __init__(self, keys: KeySpace, violations: Violations) -> None:
        self.keys = keys
        self.v = violations
        self.replay: dict[str, str] = {}  # name -> instance, from the feed
        self.cursor: str | None = None  # last revision applied
        self.events = collections.Counter[str]()
        #: name -> [(time, instance)]: registrations (feed) and holder changes (snapshots, None
        #: when nobody held the name), over the whole run
        self.holders: dict[str, list[tuple[float, str | None]]] = collections.defaultdict(list)
        self._last_seen: dict[str, str | None] = {}
        self.expired_replaced = 0

    def data_lost(self) -> None:
        """Redis restarted empty: the feed starts again."""
        self.replay.clear()
        self.cursor = None

    # -- invariant 1 ----------------------------------------------------------------------------
    def check_indexes(self, snap: Snapshot) -> None:
        k, at = self.keys, snap.at
        expected: dict[str, set[str]] = collections.defaultdict(set)  # index key -> names
        for name, rec in snap.records.items():
            if not rec.get("instance_id"):
                self.v.add("index", f"hash:{name}", f"record of {name} has no instance_id", at)
            for key in (k.agents(), k.role_index(rec.get("role", ""))):
                expected[key].add(name)
            lease = rec.get("lease")
            if lease is None:
                expected[k.deadlines()].add(name)  # a deadline of its own
            elif lease not in snap.leases:  # it lives by its lease's: which must have one
                self.v.add("index", f"lease:{name}", f"{name}'s lease {lease} has no deadline", at)
            for c in _json_list(rec.get("capabilities")):
                expected[k.capability_index(c)].add(name)
                expected[k.role_capability_index(rec.get("role", ""), c)].add(name)
            for t in _json_list(rec.get("tags")):
                expected[k.tag_index(t)].add(name)
        actual = {**snap.indexes, k.agents(): snap.agents, k.deadlines(): snap.deadlines}
        for key in sorted(set(expected) | set(actual)):
            have, want = actual.get(key, frozenset()), expected.get(key, set())
            for name in sorted(have - want):
                why = "no record" if name not in snap.records else "not in its record"
                self.v.add("index", f"{key}:{name}:+", f"{name} in {key} ({why})", at)
            for name in sorted(want - have):
                self.v.add("index", f"{key}:{name}:-", f"record of {name} but not in {key}", at)
        known = set(actual) | {k.record(n) for n in snap.records}
        for key in sorted(snap.keys - known):
            self.v.add("index", f"stray:{key}", f"registry key {key} of no live record", at)

    def observe(self, snap: Snapshot, names: list[str]) -> None:
        """Remember who holds each name when it changed since the previous snapshot."""
        for name in names:
            holder = snap.holder(name)
            if name not in self._last_seen or self._last_seen[name] != holder:
                self._last_seen[name] = holder
                self.holders[name].append((snap.at, holder))

    # -- invariant 3 ----------------------------------------------------------------------------
    def apply(self, events: list[RegistryEvent]) -> None:
        """Replay the feed's new entries (in revision order)."""
        for e in events:
            assert e.revision is not None
            if self.cursor is not None and _rev(e.revision) <= _rev(self.cursor):
                detail = f"revision {e.revision} after {self.cursor}"
                self.v.add("feed", f"order:{e.revision}", detail)
            self.cursor = e.revision
            self.events[e.type.value] += 1
            self._replay(e)

    def _replay(self, e: RegistryEvent) -> None:
        name, inst, at = e.name, e.instance_id or "", _rev(e.revision or "0")[0] / 1000
        held = self.replay.get(name)
        what = f"{e.type.value} {name}/{inst} at {e.revision} while the replay holds {held}"
        if e.type is RegistryEventType.AGENT_REGISTERED:
            self.holders[name].append((at, inst))
            if held is not None:
                self.v.add("feed", f"register:{name}:{inst}", what, at)
            self.replay[name] = inst
        elif held != inst:
            self.v.add("feed", f"{e.type.value}:{name}:{inst}", what, at)
        elif e.type in _REMOVALS:
            del self.replay[name]
        if e.type is RegistryEventType.AGENT_EXPIRED and e.reason == "replaced":
            self.expired_replaced += 1

    def compare(self, snap: Snapshot) -> None:
        """The replay up to the snapshot's revision equals the snapshot's registry."""
        have = snap.holders()
        if have == self.replay:
            return
        for name in sorted(set(have) | set(self.replay)):
            reg, feed = have.get(name), self.replay.get(name)
            if reg != feed:
                detail = f"{name}: registry holds {reg}, feed replay {feed} (revision {snap.head})"
                self.v.add("feed", f"replay:{name}:{reg}:{feed}", detail, snap.at)

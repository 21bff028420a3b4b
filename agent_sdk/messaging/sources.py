"""What a host reads: stream families, their doorbells, and which streams need reading.

A **family** is an agent's inbox or a role queue: up to four streams, one per priority
(``schemas.priority``), sharing one doorbell channel. The streams of ``normal`` priority exist
from the start; the others are added when a ring names them or when they already hold entries
as an agent joins. A family is read here by its agents on this host (an inbox: its agent; a role
queue: the role's members here), each read done as one of them, in turn, while it has a free
handler slot.

**Which stream next** (``plan``): dirty streams are served highest priority first, so urgent
work never waits behind a backlog of lower priority. The starvation bound: after
``STARVATION_TURN`` rounds in a row that served a higher priority while a lower one kept
waiting, the next round serves the priorities the other way round (lowest first). So under any
load above it, a waiting stream is read at least once every ``STARVATION_TURN + 1`` rounds that
have a free slot for it; a round takes at most one entry more than the free slots (parked), so
an agent with ``max_concurrency`` c handles at most ``STARVATION_TURN * (c + 1)`` entries of
higher priority before it takes a waiting lower one (docs/PROTOCOL.md, "Priorities").
No I/O here: ``agent_sdk.messaging.reader`` does it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from schemas.keys import KeySpace
from schemas.priority import PRIORITIES, priority_rank

if TYPE_CHECKING:
    from agent_sdk.messaging.consumer import Consumer

__all__ = ["READ_MAX", "STARVATION_TURN", "Family", "Source", "Sources"]

READ_MAX = 256  # COUNT cap of one read of one stream
STARVATION_TURN = 8


class Source:
    """One stream of a family."""

    __slots__ = ("backlog", "cursor", "family", "key", "priority", "rank")

    def __init__(self, family: Family, priority: str, key: str) -> None:
        self.family = family
        self.priority = priority
        self.rank = priority_rank(priority)
        self.key = key
        self.cursor = "0-0"  # XAUTOCLAIM cursor of the claim rounds
        #: The last claim round took all it asked for: more may idle there.
        self.backlog = False


class Family:
    """An inbox or a role queue, its streams, and the agents that read it here."""

    __slots__ = ("bell", "key", "members", "role", "sources", "turn")

    def __init__(self, key: str, bell: str, role: bool) -> None:
        self.key = key
        self.bell = bell
        self.role = role
        self.members: list[Consumer] = []
        self.sources: dict[str, Source] = {}
        self.turn = 0

    def pick(self, blocked: set[Consumer] | frozenset[Consumer] = frozenset()) -> Consumer | None:
        """The next member (in turn) that may take work now."""
        members = self.members
        k = len(members)
        for i in range(k):
            c = members[(self.turn + i) % k]
            if c.slots.free > 0 and c not in blocked and c.may_take():
                self.turn = (self.turn + i + 1) % k
                return c
        return None


class Sources:
    """The families a host reads and the streams that need reading (dirty), by priority."""

    def __init__(self, keys: KeySpace) -> None:
        self.keys = keys
        self.families: dict[str, Family] = {}
        self.bells: dict[str, Family] = {}
        self.by_key: dict[str, Source] = {}
        #: Inbox families, for the sweep.
        self.inboxes: list[Family] = []
        self.dirty: list[dict[Source, None]] = [{} for _ in PRIORITIES]
        #: Rounds in a row that served a higher priority while a lower one kept waiting.
        self.streak = 0

    # -- membership ----------------------------------------------------------------------------
    def join(self, consumer: Consumer) -> tuple[list[str], list[Source]]:
        """Add ``consumer`` to the families it reads; the new doorbells and new sources."""
        bells: list[str] = []
        new: list[Source] = []
        for family_key in consumer.families:
            fam = self.families.get(family_key)
            if fam is None:
                bell = self.keys.bell(family_key)
                role = family_key != consumer.inbox.key
                fam = self.families[family_key] = Family(family_key, bell, role)
                self.bells[bell] = fam
                bells.append(bell)
                if not role:
                    self.inboxes.append(fam)
                new.append(self.add_source(fam, "normal"))
            fam.members.append(consumer)
            for src in fam.sources.values():
                consumer.stream(src.key)
        return bells, new

    def add_source(self, fam: Family, priority: str) -> Source:
        """The stream of ``priority`` in ``fam`` (made if new; known to every member)."""
        src = fam.sources.get(priority)
        if src is None:
            key = self.keys.prioritized(fam.key, priority)
            src = fam.sources[priority] = Source(fam, priority, key)
            self.by_key[key] = src
        for c in fam.members:
            c.stream(src.key)
        return src

    def leave(self, consumer: Consumer) -> list[str]:
        """Remove ``consumer``; the doorbells nobody here needs any more."""
        gone: list[str] = []
        for family_key in consumer.families:
            fam = self.families.get(family_key)
            if fam is None or consumer not in fam.members:
                continue
            fam.members.remove(consumer)
            if fam.members:
                continue
            del self.families[family_key]
            del self.bells[fam.bell]
            for src in fam.sources.values():
                del self.by_key[src.key]
                self.dirty[src.rank].pop(src, None)
            if not fam.role:
                self.inboxes.remove(fam)
            gone.append(fam.bell)
        return gone

    # -- what needs reading ----------------------------------------------------------------------
    def mark(self, src: Source) -> None:
        self.dirty[src.rank][src] = None

    def mark_family(self, fam: Family) -> None:
        for src in fam.sources.values():
            self.dirty[src.rank][src] = None

    def mark_all(self) -> None:
        for fam in self.families.values():
            self.mark_family(fam)

    @property
    def any_dirty(self) -> bool:
        return any(self.dirty)

    def plan(self, blocked: set[Consumer]) -> list[tuple[Source, Consumer, int]]:
        """The reads to do now: per dirty stream (priority order, see the module docstring),
        a member with free slots and how many entries it reserves. A stream nobody can read
        now stays dirty (a freed slot or a renewed lease wakes the reader). Members in
        ``blocked`` (being taken over, or holding parked entries) are not picked."""
        ranks = list(range(len(self.dirty)))
        turn = self.streak >= STARVATION_TURN  # the lower priorities' turn, until served
        if turn:
            ranks.reverse()
        batch = []
        for rank in ranks:
            dirty = self.dirty[rank]
            for src in list(dirty):
                fam = src.family
                if not fam.role and fam.members[0] in blocked:
                    continue
                c = fam.pick(blocked)
                if c is None:
                    continue
                n = min(c.slots.free, READ_MAX)
                c.slots.reserve(n)
                del dirty[src]
                batch.append((src, c, n))
        if batch and turn:
            self.streak = 0
        elif batch:
            served = min(src.rank for src, _, _ in batch)
            waiting = any(self.dirty[r] for r in range(served + 1, len(self.dirty)))
            self.streak = self.streak + 1 if waiting else 0
        return batch

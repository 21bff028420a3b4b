"""What a nemesis run knows: the faults applied (with their windows), the agent processes and
their instances (from their ledgers), and the violations found.

Times are ``time.time()`` seconds. Redis runs on this host, so its clock (``TIME``, stream entry
ids) is the same clock.
"""

from __future__ import annotations

import collections
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.faults.harness import Cluster, FleetProc
from tests.faults.nemesis_plan import COORDINATOR_KINDS, REDIS_KINDS, Kind

__all__ = ["AgentProc", "FaultRecord", "Fleet", "Instance", "Probe", "Timeline", "Violations"]


@dataclass
class FaultRecord:
    kind: Kind
    target: str
    start: float
    end: float | None = None  # None: still going on
    note: str = ""

    def add_note(self, note: str) -> None:
        if note:
            self.note = f"{self.note}; {note}" if self.note else note

    def describe(self, t0: float) -> str:
        end = "?" if self.end is None else f"{self.end - t0:.2f}"
        text = f"+{self.start - t0:.2f}..{end}s {self.kind.value} {self.target} {self.note}"
        return text.rstrip()

    def near(self, a: float, b: float, after: float) -> bool:
        """Does the fault, extended by ``after`` seconds past its end, overlap ``[a, b]``?"""
        end = math.inf if self.end is None else self.end + after
        return self.start <= b and end >= a


class Timeline:
    """Every fault applied, with start and end, so checks can leave their windows out."""

    def __init__(self, ttl: float, coordinators: int) -> None:
        self.ttl = ttl
        self.coordinators = coordinators
        self.records: list[FaultRecord] = []

    def begin(self, kind: Kind, target: str, note: str = "") -> FaultRecord:
        rec = FaultRecord(kind, target, time.time(), note=note)
        self.records.append(rec)
        return rec

    @staticmethod
    def end(rec: FaultRecord, note: str = "") -> None:
        rec.end = time.time()
        rec.add_note(note)

    def redis_near(self, a: float, b: float) -> bool:
        """A Redis fault (or the TTL after it) overlaps ``[a, b]``."""
        return any(r.kind in REDIS_KINDS and r.near(a, b, self.ttl) for r in self.records)

    def no_coordinator_near(self, a: float, b: float) -> bool:
        """At some moment of ``[a, b]`` (plus a TTL after) every coordinator was down."""
        spans = [r for r in self.records if r.kind in COORDINATOR_KINDS]
        points = [a, *(r.start for r in spans if a <= r.start <= b)]
        return any(
            len({r.target for r in spans if r.near(p, p, self.ttl)}) >= self.coordinators
            for p in points
        )

    def data_losses(self) -> list[FaultRecord]:
        return [r for r in self.records if r.kind is Kind.REDIS_WIPE]

    def counts(self) -> dict[str, int]:
        """Faults applied, by kind (not those skipped)."""
        applied = (r for r in self.records if not r.note.startswith("skipped"))
        return dict(collections.Counter(r.kind.value for r in applied))


@dataclass(eq=False)
class AgentProc:
    """One agent process (``FleetProc``) of a fleet slot: the first, or a replacement."""

    fleet: FleetProc
    slot: int
    started: float
    killed_at: float | None = None  # SIGKILLed by the nemesis
    exited_at: float | None = None  # seen gone on its own (an upper bound of when it died)
    freezes: list[list[float]] = field(default_factory=list)  # [SIGSTOP, SIGCONT or inf]
    may_give_up: bool = False  # resumed before its replacement held the names
    offset: int = 0  # ledger bytes read

    @property
    def label(self) -> str:
        return self.fleet.label

    @property
    def gone_at(self) -> float | None:
        return self.killed_at if self.killed_at is not None else self.exited_at

    def running(self, t: float) -> bool:
        gone = self.gone_at
        return self.started <= t and (gone is None or t < gone)

    def frozen_near(self, t: float, after: float) -> bool:
        """Frozen at ``t``, or resumed less than ``after`` seconds before it."""
        return any(stop <= t <= cont + after for stop, cont in self.freezes)


@dataclass(eq=False)
class Instance:
    """One run of one agent (``ready <name> <instance>`` in its process's ledger)."""

    name: str
    id: str
    proc: AgentProc
    ready_at: float | None = None  # registered by then: ``ready`` line read, or seen holding
    stopped_at: float | None = None  # when its ``lost``/``halted`` line was read
    stopped_word: str = ""


@dataclass(frozen=True, slots=True)
class Probe:
    """A probe (``job``) some instance started: ``start`` line of its ledger."""

    name: str
    msg_id: str
    entry_ms: int  # inbox entry id time: the probe entered the inbox then (Redis clock)
    instance: str
    read_at: float  # the line was read then: handled no later


class Fleet:
    """The agent processes by slot; reads their ledgers as they grow."""

    def __init__(self, cluster: Cluster, sizes: list[int]) -> None:
        self.cluster = cluster
        self.names = [[f"s{slot}n{i}" for i in range(n)] for slot, n in enumerate(sizes)]
        self.procs: list[AgentProc] = []
        self.current: dict[int, AgentProc] = {}
        self.instances: dict[str, Instance] = {}
        self.done: set[str] = set()  # message ids handled to the end
        self.generations = collections.Counter[int]()

    @staticmethod
    def role(slot: int) -> str:
        return f"role{slot % 2}"

    @staticmethod
    def capabilities(slot: int) -> tuple[str, ...]:
        return ("probe", f"cap{slot}")

    @staticmethod
    def tags(slot: int) -> tuple[str, ...]:
        return ("nemesis", f"tag{slot % 2}")

    @property
    def all_names(self) -> list[str]:
        return [n for names in self.names for n in names]

    def spawn(self, slot: int) -> AgentProc:
        gen = self.generations[slot]
        self.generations[slot] += 1
        fleet = self.cluster.fleet(
            self.names[slot], label=f"slot{slot}-gen{gen}", role=self.role(slot),
            capabilities=self.capabilities(slot), tags=self.tags(slot), concurrency=2,
        )  # fmt: skip
        proc = AgentProc(fleet, slot, time.time())
        self.procs.append(proc)
        self.current[slot] = proc
        return proc

    def ready(self, proc: AgentProc) -> bool:
        """Every agent of ``proc`` wrote ``ready``."""
        mine = {i.name for i in self.instances.values() if i.proc is proc and i.ready_at}
        return set(proc.fleet.names) <= mine

    def by_pid(self, pid: str | None) -> AgentProc | None:
        return next((p for p in self.procs if pid and str(p.fleet.pid) == pid), None)

    def learn(self, name: str, inst_id: str, pid: str | None, at: float) -> Instance | None:
        """An instance seen holding ``name`` at ``at``: registered, even if its process never
        wrote ``ready`` (another of its agents may still wait for its name)."""
        inst = self.instances.get(inst_id)
        if inst is None:
            proc = self.by_pid(pid)
            if proc is None:
                return None
            inst = self.instances[inst_id] = Instance(name, inst_id, proc)
        if inst.ready_at is None or inst.ready_at > at:
            inst.ready_at = at
        return inst

    def notice_exits(self) -> None:
        now = time.time()
        for p in self.procs:
            if p.gone_at is None and not p.fleet.alive:
                p.exited_at = now

    def read_ledgers(self) -> list[Probe]:
        """New ledger lines of every process: instances, stops, handled ids; the probes."""
        probes: list[Probe] = []
        for p in self.procs:
            for words in _tail(p, p.fleet.log):
                probes += self._line(p, words, time.time())
        return probes

    def _line(self, p: AgentProc, words: list[str], now: float) -> list[Probe]:
        match words:
            case ["ready", name, inst]:
                self.instances.setdefault(inst, Instance(name, inst, p)).ready_at = now
            case ["lost" | "halted" as word, name, inst, *_]:
                i = self.instances.setdefault(inst, Instance(name, inst, p))
                i.stopped_at, i.stopped_word = now, word
            case ["done", _, msg_id, *_]:
                self.done.add(msg_id)
            case ["start", name, msg_id, entry_id, _, "job", inst]:
                return [Probe(name, msg_id, int(entry_id.split("-")[0]), inst, now)]
        return []


def _tail(p: AgentProc, path: Path) -> list[list[str]]:
    if not path.exists():
        return []
    with path.open("rb") as f:
        f.seek(p.offset)
        data = f.read()
    end = data.rfind(b"\n") + 1  # a line still being written waits for the next read
    p.offset += end
    return [ln.split() for ln in data[:end].decode().splitlines() if ln.strip()]


@dataclass
class Violation:
    invariant: str
    at: float
    detail: str
    count: int = 1


class Violations:
    """Violations found, one entry per (invariant, key) with how often it was seen."""

    def __init__(self) -> None:
        self.found: dict[tuple[str, str], Violation] = {}
        self.t0 = time.time()  # times are printed relative to it

    def add(self, invariant: str, key: str, detail: str, at: float | None = None) -> None:
        v = self.found.get((invariant, key))
        if v is None:
            self.found[(invariant, key)] = Violation(invariant, at or time.time(), detail)
        else:
            v.count += 1

    def __bool__(self) -> bool:
        return bool(self.found)

    def counts(self) -> dict[str, int]:
        return dict(collections.Counter(v.invariant for v in self.found.values()))

    def lines(self, limit: int = 40) -> list[str]:
        ordered = sorted(self.found.values(), key=lambda v: v.at)
        out = [
            f"+{v.at - self.t0:6.2f}s [{v.invariant}] {v.detail} (x{v.count})"
            for v in ordered[:limit]
        ]
        if len(ordered) > limit:
            out.append(f"... and {len(ordered) - limit} more")
        return out

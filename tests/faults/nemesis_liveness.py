"""Invariants 2 and 4: liveness judged fairly, and one server per name.

2. **Liveness.** An instance is *expected* in the registry from when its ``ready`` line was read,
   while its process runs, is not frozen (nor resumed less than a TTL ago) and the instance has
   not stopped by itself, outside Redis-fault windows (a fault, then one TTL) and moments when
   every coordinator was down. An expected instance whose name is held by nobody (or by a dead
   instance) for more than TTL + 1 s is a ``liveness`` violation; one whose name another live
   instance holds, while it keeps running, is ``unfenced`` (two live instances of one name:
   the superseded one should have stopped).
   A record held by a killed (or exited) process more than TTL + 1 s after its death is
   ``stale``, unless a Redis fault or a moment with no coordinator overlaps. An
   ``agent_expired`` of an instance whose process runs and was not frozen in the TTL before is
   ``expired_live``, Redis faults or not: the stall grace exists so that a Redis stall expires
   nobody (docs/PROTOCOL.md, "Liveness: the sweeper"), and ``replaced`` must not bypass it.
4. **One server per name.** A probe handled by instance X of name N is a violation if, when the
   probe entered N's inbox (its entry id, Redis clock) minus 0.1 s, the latest evidence of who held
   N (a registration in the feed, or a holder change between snapshots) names another instance,
   and nothing shows X holding N again before its ``start`` line was read. An instance that
   stopped itself with ``lost`` must have been superseded then (else ``lost_name``).

Convergence after each Redis fault is measured: the first snapshot after the fault where every
registered instance of each slot's newest process is held and no dead instance is.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass

from schemas.events import RegistryEvent, RegistryEventType
from tests.faults.nemesis_observe import Snapshot
from tests.faults.nemesis_plan import REDIS_KINDS
from tests.faults.nemesis_registry import RegistryChecks
from tests.faults.nemesis_world import FaultRecord, Fleet, Instance, Probe, Timeline, Violations

__all__ = ["LivenessChecks"]

SLACK_S = 0.1


@dataclass
class Convergence:
    fault: FaultRecord
    after_s: float | None = None  # None: not converged (yet)
    interrupted: bool = False  # the next Redis fault began first

    def label(self) -> float | str:
        if self.after_s is not None:
            return round(self.after_s, 2)
        return "interrupted" if self.interrupted else "not converged"


class LivenessChecks:
    def __init__(
        self, fleet: Fleet, timeline: Timeline, registry: RegistryChecks, violations: Violations
    ) -> None:
        self.fleet = fleet
        self.timeline = timeline
        self.registry = registry
        self.v = violations
        self.ttl = timeline.ttl
        #: instance -> (out of the registry since, "liveness" or "unfenced")
        self.absent_since: dict[str, tuple[float, str]] = {}
        self.max_absence = 0.0  # expected, and the name held by nobody alive
        self.max_superseded = 0.0  # expected, and the name held by another live instance
        self.stale: dict[str, float] = {}  # dead instance -> longest time held after death
        self.max_stale_counted = 0.0  # the same, outside excluded windows
        self.convergence: dict[int, Convergence] = {}
        self.pending: list[Probe] = []
        self.probes_checked = 0
        self.stops_checked: set[str] = set()

    # -- invariant 2 ----------------------------------------------------------------------------
    def expected(self, inst: Instance, t: float) -> bool:
        p = inst.proc
        return (
            inst.ready_at is not None
            and inst.ready_at <= t
            and (inst.stopped_at is None or t < inst.stopped_at)
            and p.running(t)
            and not p.frozen_near(t, self.ttl)
            and not self.timeline.redis_near(t, t)
            and not self.timeline.no_coordinator_near(t, t)
        )

    def on_snapshot(self, snap: Snapshot) -> None:
        t = snap.at
        for name, inst_id in snap.holders().items():
            self.fleet.learn(name, inst_id, snap.records[name].get("pid"), t)
        for inst in self.fleet.instances.values():
            holder = snap.holder(inst.name)
            if holder == inst.id or not self.expected(inst, t):
                self.absent_since.pop(inst.id, None)
                continue
            other = self.fleet.instances.get(holder or "")
            if other is not None and other.proc.running(t):
                kind, who = "unfenced", f"superseded by {holder} of {other.proc.label}"
            elif other is not None:
                kind, who = "liveness", f"held by {holder} of {other.proc.label}, not running"
            else:
                kind, who = "liveness", f"held by {holder}" if holder else "absent"
            since, was = self.absent_since.get(inst.id, (t, kind))
            if was != kind:  # a new episode: another live instance took over, or it ended
                since = t
            self.absent_since[inst.id] = (since, kind)
            gap = t - since
            if kind == "unfenced":
                self.max_superseded = max(self.max_superseded, gap)
            else:
                self.max_absence = max(self.max_absence, gap)
            if gap > self.ttl + 1:
                detail = (
                    f"{inst.name}/{inst.id} of {inst.proc.label} (running, not frozen) has been "
                    f"out of the registry for {gap:.2f}s ({who})"
                )
                self.v.add(kind, f"{inst.id}:{since}", detail, t)
        self._stale(snap)
        self._converge(snap)

    def _stale(self, snap: Snapshot) -> None:
        t = snap.at
        for name, inst_id in snap.holders().items():
            inst = self.fleet.instances.get(inst_id)
            if inst is None:  # not one of our processes (learn() knows them all by pid)
                self.v.add("stale", f"unknown:{inst_id}", f"{name} held by unknown {inst_id}", t)
                continue
            proc = inst.proc
            gone = proc.gone_at
            if gone is None or t < gone:
                continue
            age = t - gone
            self.stale[inst_id] = max(self.stale.get(inst_id, 0.0), age)
            if self.timeline.redis_near(gone, t) or self.timeline.no_coordinator_near(gone, t):
                continue
            self.max_stale_counted = max(self.max_stale_counted, age)
            if age > self.ttl + 1:
                how = "killed" if proc.killed_at is not None else "exited"
                detail = f"{name}/{inst_id} of {proc.label} still registered {age:.2f}s after {how}"
                self.v.add("stale", inst_id, detail, t)

    def on_events(self, events: list[RegistryEvent]) -> None:
        """No live agent is expired: its process runs and was not frozen within a TTL."""
        for e in events:
            if e.type is not RegistryEventType.AGENT_EXPIRED:
                continue
            inst = self.fleet.instances.get(e.instance_id or "")
            t = e.at.timestamp()
            if inst is None or not inst.proc.running(t):
                continue
            if inst.proc.frozen_near(t, self.ttl):  # frozen then, or less than a TTL before
                continue
            if inst.stopped_at is not None and inst.stopped_at <= t + 1.0:  # read late
                continue
            detail = (
                f"{e.name}/{inst.id} of {inst.proc.label} expired ({e.reason}) at {t:.3f} "
                f"while its process ran (revision {e.revision})"
            )
            self.v.add("expired_live", f"{inst.id}:{e.revision}", detail, t)

    def converged(self, snap: Snapshot) -> bool:
        t = snap.at
        for p in self.fleet.current.values():
            if p.running(t) and not p.frozen_near(t, 0) and self.fleet.ready(p):
                mine = [i for i in self.fleet.instances.values() if i.proc is p and i.ready_at]
                if any(snap.holder(i.name) != i.id for i in mine if i.stopped_at is None):
                    return False
        for inst_id in snap.holders().values():
            inst = self.fleet.instances.get(inst_id)
            if inst is None or not inst.proc.running(t):
                return False
        return True

    def _converge(self, snap: Snapshot) -> None:
        redis_faults = [r for r in self.timeline.records if r.kind in REDIS_KINDS]
        for i, rec in enumerate(redis_faults):
            c = self.convergence.setdefault(i, Convergence(rec))
            if c.after_s is not None or c.interrupted or rec.end is None or snap.at < rec.end:
                continue
            if any(r.start < snap.at for r in redis_faults[i + 1 :]):
                c.interrupted = True
            elif self.converged(snap):
                c.after_s = snap.at - rec.end

    # -- invariant 4 ----------------------------------------------------------------------------
    def on_probes(self, probes: list[Probe]) -> None:
        self.pending += probes

    def evaluate(self, upto: float) -> None:
        """Check probes and self-stops read before ``upto`` (the feed is read up to it)."""
        ready = [p for p in self.pending if p.read_at <= upto]
        self.pending = [p for p in self.pending if p.read_at > upto]
        evidence = {n: sorted(h, key=lambda x: x[0]) for n, h in self.registry.holders.items()}
        for p in ready:
            self.probes_checked += 1
            self._probe(p, evidence.get(p.name, []))
        for inst in self.fleet.instances.values():
            if inst.stopped_at is None or inst.stopped_at > upto or inst.id in self.stops_checked:
                continue
            self.stops_checked.add(inst.id)
            if inst.stopped_word == "halted":
                detail = f"{inst.name}/{inst.id} of {inst.proc.label} stopped by itself"
                self.v.add("self_stop", inst.id, detail, inst.stopped_at)
                continue
            before = _latest(evidence.get(inst.name, []), inst.stopped_at)
            if before is None or before[1] in (inst.id, None):
                detail = (
                    f"{inst.name}/{inst.id} of {inst.proc.label} stopped as `lost` but no other "
                    f"instance held the name (last known holder: {before})"
                )
                self.v.add("lost_name", inst.id, detail, inst.stopped_at)

    def _probe(self, p: Probe, evidence: list[tuple[float, str | None]]) -> None:
        entered = p.entry_ms / 1000
        last = _latest(evidence, entered - SLACK_S)
        if last is None or last[1] in (p.instance, None):
            return
        since, other = last
        if any(h == p.instance and since < at <= p.read_at for at, h in evidence):
            return  # X held the name again: perhaps before it handled the probe
        detail = (
            f"{p.name}: probe {p.msg_id} entered the inbox at {entered:.3f} and was handled by "
            f"{p.instance}, but {other} held the name since {since:.3f} "
            f"({entered - since:.2f}s before)"
        )
        self.v.add("one_server", f"{p.name}:{p.instance}:{other}", detail, entered)


def _latest(evidence: list[tuple[float, str | None]], t: float) -> tuple[float, str | None] | None:
    """The last (time, holder) at or before ``t`` (``evidence`` sorted by time)."""
    i = bisect.bisect_right(evidence, t, key=lambda x: x[0])
    return evidence[i - 1] if i else None

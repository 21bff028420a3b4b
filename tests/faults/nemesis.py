"""The nemesis: a seeded run of overlapping faults against a real fleet, with invariants checked
continuously from registry snapshots and the change feed.

One run (``run_nemesis(cluster, Config(seed=...))``):

1. 2-3 coordinators and 3 agent processes ("slots") of 4-6 agents each, real processes;
2. a poller (every ``poll`` s: the processes' ledgers, an atomic registry snapshot, the change
   feed up to the snapshot's revision; ``nemesis_registry`` and ``nemesis_liveness`` check them)
   and a prober (a ``job`` to every name every ``probe_every`` s) run throughout;
3. the fault phase: the plan of ``nemesis_plan`` (from the seed alone), applied by
   ``nemesis_faults``;
4. a quiet phase of 2 x TTL + 2 s, then the final checks: every running agent is registered and
   nothing else is, the feed replays to the registry, every acknowledged probe was handled.

The result carries the violations and a report (``report()`` prints it as one JSON line and
appends it to ``$AGENTBUS_FAULT_REPORT``). Knobs: ``AGENTBUS_NEMESIS_SEEDS`` (``1,2,3``),
``AGENTBUS_NEMESIS_SECONDS`` (fault phase, 20), ``AGENTBUS_NEMESIS_FAULTS`` (kinds, all).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import time
from dataclasses import dataclass, field
from typing import Any

import redis
import redis.asyncio as aioredis

from agent_sdk import Bus
from tests.faults.harness import Cluster
from tests.faults.nemesis_faults import Nemesis, until
from tests.faults.nemesis_liveness import LivenessChecks
from tests.faults.nemesis_observe import Prober, Snapshot, index_keys, read_feed, take_snapshot
from tests.faults.nemesis_plan import Kind, plan
from tests.faults.nemesis_registry import RegistryChecks
from tests.faults.nemesis_world import Fleet, Timeline, Violations

__all__ = ["Config", "Outcome", "run_nemesis"]


@dataclass(frozen=True)
class Config:
    seed: int
    seconds: float = 20.0  # the fault phase
    slots: int = 3
    poll: float = 0.08
    probe_every: float = 0.2
    kinds: frozenset[Kind] = frozenset(Kind)

    @classmethod
    def from_env(cls, seed: int) -> Config:
        raw = os.environ.get("AGENTBUS_NEMESIS_FAULTS", "")  # "none": a run without faults
        kinds = {k.strip() for k in raw.split(",")} - {"", "none"}
        return cls(
            seed=seed,
            seconds=float(os.environ.get("AGENTBUS_NEMESIS_SECONDS", "20")),
            kinds=frozenset(Kind(k) for k in kinds) if raw else frozenset(Kind),
        )

    @property
    def coordinators(self) -> int:
        return 2 + self.seed % 2

    @property
    def sizes(self) -> list[int]:
        rng = random.Random(f"fleet-{self.seed}")
        return [rng.randint(4, 6) for _ in range(self.slots)]


@dataclass
class Outcome:
    violations: Violations
    report: dict[str, Any] = field(default_factory=dict)


class Poller:
    """One task: ledgers, snapshot, feed, checks; every ``interval`` seconds."""

    def __init__(self, cluster: Cluster, fleet: Fleet, registry: RegistryChecks,
                 liveness: LivenessChecks) -> None:  # fmt: skip
        self.client = aioredis.Redis(
            port=cluster.redis.port, decode_responses=True, socket_timeout=None
        )
        self.keys = cluster.keys
        self.fleet, self.registry, self.liveness = fleet, registry, liveness
        slots = range(len(fleet.names))
        self.indexes = index_keys(
            self.keys,
            {fleet.role(s) for s in slots},
            {c for s in slots for c in fleet.capabilities(s)},
            {t for s in slots for t in fleet.tags(s)},
        )
        self.generation = 0  # bumped when Redis loses its data: results in flight are dropped
        self.last: Snapshot | None = None
        self.polls = 0

    def data_lost(self) -> None:
        self.generation += 1
        self.registry.data_lost()

    async def once(self) -> None:
        gen = self.generation
        self.liveness.on_probes(self.fleet.read_ledgers())
        self.fleet.notice_exits()
        try:
            snap = await take_snapshot(self.client, self.keys, self.fleet.all_names, self.indexes)
            events = (
                await read_feed(self.client, self.keys, self.registry.cursor, snap.head)
                if snap.head is not None
                else []
            )
        except (redis.RedisError, OSError):
            return  # Redis down or restarting: the next poll tries again
        if gen != self.generation:
            return
        self.registry.apply(events)
        self.registry.check_indexes(snap)
        self.registry.observe(snap, self.fleet.all_names)
        self.registry.compare(snap)
        self.liveness.on_snapshot(snap)
        self.liveness.on_events(events)
        self.liveness.evaluate(snap.at)
        self.last = snap
        self.polls += 1

    async def run(self, interval: float) -> None:
        while True:
            await self.once()
            await asyncio.sleep(interval)  # pacing the poller


async def run_nemesis(cluster: Cluster, cfg: Config) -> Outcome:
    began = time.time()
    ttl = cluster.settings.ttl
    coordinators = [cluster.coordinator(f"c{i}") for i in range(cfg.coordinators)]
    fleet = Fleet(cluster, cfg.sizes)
    for slot in range(cfg.slots):
        fleet.spawn(slot)
    for p in list(fleet.procs):
        await cluster.wait_ready(p.fleet)
    violations, timeline = Violations(), Timeline(ttl, cfg.coordinators)
    registry = RegistryChecks(cluster.keys, violations)
    liveness = LivenessChecks(fleet, timeline, registry, violations)
    poller = Poller(cluster, fleet, registry, liveness)
    nemesis = Nemesis(cluster, fleet, coordinators, timeline, poller.data_lost)
    faults = plan(cfg.seed, cfg.seconds, ttl=ttl, coordinators=cfg.coordinators,
                  slots=cfg.slots, kinds=cfg.kinds)  # fmt: skip
    stop_probes = asyncio.Event()
    polling = asyncio.create_task(poller.run(cfg.poll))
    try:
        async with Bus(cluster.settings) as bus:
            prober = Prober(bus, fleet.all_names, cfg.probe_every)
            probing = asyncio.create_task(prober.run(stop_probes))
            try:
                faults_began = time.time()
                await nemesis.run(faults, cfg.seconds)
                faults_s = time.time() - faults_began
                await asyncio.sleep(2 * ttl + 2)  # the quiet phase: no faults, checks go on
                await _final_registry(poller, liveness, violations, time.time())
            finally:
                stop_probes.set()
                await probing
        lost = await _lost_probes(prober, fleet, timeline, violations, deadline=3 * ttl + 5)
        polling.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await polling
        await poller.once()  # the last ledger lines and feed entries
        liveness.evaluate(time.time())
    finally:
        if not polling.done():
            polling.cancel()
        await poller.client.aclose()
    report = {
        "seed": cfg.seed,
        "fault_phase_s": round(faults_s, 1),
        "run_s": round(time.time() - began, 1),
        "coordinators": cfg.coordinators,
        "agents_per_process": cfg.sizes,
        "faults": timeline.counts(),
        "violations": violations.counts(),
        "max_stale_after_kill_s": round(max(liveness.stale.values(), default=0.0), 2),
        "max_stale_after_kill_outside_redis_faults_s": round(liveness.max_stale_counted, 2),
        "max_absence_of_live_agents_s": round(liveness.max_absence, 2),
        "max_superseded_while_running_s": round(liveness.max_superseded, 2),
        "convergence_after_redis_faults_s": [c.label() for c in liveness.convergence.values()],
        "probes": {
            "acked": len(prober.acked),
            "refused": dict(prober.refused),
            "handled_checked": liveness.probes_checked,
            "lost": lost,
        },
        "exited_on_their_own": [
            f"{p.label} (exit {p.fleet.proc.returncode if p.fleet.proc else '?'})"
            for p in fleet.procs
            if p.exited_at is not None
        ],
        "feed": dict(registry.events),
        "expired_replaced": registry.expired_replaced,
        "polls": poller.polls,
        "fault_log": [r.describe(faults_began) for r in timeline.records],
    }
    return Outcome(violations, report)


async def _final_registry(
    poller: Poller, liveness: LivenessChecks, violations: Violations, since: float
) -> None:
    """After the quiet phase (on a snapshot taken after ``since``): every running agent holds
    its name, and nothing else is held."""
    await until(lambda: poller.last is not None and poller.last.at > since, 10)
    snap = poller.last
    assert snap is not None, "no registry snapshot after the quiet phase"
    fleet, t = liveness.fleet, snap.at
    for inst in fleet.instances.values():
        running = inst.ready_at and inst.stopped_at is None and inst.proc.running(t)
        if running and snap.holder(inst.name) != inst.id:
            holder = snap.holder(inst.name)
            detail = f"{inst.name}/{inst.id} of {inst.proc.label} runs; the registry holds {holder}"
            violations.add("final", inst.id, detail, t)
    for p in fleet.procs:
        if p.running(t) and not fleet.ready(p) and not p.may_give_up:
            detail = f"{p.label} runs but some of its agents never registered"
            violations.add("final", p.label, detail, t)
    for name, inst_id in snap.holders().items():
        held = fleet.instances.get(inst_id)
        if held is None or not held.proc.running(t):
            violations.add("final", f"{name}:{inst_id}", f"{name} held by dead {inst_id}", t)


async def _lost_probes(
    prober: Prober, fleet: Fleet, timeline: Timeline, violations: Violations, deadline: float
) -> int:
    """Every probe acknowledged after the last data loss is handled (``done``) in time."""
    wiped = max((r.end or 0.0 for r in timeline.data_losses()), default=0.0)
    due = {m: n for m, (n, at) in prober.acked.items() if at > wiped}
    await until(lambda: set(due) <= fleet.done, deadline)
    missing = sorted(set(due) - fleet.done)
    for m in missing:
        violations.add("lost_probe", m, f"probe {m} to {due[m]} acknowledged, never handled")
    return len(missing)

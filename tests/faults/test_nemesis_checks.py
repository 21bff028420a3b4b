"""The nemesis's own logic, without processes: the plan, and that each checker fires when it
should and stays quiet when it should (so a red nemesis run means the product, not the test)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any, cast

import orjson

from schemas.events import RegistryEvent
from schemas.keys import KeySpace
from tests.faults.nemesis_liveness import LivenessChecks
from tests.faults.nemesis_observe import Snapshot
from tests.faults.nemesis_plan import COORDINATOR_KINDS, Kind, plan
from tests.faults.nemesis_registry import RegistryChecks
from tests.faults.nemesis_world import (
    AgentProc,
    FaultRecord,
    Fleet,
    Instance,
    Probe,
    Timeline,
    Violations,
)

KEYS = KeySpace("t")
TTL = 2.0


def record(inst: str, role: str = "r", caps: tuple[str, ...] = ("c",)) -> dict[str, str]:
    return {
        "instance_id": inst,
        "role": role,
        "capabilities": orjson.dumps(list(caps)).decode(),
        "tags": "[]",
    }


def snapshot(at: float, records: dict[str, dict[str, str]], **overrides: Any) -> Snapshot:
    names = frozenset(records)
    fields: dict[str, Any] = {
        "at": at,
        "agents": names,
        "deadlines": names,
        "leases": frozenset(),
        "indexes": {
            KEYS.role_index("r"): names,
            KEYS.capability_index("c"): names,
            KEYS.role_capability_index("r", "c"): names,
        },
        "records": records,
        "keys": frozenset(
            {KEYS.record(n) for n in names}
            | {
                KEYS.role_index("r"),
                KEYS.capability_index("c"),
                KEYS.role_capability_index("r", "c"),
            }
            if names
            else set()
        ),
        "head": None,
    }
    return Snapshot(**{**fields, **overrides})


def event(revision: str, kind: str, name: str, inst: str) -> RegistryEvent:
    return RegistryEvent.from_fields(revision, {"type": kind, "name": name, "instance_id": inst})


# -- the plan ----------------------------------------------------------------------------------
def test_plan_depends_on_the_seed_only_and_keeps_lanes_apart() -> None:
    for seed in range(1, 30):
        a = plan(seed, 20, ttl=TTL, coordinators=2, slots=3)
        assert a == plan(seed, 20, ttl=TTL, coordinators=2, slots=3)
        for f in a:
            assert f.at > 0
            assert f.at + f.occupies(TTL) <= 20
            for g in a:
                if g is not f and g.lane == f.lane and g.at >= f.at:
                    assert g.at >= f.at + f.occupies(TTL)
        coords = [f for f in a if f.kind in COORDINATOR_KINDS]
        for f in coords:  # one coordinator at least is always up
            assert sum(1 for g in coords if g.at <= f.at < g.at + g.occupies(TTL)) < 2
    assert plan(1, 20, ttl=TTL, coordinators=2, slots=3) != plan(2, 20, ttl=TTL, coordinators=2,
                                                                 slots=3)  # fmt: skip
    only = plan(1, 60, ttl=TTL, coordinators=2, slots=3, kinds=frozenset({Kind.AGENT_ZOMBIE}))
    assert only
    assert {f.kind for f in only} == {Kind.AGENT_ZOMBIE}


# -- invariant 1 -------------------------------------------------------------------------------
def test_index_checks_pass_a_consistent_registry_and_catch_each_kind_of_drift() -> None:
    v = Violations()
    checks = RegistryChecks(KEYS, v)
    checks.check_indexes(snapshot(1.0, {"a": record("i1"), "b": record("i2")}))
    assert not v
    drifted = snapshot(
        2.0,
        {"a": record("i1")},
        agents=frozenset({"a", "ghost"}),  # a member without a record
        indexes={
            KEYS.role_index("r"): frozenset({"a"}),
            KEYS.capability_index("c"): frozenset(),
            KEYS.role_capability_index("r", "c"): frozenset({"a"}),
        },
        keys=frozenset({KEYS.record("a"), KEYS.tag_index("old")}),  # a stray index
    )
    checks.check_indexes(drifted)
    details = " | ".join(v.lines())
    assert f"ghost in {KEYS.agents()} (no record)" in details
    assert f"record of a but not in {KEYS.capability_index('c')}" in details
    assert f"registry key {KEYS.tag_index('old')}" in details


def test_a_leased_name_lives_by_its_lease_which_must_have_a_deadline() -> None:
    v = Violations()
    checks = RegistryChecks(KEYS, v)
    leased = {**record("i1"), "lease": "h:1"}
    fine = snapshot(1.0, {"a": leased}, deadlines=frozenset(), leases=frozenset({"h:1"}))
    checks.check_indexes(fine)
    assert not v
    checks.check_indexes(snapshot(2.0, {"a": leased}, leases=frozenset()))
    details = " | ".join(v.lines())
    assert "a's lease h:1 has no deadline" in details
    assert f"a in {KEYS.deadlines()} (not in its record)" in details


# -- invariant 3 -------------------------------------------------------------------------------
def test_feed_replay_matches_the_registry_and_catches_gaps() -> None:
    v = Violations()
    checks = RegistryChecks(KEYS, v)
    checks.apply(
        [
            event("1000-0", "agent_registered", "a", "i1"),
            event("2000-0", "agent_expired", "a", "i1"),
            event("3000-0", "agent_registered", "a", "i2"),
        ]
    )
    checks.compare(snapshot(3.5, {"a": record("i2")}))
    assert not v
    checks.compare(snapshot(3.6, {"a": record("i1")}))  # the registry says otherwise
    checks.apply([event("3000-0", "agent_updated", "a", "i9")])  # not newer, not the holder
    assert v.counts() == {"feed": 3}
    checks.data_lost()
    checks.apply([event("4000-0", "agent_registered", "a", "i2")])  # a new feed: no gap
    assert v.counts() == {"feed": 3}


# -- invariants 2 and 4 ------------------------------------------------------------------------
class World:
    """One slot, two processes (``old`` and ``new``) of agent ``a``; the checks over them."""

    def __init__(self) -> None:
        self.fleet = Fleet(cast(Any, None), [1])
        procs = []
        for label, pid in (("old", 1), ("new", 2)):
            fp = SimpleNamespace(label=label, names=["a"], pid=pid, alive=True, log=None)
            procs.append(AgentProc(cast(Any, fp), 0, started=0.0))
        self.fleet.procs = procs
        self.old, self.new = procs
        self.v = Violations()
        self.timeline = Timeline(TTL, 2)
        self.registry = RegistryChecks(KEYS, self.v)
        self.liveness = LivenessChecks(self.fleet, self.timeline, self.registry, self.v)


def test_a_probe_handled_by_a_superseded_instance_is_caught() -> None:
    w = World()
    w.fleet.instances = {"x": Instance("a", "x", w.old, 1.0), "y": Instance("a", "y", w.new, 10.0)}
    w.registry.apply(
        [
            event("1000-0", "agent_registered", "a", "x"),
            event("9000-0", "agent_expired", "a", "x"),
            event("10000-0", "agent_registered", "a", "y"),
        ]
    )
    w.liveness.on_probes(
        [
            Probe("a", "m1", 9_000, "x", read_at=12.0),  # before y registered: fine
            Probe("a", "m2", 10_050, "x", read_at=12.0),  # within the 0.1 s slack
            Probe("a", "m3", 11_000, "y", read_at=12.0),  # the holder: fine
            Probe("a", "m4", 11_000, "x", read_at=12.0),  # a zombie serving the name
        ]
    )
    w.liveness.evaluate(20.0)
    assert w.v.counts() == {"one_server": 1}
    assert "m4" in w.v.lines()[0]


def test_a_probe_after_the_old_instance_took_the_name_back_is_fine() -> None:
    w = World()
    w.registry.apply(
        [
            event("1000-0", "agent_registered", "a", "x"),
            event("9000-0", "agent_expired", "a", "x"),
            event("10000-0", "agent_registered", "a", "y"),
            event("11000-0", "agent_expired", "a", "y"),
            event("12000-0", "agent_registered", "a", "x"),
        ]
    )
    w.liveness.on_probes([Probe("a", "m1", 12_500, "x", read_at=13.0)])
    w.liveness.evaluate(20.0)
    assert not w.v


def test_liveness_counts_absence_only_while_expected() -> None:
    w = World()
    w.fleet.instances = {"x": Instance("a", "x", w.old, ready_at=1.0)}
    w.timeline.records.append(FaultRecord(Kind.REDIS_SLEEP, "redis", 4.0, 4.5))  # to 6.5 + TTL
    for t in (2.0, 4.5, 5.5, 6.4, 8.0, 9.5):  # out during a Redis window, then for 1.5 s only
        w.liveness.on_snapshot(snapshot(t, {}))
    assert not w.v
    for t in (10.0, 10.6, 11.1):  # now 3.6 s out, beyond TTL + 1
        w.liveness.on_snapshot(snapshot(t, {}))
    assert w.v.counts() == {"liveness": 1}


def test_a_killed_agents_record_must_go_within_ttl_plus_one() -> None:
    w = World()
    w.fleet.instances = {"x": Instance("a", "x", w.old, ready_at=1.0)}
    w.old.killed_at = 5.0
    for t in (6.0, 7.9):
        w.liveness.on_snapshot(snapshot(t, {"a": record("x")}))
    assert not w.v
    w.liveness.on_snapshot(snapshot(8.2, {"a": record("x")}))
    assert w.v.counts() == {"stale": 1}
    assert w.liveness.stale["x"] > TTL + 1

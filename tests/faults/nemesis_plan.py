"""The nemesis's fault schedule: derived from the seed alone (``random.Random(seed)``).

A plan is a list of ``Fault``s, each on a *lane*: Redis (one fault at a time), one lane per
coordinator, one per fleet slot (an agent process and its replacements), and client kills. Faults
of one lane never overlap; faults of different lanes do, and half of them are placed next to
another fault on purpose. Two rules keep the run meaningful:

* at least one coordinator is neither killed nor stopped at any moment (a fleet with no
  coordinator at all expires nobody, and that is not what the liveness checks measure);
* Redis faults are one TTL apart (a check window ends a TTL after a Redis fault).

Durations are in multiples of the fleet's TTL where the brief of the fault says so; ``occupies``
estimates how long a fault keeps its lane busy (an agent fault waits for its replacement to
register), which is what the planner uses to place the next fault of the lane.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from enum import StrEnum

__all__ = ["Fault", "Kind", "plan"]


class Kind(StrEnum):
    COORD_KILL = "coord_kill"  # SIGKILL a coordinator, restart it after `duration`
    COORD_STOP = "coord_stop"  # SIGSTOP a coordinator for `duration`, then SIGCONT
    AGENT_KILL = "agent_kill"  # SIGKILL an agent process; a replacement (same names) starts
    AGENT_ZOMBIE = "agent_zombie"  # SIGSTOP past the TTL, replacement, then SIGCONT the old one
    CLIENT_KILL = "client_kill"  # CLIENT KILL TYPE normal: every client's connection cut
    REDIS_SLEEP = "redis_sleep"  # DEBUG SLEEP `duration`
    REDIS_RESTART = "redis_restart"  # SIGKILL Redis, down `duration`, restart from its AOF
    REDIS_WIPE = "redis_wipe"  # SIGKILL Redis, down `duration`, restart with no data


REDIS_KINDS = frozenset({Kind.REDIS_SLEEP, Kind.REDIS_RESTART, Kind.REDIS_WIPE})
COORDINATOR_KINDS = frozenset({Kind.COORD_KILL, Kind.COORD_STOP})
AGENT_KINDS = frozenset({Kind.AGENT_KILL, Kind.AGENT_ZOMBIE})

#: Faults per kind in a 20-second fault phase: (fewest, most); scaled with the phase length.
PER_20S: dict[Kind, tuple[int, int]] = {
    Kind.COORD_KILL: (0, 2),
    Kind.COORD_STOP: (1, 2),
    Kind.AGENT_KILL: (1, 2),
    Kind.AGENT_ZOMBIE: (1, 2),
    Kind.CLIENT_KILL: (0, 2),
    Kind.REDIS_SLEEP: (0, 1),
    Kind.REDIS_RESTART: (0, 1),
    Kind.REDIS_WIPE: (0, 1),
}
#: Python start-up of a replacement plus the wait for its predecessor to expire, beyond a TTL.
_REPLACEMENT_S = 3.0
_GAP_S = 0.5  # between two faults of one lane
#: Share of faults placed right next to another one (on another lane): overlaps are where the
#: interesting bugs are (an agent killed while a coordinator is frozen, a zombie resuming just
#: after Redis slept).
_BURST = 0.5


@dataclass(frozen=True, slots=True)
class Fault:
    kind: Kind
    at: float  # seconds after the fault phase began
    duration: float  # down, frozen or sleeping time; 0 for instant faults
    target: int = 0  # coordinator or fleet slot index
    delay: float = 0.0  # agent faults: wait before the replacement process starts

    @property
    def lane(self) -> str:
        if self.kind in REDIS_KINDS:
            return "redis"
        if self.kind in COORDINATOR_KINDS:
            return f"coordinator-{self.target}"
        if self.kind in AGENT_KINDS:
            return f"slot-{self.target}"
        return "clients"

    def occupies(self, ttl: float) -> float:
        """Estimated seconds the fault keeps its lane busy (and Redis faults the checks)."""
        if self.kind in REDIS_KINDS:
            return self.duration + ttl
        if self.kind in AGENT_KINDS:
            return max(self.duration, self.delay + ttl) + _REPLACEMENT_S
        return self.duration

    def describe(self) -> str:
        return f"{self.at:6.2f}s {self.kind:<13} target={self.target} for {self.duration:.2f}s"


def _draw(
    kind: Kind, rng: random.Random, seconds: float, ttl: float, coords: int, slots: int,
    placed: list[Fault],
) -> Fault:  # fmt: skip
    if placed and rng.random() < _BURST:  # close to another fault: they overlap
        at = max(0.5, rng.choice(placed).at + rng.uniform(-0.5, 1.5))
    else:
        at = rng.uniform(0.5, seconds)
    if kind is Kind.COORD_KILL:
        return Fault(kind, at, rng.uniform(0.3, 2.0), rng.randrange(coords))
    if kind is Kind.COORD_STOP:
        return Fault(kind, at, rng.uniform(0.5, 2.5) * ttl, rng.randrange(coords))
    if kind is Kind.AGENT_KILL:
        return Fault(kind, at, 0.0, rng.randrange(slots), delay=rng.uniform(0.0, 1.5))
    if kind is Kind.AGENT_ZOMBIE:
        frozen = rng.uniform(1.25, 2.5) * ttl
        return Fault(kind, at, frozen, rng.randrange(slots), delay=rng.uniform(0, 0.5))
    if kind is Kind.CLIENT_KILL:
        return Fault(kind, at, 0.0)
    if kind is Kind.REDIS_SLEEP:
        return Fault(kind, at, rng.uniform(0.5, 1.75) * ttl)
    return Fault(kind, at, rng.uniform(0.2, 2.0))  # REDIS_RESTART, REDIS_WIPE


def _coordinators_left(faults: list[Fault], coords: int, ttl: float) -> bool:
    """True if at every moment at least one coordinator is free of faults."""
    spans = [(f.at, f.at + f.occupies(ttl)) for f in faults if f.kind in COORDINATOR_KINDS]
    return all(
        sum(1 for a, b in spans if a <= start < b) < coords for start, _ in spans
    )  # the overlap is largest at some fault's start


def _fits(new: Fault, placed: list[Fault], seconds: float, ttl: float, coords: int) -> bool:
    if new.at + new.occupies(ttl) > seconds:
        return False
    for f in placed:
        if f.lane != new.lane:
            continue
        if new.at < f.at + f.occupies(ttl) + _GAP_S and f.at < new.at + new.occupies(ttl) + _GAP_S:
            return False
    return new.kind not in COORDINATOR_KINDS or _coordinators_left([*placed, new], coords, ttl)


def plan(
    seed: int,
    seconds: float,
    *,
    ttl: float,
    coordinators: int,
    slots: int,
    kinds: frozenset[Kind] = frozenset(Kind),
) -> list[Fault]:
    """The faults of one run, by start time. Same seed and arguments: same plan."""
    rng = random.Random(seed)
    scale = seconds / 20.0
    wanted: list[Kind] = []
    for kind in Kind:  # a fixed order: the draws depend on the seed only
        lo, hi = PER_20S[kind]
        n = rng.randint(round(lo * scale), max(round(hi * scale), 1 if hi else 0))
        if kind in kinds:
            wanted += [kind] * n
    rng.shuffle(wanted)
    placed: list[Fault] = []
    for kind in wanted:
        for _ in range(60):  # rejection sampling; a fault that never fits is dropped
            f = _draw(kind, rng, seconds, ttl, coordinators, slots, placed)
            if _fits(f, placed, seconds, ttl, coordinators):
                placed.append(f)
                break
    return sorted(placed, key=lambda f: f.at)

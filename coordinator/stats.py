"""Counters of one coordinator (read them from ``Coordinator.stats``)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

__all__ = ["CoordinatorStats"]


@dataclass(slots=True)
class CoordinatorStats:
    """Monotonic counters since the coordinator started."""

    announces: int = 0
    heartbeats: int = 0
    leaves: int = 0
    expiries: int = 0
    dead_letters: int = 0
    refused: int = 0
    stale: int = 0  # announcements dropped because their deadline had passed
    reannounces: int = 0
    claimed: int = 0
    sweeps: int = 0
    errors: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)

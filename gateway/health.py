"""The health score of an agent: one number from 0 to 100 that discovery can filter on.

From the agent's usage stats (its current instance) and its record::

    score = 100 × (1 − error_rate) × latency_factor × load_factor × status_factor

* ``error_rate``: errors / invocations over every message type (0 without invocations);
* ``latency_factor``: 1 while the slowest type's p95 is at most ``LATENCY_BUDGET_MS`` (1 s),
  else ``LATENCY_BUDGET_MS / p95`` (a p95 of 4 s gives 0.25);
* ``load_factor``: ``1 − 0.5 × min(load / max_concurrency, 1)`` (a full agent keeps half);
* ``status_factor``: ready and busy 1, starting 0.5, draining 0.25.

Rounded to an integer. A fresh agent that has handled nothing scores 100 if ready and idle.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from agent_sdk.usage import TypeUsage
from schemas.agent import AgentRecord, AgentStatus

__all__ = ["LATENCY_BUDGET_MS", "Health", "health", "health_score"]

#: A p95 latency up to this (ms) costs nothing.
LATENCY_BUDGET_MS = 1000.0
_STATUS_FACTOR = {
    AgentStatus.READY: 1.0,
    AgentStatus.BUSY: 1.0,
    AgentStatus.STARTING: 0.5,
    AgentStatus.DRAINING: 0.25,
}


@dataclass(frozen=True, slots=True)
class Health:
    score: int
    error_rate: float
    p95_ms: float | None
    load_ratio: float
    invocations: int
    errors: int

    def as_dict(self) -> dict[str, Any]:
        return {
            "score": self.score,
            "error_rate": round(self.error_rate, 4),
            "p95_ms": None if self.p95_ms is None else round(self.p95_ms, 3),
            "load_ratio": round(self.load_ratio, 4),
            "invocations": self.invocations,
            "errors": self.errors,
        }


def health(record: AgentRecord, usage: list[TypeUsage]) -> Health:
    """The score of ``record`` given its ``usage`` rows (see the module docstring)."""
    invocations = sum(u.invocations for u in usage)
    errors = sum(u.errors for u in usage)
    error_rate = errors / invocations if invocations else 0.0
    p95s = [p for p in (u.percentile_ms(0.95) for u in usage) if p is not None]
    p95 = max(p95s) if p95s else None
    latency_factor = 1.0 if p95 is None or p95 <= LATENCY_BUDGET_MS else LATENCY_BUDGET_MS / p95
    load_ratio = min(record.load_ratio, 1.0)
    load_factor = 1.0 - 0.5 * load_ratio
    status_factor = _STATUS_FACTOR.get(record.status, 1.0)
    score = 100.0 * (1.0 - error_rate) * latency_factor * load_factor * status_factor
    return Health(
        score=round(score),
        error_rate=error_rate,
        p95_ms=p95,
        load_ratio=record.load_ratio,
        invocations=invocations,
        errors=errors,
    )


def health_score(record: AgentRecord, usage: list[TypeUsage]) -> int:
    """``health(record, usage).score``; without usage rows (an agent that has handled nothing
    in this instance) computed from the record alone, which is most of a large fleet's page."""
    if usage:
        return health(record, usage).score
    load_factor = 1.0 - 0.5 * min(record.load_ratio, 1.0)
    return round(100.0 * load_factor * _STATUS_FACTOR.get(record.status, 1.0))

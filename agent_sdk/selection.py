"""Choosing one agent among those discovery found.

Strategies:

* ``least_loaded``: the lowest ``load / max_concurrency`` (ties broken at random, so idle
  agents share the work instead of the first one by name getting all of it);
* ``round_robin``: agents sorted by name, taken in turn; the turn is kept per ``Selector`` (one
  per ``Bus``/``Agent``, i.e. per caller) and per query;
* ``random``: uniform.
"""

from __future__ import annotations

import random
from collections.abc import Hashable, Sequence
from typing import Literal, get_args

from agent_sdk.settings import Settings
from schemas.agent import AgentRecord
from schemas.errors import InvalidInput, NoResponders

__all__ = ["STRATEGIES", "Selector", "Strategy", "no_responders"]

Strategy = Literal["least_loaded", "round_robin", "random"]
STRATEGIES: tuple[str, ...] = get_args(Strategy)


def no_responders(settings: Settings, query: dict[str, object]) -> NoResponders:
    """The error for an empty selection, naming the query, the URL and the namespace."""
    shown = ", ".join(f"{k}={v!r}" for k, v in query.items() if v not in (None, (), [], ""))
    return NoResponders(
        f"no live agent matches ({shown or 'any agent'}) on {settings.display_url} "
        f"(namespace {settings.namespace!r})",
        details={"query": {k: _plain(v) for k, v in query.items()}},
    )


def _plain(value: object) -> object:
    if isinstance(value, (tuple, list, set, frozenset)):
        return [str(v) for v in value]
    return value if value is None or isinstance(value, (int, float, str)) else str(value)


class Selector:
    """Picks one record with a strategy; remembers round-robin turns per query key."""

    def __init__(self, rng: random.Random | None = None) -> None:
        self._rng = rng or random.Random()
        self._turns: dict[Hashable, int] = {}

    def pick(
        self, records: Sequence[AgentRecord], strategy: str, key: Hashable = None
    ) -> AgentRecord:
        """One of ``records`` (non-empty) chosen by ``strategy``."""
        if not records:
            raise ValueError("nothing to pick from")
        if strategy == "least_loaded":
            best = min(r.load_ratio for r in records)
            return self._rng.choice([r for r in records if r.load_ratio == best])
        if strategy == "round_robin":
            ordered = sorted(records, key=lambda r: r.name)
            turn = self._turns.get(key, 0)
            self._turns[key] = turn + 1
            return ordered[turn % len(ordered)]
        if strategy == "random":
            return self._rng.choice(list(records))
        raise InvalidInput(
            f"unknown selection strategy {strategy!r}: use one of {', '.join(STRATEGIES)}"
        )

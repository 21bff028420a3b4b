"""Message priorities: ``critical``, ``important``, ``normal`` (the default) and ``low``.

Each inbox and role queue is a family of up to four streams, one per priority: ``normal`` is the
stream itself (``<ns>:agent:{<name>}:inbox``, ``<ns>:role:{<role>}:queue``), the others add a
suffix (``...:inbox:critical``). All four share the family's doorbell channel; a ring's
payload names the priority written (empty: ``normal``). Readers take higher priorities first,
with a bound on starvation (docs/PROTOCOL.md, "Priorities").
"""

from __future__ import annotations

from typing import Literal, get_args

__all__ = ["PRIORITIES", "Priority", "check_priority", "priority_rank"]

Priority = Literal["critical", "important", "normal", "low"]

#: Every priority, highest first.
PRIORITIES: tuple[Priority, ...] = get_args(Priority)

_RANK: dict[str, int] = {p: i for i, p in enumerate(PRIORITIES)}


def check_priority(value: str) -> Priority:
    """``value`` as a ``Priority``; ``ValueError`` naming the choices otherwise."""
    if value not in _RANK:
        raise ValueError(f"priority must be one of {', '.join(PRIORITIES)}; got {value!r}")
    return value  # type: ignore[return-value]


def priority_rank(value: str) -> int:
    """0 for ``critical`` ... 3 for ``low``; an unknown value ranks as ``normal``."""
    return _RANK.get(value, _RANK["normal"])

"""``Turnstile``: lets a burst of callers through a few per turn of the event loop.

When a server adds a hundred agents at once, each ``start()`` builds its announcement and data
plane, then waits for round trips that agents starting in the same turn share. Let through all
at once, the hundred builds run back to back before the first announcement leaves, and every
agent waits for the last one's build. Let through ``per_turn`` at a time, the first ones'
round trips leave (and the coordinator answers them) while the next ones are built: the burst
becomes a pipeline. A caller that finds nobody waiting goes through at once, in its own turn.
"""

from __future__ import annotations

import asyncio
from collections import deque

__all__ = ["Turnstile"]


class Turnstile:
    """At most ``per_turn`` callers of ``enter`` proceed in one turn of the event loop; the
    others wait, in arrival order, for the next turns."""

    def __init__(self, per_turn: int = 16) -> None:
        if per_turn < 1:
            raise ValueError(f"per_turn must be >= 1, got {per_turn}")
        self.per_turn = per_turn
        self._passed = 0  # callers let through in the current turn
        self._waiting: deque[asyncio.Future[None]] = deque()
        self._turn_scheduled = False

    async def enter(self) -> None:
        """Return at once, or in a later turn if ``per_turn`` callers went through in this
        one."""
        if self._passed < self.per_turn and not self._waiting:
            self._passed += 1
            self._schedule()
            return
        waiter = asyncio.get_running_loop().create_future()
        self._waiting.append(waiter)
        self._schedule()
        await waiter  # cancelled while waiting: skipped when its turn comes

    def _schedule(self) -> None:
        if not self._turn_scheduled:
            self._turn_scheduled = True
            asyncio.get_running_loop().call_soon(self._turn)

    def _turn(self) -> None:
        """A new turn: the next ``per_turn`` waiters go through."""
        self._turn_scheduled = False
        self._passed = 0
        while self._waiting and self._passed < self.per_turn:
            waiter = self._waiting.popleft()
            if not waiter.done():
                waiter.set_result(None)
                self._passed += 1
        if self._waiting:
            self._schedule()

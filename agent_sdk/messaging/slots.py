"""Handler slots: how many entries an agent may hold at once (``max_concurrency``).

Readers reserve slots *before* they read (``XREADGROUP COUNT`` = the slots they reserved) and
hand back what they did not use, so an agent never holds more entries than it can work on and
the ``load`` it reports is real.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

__all__ = ["Slots"]


class Slots:
    """A counter of reserved slots with a wait for "at least one free"."""

    def __init__(self, capacity: int, on_change: Callable[[int], None] | None = None) -> None:
        if capacity < 1:
            raise ValueError(f"max_concurrency must be at least 1, got {capacity}")
        self.capacity = capacity
        self.used = 0
        self._on_change = on_change
        self._freed: asyncio.Event | None = None

    @property
    def free(self) -> int:
        return max(0, self.capacity - self.used)

    def take(self, n: int) -> None:
        if n:
            self.used += n
            self._changed()

    def give(self, n: int = 1) -> None:
        if n:
            self.used -= n
            if self._freed is not None:
                self._freed.set()
            self._changed()

    async def wait_free(self) -> int:
        """Wait until at least one slot is free; return how many are."""
        while self.free <= 0:
            if self._freed is None:
                self._freed = asyncio.Event()
            self._freed.clear()
            await self._freed.wait()
        return self.free

    def _changed(self) -> None:
        if self._on_change is not None:
            self._on_change(self.used)

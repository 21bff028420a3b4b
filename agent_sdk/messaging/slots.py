"""Handler slots: how many entries an agent may hold at once (``max_concurrency``).

Readers reserve slots *before* they read (``XREADGROUP COUNT`` = the slots they reserved) and
hand back what they did not use, so an agent never holds more entries than it can work on and
the ``load`` it reports is real.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

__all__ = ["Slots"]


class Slots:
    """A counter of reserved slots with a wait for "at least one free"."""

    def __init__(self, capacity: int, on_change: Callable[[int], None] | None = None) -> None:
        if capacity < 1:
            raise ValueError(f"max_concurrency must be at least 1, got {capacity}")
        self.capacity = capacity
        self.used = 0
        self.reserved = 0
        self._on_change = on_change
        self._freed: asyncio.Event | None = None

    @property
    def free(self) -> int:
        return max(0, self.capacity - self.used)

    @property
    def load(self) -> int:
        """Work in progress: slots used by handlers (reservations of readers do not count)."""
        return self.used - self.reserved

    def take(self, n: int) -> None:
        """Use ``n`` slots for work that starts now."""
        if n:
            self.used += n
            self._changed()

    def give(self, n: int = 1) -> None:
        """Hand back ``n`` slots of finished work."""
        if n:
            self.used -= n
            self._freed_now()
            self._changed()

    def reserve(self, n: int) -> None:
        """Reserve ``n`` slots for a read about to happen (not load yet)."""
        self.used += n
        self.reserved += n

    def settle(self, reserved: int, used: int) -> None:
        """A read that reserved ``reserved`` slots got ``used`` entries: those become work."""
        self.reserved -= reserved
        self.used -= reserved - used
        if reserved > used:
            self._freed_now()
        if used:
            self._changed()

    def _freed_now(self) -> None:
        if self._freed is not None:
            self._freed.set()

    async def wait_free(self, timeout: float | None = None) -> int:
        """Wait until at least one slot is free (at most ``timeout`` seconds); return how many
        are (0 after a timeout)."""
        if self.free > 0:
            return self.free
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                while self.free <= 0:
                    if self._freed is None:
                        self._freed = asyncio.Event()
                    self._freed.clear()
                    await self._freed.wait()
        return self.free

    def _changed(self) -> None:
        if self._on_change is not None:
            self._on_change(self.used - self.reserved)

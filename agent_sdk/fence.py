"""The fence: whether an agent instance may act under its name right now.

The registry is the authority on who holds a name, but a process cannot ask it before every
message. Instead each instance keeps a **lease on its own clock**: the registry's deadline for
it is the *entry time* of its last heartbeat plus the TTL, and that entry was written after the
heartbeat was sent, so ``last heartbeat sent + TTL`` (monotonic clock) never ends after the
registry's deadline. While the lease runs nobody else can hold the name; once it has lapsed
(the process was frozen, its loop blocked, Redis unreachable) the instance may have been
expired and replaced, so it handles nothing until a coordinator has accepted its announcement
again. A ``name_taken`` answer to that announcement, or a ``reannounce`` saying another instance
holds the name, means the name is **lost**: the instance never serves it again
(docs/PROTOCOL.md, "Fencing").

``epoch`` is the registration's fencing token (``AgentRecord.epoch``): pass it along with writes
to systems outside the bus so they can refuse a writer whose epoch is older than one they saw.
"""

from __future__ import annotations

import asyncio
import time

from schemas.errors import NameLost

__all__ = ["Fence"]


class Fence:
    """The lease of one registered instance. Renewed by its membership, read by its consumer."""

    __slots__ = ("_renewed", "_until", "epoch", "lost", "ttl")

    def __init__(self, ttl: float) -> None:
        self.ttl = ttl
        self._until = 0.0  # monotonic seconds; 0: not registered yet
        self._renewed: asyncio.Event | None = None
        #: The registration's epoch (``None`` before the first accepted announcement).
        self.epoch: int | None = None
        #: Why the name was lost (``None`` while it is held).
        self.lost: NameLost | None = None

    @property
    def valid(self) -> bool:
        """Whether the instance may handle messages now."""
        return self.lost is None and time.monotonic() < self._until

    @property
    def remaining(self) -> float:
        """Seconds the lease still runs (0 when lapsed or lost)."""
        if self.lost is not None:
            return 0.0
        return max(0.0, self._until - time.monotonic())

    def renew(self, sent_at: float, epoch: int | None = None) -> None:
        """A heartbeat (or an announcement that was accepted) sent at ``sent_at``
        (``time.monotonic()``) reached Redis."""
        if self.lost is not None:
            return
        if epoch is not None:
            self.epoch = epoch
        until = sent_at + self.ttl
        if until > self._until:
            self._until = until
            if self._renewed is not None and until > time.monotonic():
                self._renewed.set()

    def lapse(self) -> None:
        """Treat the lease as lapsed now (the registry no longer holds the instance)."""
        self._until = 0.0

    def lose(self, error: NameLost) -> None:
        """The name is lost for good: handle nothing more."""
        if self.lost is None:
            self.lost = error
        self._until = 0.0
        if self._renewed is not None:
            self._renewed.set()  # waiters look again and see the loss

    async def wait_valid(self) -> bool:
        """Return once the lease runs (True), or at once if the name is lost (False)."""
        while not self.valid:
            if self.lost is not None:
                return False
            if self._renewed is None:
                self._renewed = asyncio.Event()
            self._renewed.clear()
            await self._renewed.wait()
        return True

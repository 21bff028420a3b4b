"""One hosted plugin version (a **unit**): its workers, name slots and restart bookkeeping.

A unit is one plugin directory: the plugin's name and the version its manifest gives. Several
units may share a name while their versions differ (versions side by side). Agent names are
``<name>.<slot><replica>``: each unit of a name owns a **pair** of slot letters (``a``/``b`` for
the first, ``c``/``d`` for the second, ...) and alternates between its two at each start, so a
new version always registers beside the running one, a crashed worker's names (live until their
TTL runs out) are never reused at once, and two versions never share a name.
"""

from __future__ import annotations

import asyncio
import string
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from coordinator.plugins.workers import Worker
from schemas.plugin import PluginManifest

__all__ = ["MAX_UNITS_PER_NAME", "Unit", "free_pair", "replica_names"]

_PAIRS = [string.ascii_lowercase[i : i + 2] for i in range(0, 26, 2)]
#: Versions of one plugin that may run side by side (one slot pair each).
MAX_UNITS_PER_NAME = len(_PAIRS)


def free_pair(units: Iterable[Unit], name: str) -> str | None:
    """The first slot pair no unit called ``name`` holds, or ``None`` when all are taken."""
    taken = {u.pair for u in units if u.name == name}
    return next((p for p in _PAIRS if p not in taken), None)


def replica_names(name: str, slot: str, replicas: Iterable[int]) -> list[str]:
    return [f"{name}.{slot}{i}" for i in replicas]


@dataclass(eq=False)
class Unit:
    name: str
    source: Path
    manifest: PluginManifest
    pair: str
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    #: The worker running ``replicas.min`` agents (None while failed or stopped).
    current: Worker | None = None
    #: Workers of one agent each, added by the scaler up to ``replicas.max`` (same version).
    extra: list[Worker] = field(default_factory=list)
    #: The version before the last reload (its snapshot): what a crash in probation rolls back to.
    previous: tuple[PluginManifest, Path] | None = None
    #: The slot of the last worker that started: the next start takes the other of the pair.
    slot: str = ""
    restarts: int = 0
    monitors: set[asyncio.Task[None]] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.slot = self.slot or self.pair[1]  # the first start takes pair[0]

    @property
    def version(self) -> str:
        return self.manifest.version

    @property
    def label(self) -> str:
        return f"{self.name} {self.version}"

    def next_slot(self) -> str:
        return self.pair[0] if self.slot == self.pair[1] else self.pair[1]

    @property
    def workers(self) -> list[Worker]:
        return ([self.current] if self.current is not None else []) + self.extra

    @property
    def agents(self) -> list[str]:
        return [a for w in self.workers for a in w.agents]

    @property
    def replicas(self) -> int:
        return len(self.agents)

    def free_replica(self) -> int:
        """The lowest replica number no agent of the running slot uses."""
        used = {a.rsplit(".", 1)[-1] for a in self.agents}
        return next(i for i in range(len(used) + 1) if f"{self.slot}{i}" not in used)

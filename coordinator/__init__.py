"""agentbus coordinator: the daemon that owns the registry.

``Coordinator`` (an async context manager) consumes the control stream, keeps the registry and
its change feed, and expires agents that stop heartbeating. ``python -m coordinator`` runs one.
"""

from coordinator.service import Coordinator
from coordinator.settings import CoordinatorSettings

__all__ = ["Coordinator", "CoordinatorSettings"]

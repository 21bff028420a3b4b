"""Routing by version: which member of a role a message for a SemVer range (or for the role's
default version) goes to.

Several versions of an agent may serve one role side by side (docs/PLUGINS.md, "Versions side
by side"). A send or request with ``version="^2"`` is routed here, in the sender:

1. the role's live members are read with discovery (one ``EVALSHA``; statuses ``ready`` and
   ``busy``), and those whose card version is in the range are kept;
2. the **newest** version among them wins (a migration to ``2.1.0`` takes the ``^2`` traffic
   as soon as it serves), and among its members the least loaded (``load / max_concurrency``,
   ties at random);
3. the message is sent **to that member's inbox** (``send.lua`` in mode ``record``: gone since
   step 1 means ``AgentNotFound``, and the router tries again, at most ``ATTEMPTS`` times).

A send without ``version`` to a role whose default version is set (``<ns>:role:{<role>}:default``)
learns it from ``send.lua`` in the same round trip as an ordinary role send, and is routed as for
the exact range ``==<default>``; with no live member of the default version it goes to the role
queue (any member), as when no default is set.
"""

from __future__ import annotations

import random

from agent_sdk.discovery import Discovery
from schemas.agent import AgentRecord, AgentStatus
from schemas.errors import InvalidInput, NoResponders
from schemas.semver import Version, VersionRange, parse_range

__all__ = ["ATTEMPTS", "VersionRouter", "check_range"]

#: Picks tried for one message when the picked member leaves before the send lands.
ATTEMPTS = 3
_SERVING = (AgentStatus.READY, AgentStatus.BUSY)


def check_range(version: str) -> VersionRange:
    """Parse a SemVer range (``^2``, ``>=1.4 <3``, ``1.x || 2.x``); ``InvalidInput`` if bad."""
    try:
        return parse_range(version)
    except ValueError as e:
        raise InvalidInput(str(e)) from None


class VersionRouter:
    """Picks members of a role by version for one sender (``Sender.deliver``)."""

    def __init__(self, discovery: Discovery, rng: random.Random | None = None) -> None:
        self.discovery = discovery
        self._rng = rng or random.Random()

    async def members(self, role: str, version: str) -> list[AgentRecord]:
        """Live serving members of ``role`` whose version is in the range ``version``."""
        check_range(version)
        return await self.discovery.discover(role=role, version=version, status=_SERVING)

    async def pick(self, role: str, version: str, *, exclude: frozenset[str] = frozenset()) -> str:
        """The name of the member a message for ``role`` at ``version`` goes to (see module
        docstring); ``NoResponders`` when no live member's version is in the range."""
        found = [r for r in await self.members(role, version) if r.name not in exclude]
        if not found:
            raise await self.no_member(role, version)
        newest = max(_version_of(r.version) for r in found)
        best = [r for r in found if _version_of(r.version) == newest]
        low = min(r.load_ratio for r in best)
        return self._rng.choice([r for r in best if r.load_ratio == low]).name

    async def no_member(self, role: str, version: str) -> NoResponders:
        """The error for a range no live member of ``role`` matches (naming the live versions)."""
        live = await self.discovery.discover(role=role, status=_SERVING)
        versions = sorted({r.version for r in live}, key=_version_of)
        shown = ", ".join(versions) if versions else "none"
        ns = self.discovery.settings.namespace
        return NoResponders(
            f"no live member of role {role!r} has a version in {version!r} in namespace "
            f"{ns!r} (live versions: {shown})",
            details={"role": role, "version": version, "live_versions": versions},
        )


def _version_of(text: str) -> Version:
    try:
        return Version.parse(text)
    except ValueError:
        return Version(0, 0, 0)

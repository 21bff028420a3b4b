"""Coordinator settings: the shared ``Settings`` plus the daemon's own knobs.

Every option has an ``AGENTBUS_*`` environment variable (``AGENTBUS_SWEEP_INTERVAL=0.05``).
The inherited ``ttl`` is the fleet's TTL: the sweeper's grace period after a stall.
"""

from __future__ import annotations

import os
import re
import socket

from pydantic import Field, field_validator

from agent_sdk.settings import Settings

__all__ = ["CoordinatorSettings", "default_coordinator_id"]

_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@/-]{0,127}$")


def default_coordinator_id() -> str:
    """``<hostname>-<pid>``, with characters a key cannot hold replaced by ``-``."""
    host = re.sub(r"[^A-Za-z0-9._-]", "-", socket.gethostname()) or "host"
    return f"{host}-{os.getpid()}"


class CoordinatorSettings(Settings):
    """Settings of one coordinator process."""

    coordinator_id: str = Field(
        default_factory=default_coordinator_id,
        description="Consumer name in the control group and health key suffix.",
    )
    sweep_interval: float = Field(default=0.1, gt=0, le=60, description="Seconds between sweeps.")
    stall_threshold: float = Field(
        default=1.0, gt=0, description="No sweep for this long means a stall: grace follows."
    )
    batch_size: int = Field(default=500, ge=1, le=10_000, description="Control entries per read.")
    read_block: float = Field(default=1.0, gt=0, le=60, description="XREADGROUP BLOCK seconds.")
    claim_idle: float = Field(
        default=0.5,
        gt=0,
        description="Claim control entries pending this long from dead peers (no health key) "
        "or left stranded by our own failed batches.",
    )
    claim_live_idle: float = Field(
        default=30.0,
        gt=0,
        description="Claim control entries a live peer (health key present) has held this long: "
        "its control loop is stuck; a merely slow batch is never taken from a live peer.",
    )
    health_interval: float = Field(
        default=0.25,
        gt=0,
        description="Health key refresh period; the key lives 3 x this, so peers take over a "
        "stopped or frozen coordinator's control entries about 3 x this + claim_idle after it "
        'stopped (docs/PROTOCOL.md, "The coordinators").',
    )
    control_maxlen: int = Field(
        default=300_000,
        ge=10,
        description="Approximate control stream cap: 30 s of heartbeats of 10,000 agents "
        "(about 190 bytes each), the longest lag (or coordinator outage) after which unread "
        "entries start to be trimmed.",
    )
    control_lag_max: int = Field(
        default=10_000,
        ge=1,
        description="`agentbus coordinator check` fails when more control entries than this "
        "wait unread (a flood, or coordinators too slow for the fleet).",
    )
    events_maxlen: int = Field(default=100_000, ge=10, description="Approximate change-feed cap.")
    drain_timeout: float = Field(default=5.0, ge=0, description="Seconds to drain on stop.")
    reply_ttl: float = Field(default=60.0, gt=0, description="PEXPIRE of reply lists we push.")
    tombstone_keep: float = Field(
        default=300.0,
        ge=10,
        description="Seconds a left or expired instance stays tombstoned; an announce older "
        'than this is refused as stale (docs/PROTOCOL.md, "Fencing").',
    )

    @field_validator("coordinator_id")
    @classmethod
    def _check_id(cls, v: str) -> str:
        if not _ID_RE.match(v):
            raise ValueError(
                f"coordinator_id {v!r} must be 1-128 letters, digits, '.', '_', '-', '@', '/'"
            )
        return v

    @property
    def sweep_ms(self) -> int:
        return max(1, round(self.sweep_interval * 1000))

    @property
    def stall_ms(self) -> int:
        return max(1, round(self.stall_threshold * 1000))

    @property
    def claim_idle_ms(self) -> int:
        return max(1, round(self.claim_idle * 1000))

    @property
    def claim_live_idle_ms(self) -> int:
        return max(1, round(self.claim_live_idle * 1000))

    @property
    def tombstone_keep_ms(self) -> int:
        return round(self.tombstone_keep * 1000)

    @property
    def reply_ttl_ms(self) -> int:
        return max(1, round(self.reply_ttl * 1000))

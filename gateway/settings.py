"""Gateway settings: the shared ``Settings`` plus the HTTP server's own knobs.

Every option has an ``AGENTBUS_*`` environment variable (``AGENTBUS_GATEWAY_PORT=9000``).
"""

from __future__ import annotations

from pydantic import Field

from agent_sdk.settings import Settings

__all__ = ["GatewaySettings"]


class GatewaySettings(Settings):
    """Settings of one gateway process."""

    gateway_host: str = Field(
        default="127.0.0.1",
        description="Address to listen on. Without any token issued the gateway listens on "
        "127.0.0.1 only, whatever this says.",
    )
    gateway_port: int = Field(default=8080, ge=0, le=65535, description="Port (0: any free).")
    gateway_client_queue: int = Field(
        default=1000,
        ge=1,
        le=1_000_000,
        description="Events buffered per stream client; a client this far behind is cut off.",
    )
    gateway_keepalive: float = Field(
        default=15.0, gt=0, le=3600, description="Seconds between keep-alive events on streams."
    )
    gateway_max_body_bytes: int = Field(
        default=1024 * 1024 + 64 * 1024,
        ge=1024,
        description="Largest request body accepted (413 beyond).",
    )
    gateway_max_sessions: int = Field(
        default=256,
        ge=1,
        le=100_000,
        description="Sessions followed at once (one shared Redis read each); 503 beyond.",
    )
    gateway_max_request_timeout: float = Field(
        default=60.0, gt=0, description="Largest request timeout a caller may ask for, seconds."
    )

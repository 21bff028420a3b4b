"""agentbus gateway: the registry, messaging and live streams over HTTP, Prometheus metrics and
a dashboard (docs/GATEWAY.md). ``gateway.app.create_app`` builds the ASGI app; ``agentbus
gateway`` serves it. This package imports no web framework itself, so the token store
(``gateway.tokens``) works without the ``gateway`` extra's servers."""

from gateway.settings import GatewaySettings
from gateway.tokens import Principal, Role, TokenStore

__all__ = ["GatewaySettings", "Principal", "Role", "TokenStore"]

"""agentbus coordinator: the daemon that owns the registry."""

__all__: list[str] = []

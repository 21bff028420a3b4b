"""agentbus SDK: embed in every agent process."""

from agent_sdk.settings import Settings

__all__ = ["Settings"]

"""agentbus SDK: embed in every agent process.

``Agent`` registers, heartbeats and leaves; ``Bus`` is a connection for clients (discovery and
selection); ``Settings`` configures both (``AGENTBUS_*`` environment variables). Every exception
derives from ``AgentbusError`` (the tree is drawn in ``schemas.errors``).
"""

from agent_sdk.agent import Agent, Component
from agent_sdk.bus import Bus
from agent_sdk.messaging import GatherResult, Message, Subscription
from agent_sdk.settings import Settings
from schemas.agent import AgentRecord, AgentStatus
from schemas.envelope import Envelope
from schemas.errors import (
    AgentbusError,
    AgentNotFound,
    ConfigurationError,
    ConnectionFailed,
    ErrorInfo,
    InvalidInput,
    MessagingError,
    NameTaken,
    NoCoordinator,
    NoResponders,
    PayloadTooLarge,
    ProtocolError,
    Refused,
    RegistrationError,
    RemoteError,
    RequestTimeout,
)

__all__ = [
    "Agent",
    "AgentNotFound",
    "AgentRecord",
    "AgentStatus",
    "AgentbusError",
    "Bus",
    "Component",
    "ConfigurationError",
    "ConnectionFailed",
    "Envelope",
    "ErrorInfo",
    "GatherResult",
    "InvalidInput",
    "Message",
    "MessagingError",
    "NameTaken",
    "NoCoordinator",
    "NoResponders",
    "PayloadTooLarge",
    "ProtocolError",
    "Refused",
    "RegistrationError",
    "RemoteError",
    "RequestTimeout",
    "Settings",
    "Subscription",
]

"""agentbus SDK: embed in every agent process.

``Agent`` registers, heartbeats and leaves; ``Bus`` is a connection for clients (discovery and
selection); ``Settings`` configures both (``AGENTBUS_*`` environment variables). Every exception
derives from ``AgentbusError`` (the tree is drawn in ``schemas.errors``).
"""

from agent_sdk.activity import Activity
from agent_sdk.agent import Agent, Component
from agent_sdk.bus import Bus
from agent_sdk.host import Host
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
    EventsLost,
    InvalidInput,
    MessagingError,
    NameLost,
    NameTaken,
    NoCoordinator,
    NoResponders,
    PayloadTooLarge,
    PluginError,
    ProtocolError,
    Refused,
    RegistrationError,
    RemoteError,
    RequestTimeout,
)
from schemas.events import ActivityEvent, ActivityType, RegistryEvent, RegistryEventType

__all__ = [
    "Activity",
    "ActivityEvent",
    "ActivityType",
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
    "EventsLost",
    "GatherResult",
    "Host",
    "InvalidInput",
    "Message",
    "MessagingError",
    "NameLost",
    "NameTaken",
    "NoCoordinator",
    "NoResponders",
    "PayloadTooLarge",
    "PluginError",
    "ProtocolError",
    "Refused",
    "RegistrationError",
    "RegistryEvent",
    "RegistryEventType",
    "RemoteError",
    "RequestTimeout",
    "Settings",
    "Subscription",
]

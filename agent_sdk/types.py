"""The records and events an application receives or annotates with.

======================  ==========================================================================
``AgentCard``           what an agent says about itself (name, role, capabilities, tags, version)
``AgentRecord``         a card as the registry holds it (``discover``, ``select``, ``get``)
``AgentStatus``         ``ready``, ``busy``, ``draining``... (``agent.set_status``, discovery)
``Envelope``            the versioned wire message (``Message.envelope``)
``Message``             one received message, the optional second parameter of a handler
``GatherResult``        what ``request_many`` gathered (replies, errors, who did not answer)
``Subscription``        what ``subscribe`` returns (``async with``, ``get``, ``async for``)
``RegistryEvent``       one change of the registry (``bus.watch()``), of a ``RegistryEventType``
``ExpiryReason``        why a record went (``RegistryEvent.reason``)
``ActivityEvent``       what an agent did for a session (``bus.watch_session()``), of an
                        ``ActivityType``
``DeadLetter``          one entry of the dead-letter stream
======================  ==========================================================================

The wire shapes are defined in ``schemas`` (the contract, docs/PROTOCOL.md) and the received
forms in ``agent_sdk.messaging``; this module is where applications import them from.
"""

from agent_sdk.messaging.deadletter import DeadLetter
from agent_sdk.messaging.handlers import Message
from agent_sdk.messaging.requests import GatherResult
from agent_sdk.messaging.topics import Subscription
from schemas.agent import AgentCard, AgentRecord, AgentStatus
from schemas.envelope import Envelope
from schemas.events import (
    ActivityEvent,
    ActivityType,
    ExpiryReason,
    RegistryEvent,
    RegistryEventType,
)

__all__ = [
    "ActivityEvent",
    "ActivityType",
    "AgentCard",
    "AgentRecord",
    "AgentStatus",
    "DeadLetter",
    "Envelope",
    "ExpiryReason",
    "GatherResult",
    "Message",
    "RegistryEvent",
    "RegistryEventType",
    "Subscription",
]

"""The data plane: handlers, send, role queues, request-reply, scatter-gather, broadcast,
topics and dead letters. ``Messaging`` bundles them; ``Agent`` and ``Bus`` delegate to it.
"""

from agent_sdk.messaging.deadletter import DeadLetter, list_dead_letters, replay
from agent_sdk.messaging.handlers import HandlerRegistry, Message
from agent_sdk.messaging.requests import GatherResult
from agent_sdk.messaging.service import Messaging
from agent_sdk.messaging.topics import Subscription

__all__ = [
    "DeadLetter",
    "GatherResult",
    "HandlerRegistry",
    "Message",
    "Messaging",
    "Subscription",
    "list_dead_letters",
    "replay",
]

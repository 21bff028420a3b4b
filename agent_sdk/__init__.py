"""agentbus SDK: embed in every agent process.

The entry points::

    Agent       one registered agent: handlers (``@agent.on``), send, request, discover...
    Host        many agents in one process, sharing its connections (``host.agent(...)``)
    Bus         a client: the same verbs and discovery, without registering
    Settings    the typed configuration (every option has an ``AGENTBUS_*`` environment variable)
    Activity    what ``agent.activity(session)`` returns: report work for a session
    Component   the protocol of what an agent runs while registered (``add_component``)

Two modules hold the rest: ``agent_sdk.errors`` (every exception, drawn as a tree, and
``ErrorInfo``) and ``agent_sdk.types`` (records and events: ``AgentRecord``, ``Message``,
``RegistryEvent``...).

Five exceptions are here too, the ones nearly every program catches: ``AgentbusError`` (the
root: anything agentbus raises), ``NameTaken`` (starting an agent whose name another live
instance holds), and the three ways a request fails: ``NoResponders`` (nobody alive can answer),
``RequestTimeout`` (no answer in time) and ``RemoteError`` (the handler answered with an error).
The others are rarer or signal a setup problem to fix, not to handle (``NoCoordinator``,
``ConfigurationError``...): import them from ``agent_sdk.errors``.
"""

from agent_sdk.activity import Activity
from agent_sdk.agent import Agent, Component
from agent_sdk.bus import Bus
from agent_sdk.host import Host
from agent_sdk.settings import Settings
from schemas.errors import AgentbusError, NameTaken, NoResponders, RemoteError, RequestTimeout

__all__ = [
    "Activity",
    "Agent",
    "AgentbusError",
    "Bus",
    "Component",
    "Host",
    "NameTaken",
    "NoResponders",
    "RemoteError",
    "RequestTimeout",
    "Settings",
]

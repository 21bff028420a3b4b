"""Every exception agentbus raises at a caller, and the error record that travels on the wire.

One root, ``AgentbusError``; ``except AgentbusError`` catches anything agentbus raises::

    AgentbusError
    ├── ConfigurationError        bad settings (URL, intervals, namespace)
    ├── ConnectionFailed          Redis unreachable after retries (wraps the redis-py error)
    ├── AccessDenied              Redis refused the credential or the command (never retried)
    │   ├── AuthFailed            no password, a wrong one, or an unknown user (code ``auth``)
    │   └── PermissionDenied      the ACL user may not do that (code ``permission``)
    ├── InvalidInput              a value was refused before it left the process
    │   ├── PayloadTooLarge       the encoded payload exceeds ``max_payload_bytes``
    │   └── PluginError           a plugin cannot be loaded (manifest, entry point, dependency)
    ├── ProtocolError             bytes on the wire that do not decode to a known version
    ├── EventsLost                a change feed / activity stream was trimmed past a resume point
    ├── RegistrationError         the agent could not join the registry
    │   ├── NoCoordinator         no coordinator answered the announcement in time
    │   ├── NameTaken             another live instance holds the name
    │   ├── NameLost              this instance lost its name to another (it must stop serving)
    │   └── Refused               the coordinator refused the announcement (reason in ``info``)
    └── MessagingError            a message could not be delivered or answered
        ├── AgentNotFound         the target agent is not alive
        ├── NoResponders          nobody alive can answer (empty role, dead agent)
        ├── RequestTimeout        no reply before the deadline
        ├── InboxFull             the receiver's cap is reached (acl mode: backpressure)
        └── RemoteError           the handler answered with an error (code, description, details)

Each exception carries ``info: ErrorInfo`` (``code``, ``description``, ``details``): the same
object that crosses the wire, so an error raised in one process is re-raised unchanged in
another. ``ErrorCode`` lists the stable codes. The classes are defined in ``schemas.errors``
(the wire contract); this module is where applications import them from.
"""

from schemas.errors import (
    AccessDenied,
    AgentbusError,
    AgentNotFound,
    AuthFailed,
    ConfigurationError,
    ConnectionFailed,
    ErrorCode,
    ErrorInfo,
    EventsLost,
    InboxFull,
    InvalidInput,
    MessagingError,
    NameLost,
    NameTaken,
    NoCoordinator,
    NoResponders,
    PayloadTooLarge,
    PermissionDenied,
    PluginError,
    ProtocolError,
    Refused,
    RegistrationError,
    RemoteError,
    RequestTimeout,
)

__all__ = [
    "AccessDenied",
    "AgentNotFound",
    "AgentbusError",
    "AuthFailed",
    "ConfigurationError",
    "ConnectionFailed",
    "ErrorCode",
    "ErrorInfo",
    "EventsLost",
    "InboxFull",
    "InvalidInput",
    "MessagingError",
    "NameLost",
    "NameTaken",
    "NoCoordinator",
    "NoResponders",
    "PayloadTooLarge",
    "PermissionDenied",
    "PluginError",
    "ProtocolError",
    "Refused",
    "RegistrationError",
    "RemoteError",
    "RequestTimeout",
]

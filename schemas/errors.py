"""Errors: as data on the wire (``ErrorInfo``) and as exceptions in Python (one root).

Exception tree (every exception agentbus raises derives from ``AgentbusError``)::

    AgentbusError
    ├── ConfigurationError        bad settings (URL, intervals, namespace)
    ├── ConnectionFailed          Redis unreachable after retries (wraps the redis-py error)
    ├── AccessDenied              Redis refused the credential or the command (never retried)
    │   ├── AuthFailed            no password, a wrong one, or an unknown user (code ``auth``)
    │   └── PermissionDenied      the ACL user may not run that command on that key (``permission``)
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
        ├── InboxFull             the receiver's inbox or queue is at its cap (backpressure)
        └── RemoteError           the handler answered with an error (code, description, details)

Each exception carries ``info: ErrorInfo``, the same object that travels on the wire, so an error
raised in one process can be re-raised unchanged in another. ``DeadLetterEntry`` is the other
error record on the wire: an entry of the dead-letter stream.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic.json_schema import SkipJsonSchema

__all__ = [
    "AccessDenied",
    "AgentNotFound",
    "AgentbusError",
    "AuthFailed",
    "ConfigurationError",
    "ConnectionFailed",
    "DeadLetterEntry",
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
    "error_from_info",
    "validation_summary",
]


class ErrorCode(StrEnum):
    """Stable error codes. New codes may be added; existing ones never change meaning."""

    BAD_REQUEST = "bad_request"  # payload failed validation (details: pydantic errors)
    UNKNOWN_TYPE = "unknown_type"  # no handler for the message type
    HANDLER_ERROR = "handler_error"  # the handler raised (details: exception type)
    DEADLINE_EXCEEDED = "deadline_exceeded"  # the request's deadline passed before handling
    NO_RESPONDERS = "no_responders"
    NOT_FOUND = "not_found"
    TIMEOUT = "timeout"
    TOO_LARGE = "too_large"
    INVALID_NAME = "invalid_name"
    INVALID_VERSION = "invalid_version"
    INVALID_RECORD = "invalid_record"
    NAME_TAKEN = "name_taken"
    NAME_LOST = "name_lost"  # another instance registered the name this instance held
    STALE = "stale"  # a control entry applied after its instance left or expired: not applied
    UNKNOWN_AGENT = "unknown_agent"  # heartbeat from an instance the registry does not hold
    UNSUPPORTED_VERSION = "unsupported_version"  # envelope version this side cannot read
    UNDECODABLE = "undecodable"  # bytes that are not a valid envelope
    NO_COORDINATOR = "no_coordinator"
    CONNECTION = "connection"
    CONFIGURATION = "configuration"
    INTERNAL = "internal"
    EVENTS_LOST = "events_lost"  # a stream was trimmed past the reader's resume point
    MESSAGES_LOST = "messages_lost"  # inbox/queue entries trimmed before they were read
    INVALID_PLUGIN = "invalid_plugin"  # a plugin cannot be loaded (details: file, field, reason)
    AUTH = "auth"  # Redis refused the credential (missing or wrong password, unknown user)
    PERMISSION = "permission"  # the Redis ACL user may not run that command on that key
    INBOX_FULL = "inbox_full"  # the receiver's cap is reached: retry later (backpressure)
    UNAUTHENTICATED = "unauthenticated"  # acl mode: the claimed sender is not proved
    FORBIDDEN = "forbidden"  # acl mode: the policy does not let this identity do that
    QUOTA = "quota"  # acl mode: the identity is over one of its quotas


class ErrorInfo(BaseModel):
    """An error as data: what crosses the wire in replies, refusals and dead letters."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    code: str = Field(description="A stable machine-readable code, usually an ErrorCode value.")
    description: str = Field(description="One sentence for a person.")
    details: dict[str, Any] = Field(default_factory=dict, description="Structured context.")


#: Prefix of the dead-letter fields that carry the original entry's fields.
_ORIG_PREFIX = "orig."


class DeadLetterEntry(BaseModel):
    """The flat string fields of one entry of the dead-letter stream ``<ns>:deadletter``.

    Besides the fields below, every field of the original entry is kept, unchanged, as
    ``orig.<field>`` (a reply-list entry that did not decode is kept whole as ``orig.data``).
    """

    model_config = ConfigDict(
        frozen=True,
        extra="allow",
        json_schema_extra={
            "patternProperties": {
                r"^orig\.": {"type": "string", "description": "An original field, unchanged."}
            },
            "additionalProperties": False,
        },
    )

    reason: str = Field(description="One sentence for a person: why it could not be handled.")
    code: str = Field(description="An ErrorCode value, or max_deliveries.")
    source: str = Field(description="The key the entry came from (stream or reply list).")
    source_id: str = Field(description="Its stream entry id there; empty for a reply list.")
    failed_at: datetime = Field(description="When it was dead-lettered (ISO-8601 UTC).")
    coordinator: str | SkipJsonSchema[None] = Field(
        default=None, description="Only when a coordinator dead-lettered a control entry: its id."
    )

    @model_validator(mode="after")
    def _only_original_fields(self) -> DeadLetterEntry:
        for key, value in (self.model_extra or {}).items():
            if not key.startswith(_ORIG_PREFIX) or not isinstance(value, str):
                raise ValueError(f"unexpected dead-letter field {key!r}: only orig.<field> strings")
        return self

    @property
    def original(self) -> dict[str, str]:
        """The original entry's fields."""
        extra = self.model_extra or {}
        return {k[len(_ORIG_PREFIX) :]: v for k, v in extra.items()}


class AgentbusError(Exception):
    """Root of every exception agentbus raises."""

    default_code: ClassVar[str] = ErrorCode.INTERNAL

    def __init__(
        self,
        description: str,
        *,
        code: str | None = None,
        details: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(description)
        self.info = ErrorInfo(
            code=code or self.default_code, description=description, details=details or {}
        )

    @property
    def code(self) -> str:
        return self.info.code

    @property
    def description(self) -> str:
        return self.info.description

    @property
    def details(self) -> dict[str, Any]:
        return self.info.details


class ConfigurationError(AgentbusError):
    default_code = ErrorCode.CONFIGURATION


class ConnectionFailed(AgentbusError):
    default_code = ErrorCode.CONNECTION


class AccessDenied(AgentbusError):
    """Redis refused who we are or what we asked: retrying cannot help, so nothing retries it."""

    default_code = ErrorCode.PERMISSION


class AuthFailed(AccessDenied):
    default_code = ErrorCode.AUTH


class PermissionDenied(AccessDenied):
    default_code = ErrorCode.PERMISSION


class InvalidInput(AgentbusError):
    default_code = ErrorCode.BAD_REQUEST


class PayloadTooLarge(InvalidInput):
    default_code = ErrorCode.TOO_LARGE


class PluginError(InvalidInput):
    """A plugin cannot be loaded. ``details`` names the ``plugin`` directory, the ``file`` and
    ``field`` at fault (when known) and the ``reason``."""

    default_code = ErrorCode.INVALID_PLUGIN


class ProtocolError(AgentbusError):
    default_code = ErrorCode.UNDECODABLE


class EventsLost(AgentbusError):
    """A stream was trimmed past the resume point: the events just after it are gone."""

    default_code = ErrorCode.EVENTS_LOST


class RegistrationError(AgentbusError):
    default_code = ErrorCode.INVALID_RECORD


class NoCoordinator(RegistrationError):
    default_code = ErrorCode.NO_COORDINATOR


class NameTaken(RegistrationError):
    default_code = ErrorCode.NAME_TAKEN


class NameLost(RegistrationError):
    """This instance held the name, was expired (stalled, frozen, cut off), and another instance
    registered it meanwhile. The instance has stopped consuming; it must not serve the name
    again (docs/PROTOCOL.md, "Fencing")."""

    default_code = ErrorCode.NAME_LOST


class Refused(RegistrationError):
    pass


class MessagingError(AgentbusError):
    pass


class AgentNotFound(MessagingError):
    default_code = ErrorCode.NOT_FOUND


class NoResponders(MessagingError):
    default_code = ErrorCode.NO_RESPONDERS


class RequestTimeout(MessagingError):
    default_code = ErrorCode.TIMEOUT


class InboxFull(MessagingError):
    """The receiver's inbox (or role queue) holds as many unread messages as its owner allows:
    nothing was queued; try again later (acl mode, docs/SECURITY.md)."""

    default_code = ErrorCode.INBOX_FULL


class RemoteError(MessagingError):
    """The remote handler answered with an error; ``code``/``description``/``details`` are its."""

    default_code = ErrorCode.HANDLER_ERROR

    def __str__(self) -> str:
        return f"[{self.code}] {self.description}"


_REGISTRATION_CODES: dict[str, type[RegistrationError]] = {
    ErrorCode.NAME_TAKEN: NameTaken,
    ErrorCode.NAME_LOST: NameLost,
}


def error_from_info(info: ErrorInfo, *, registration: bool = False) -> AgentbusError:
    """Turn wire ``ErrorInfo`` back into an exception.

    Replies to requests always become ``RemoteError`` (the remote side failed); answers to an
    announcement become the matching ``RegistrationError`` subclass.
    """
    if registration:
        cls: type[AgentbusError] = _REGISTRATION_CODES.get(info.code, Refused)
    else:
        cls = RemoteError
    return cls(info.description, code=info.code, details=dict(info.details))


def validation_summary(e: ValidationError, within: str = "") -> str:
    """Pydantic's errors as one line naming each field that failed, e.g. ``payload.text: Field
    required; payload.n: Input should be a valid integer`` (``within`` prefixes each location;
    a value that failed as a whole is named by ``within`` alone, or not at all). Input values
    are left out: they may be large, or secret."""
    parts = []
    for err in e.errors(include_url=False, include_context=False, include_input=False):
        where = ".".join(str(p) for p in (within, *err["loc"]) if p != "")
        if err["type"] == "extra_forbidden":
            msg = "unknown field (not allowed here)"
        else:
            msg = err["msg"].removeprefix("Value error, ")
        parts.append(f"{where}: {msg}" if where else msg)
    return "; ".join(parts)

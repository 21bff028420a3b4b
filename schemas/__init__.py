"""The agentbus wire contract: envelope, agent record, events, errors and Redis key names.

Pure data, no I/O. Both the SDK and the coordinator import from here; nothing here imports them.
"""

from schemas.agent import (
    MAX_RECORD_BYTES,
    AgentCard,
    AgentRecord,
    AgentStatus,
    Announce,
    ControlType,
    Heartbeat,
    Leave,
    LeaveResult,
    Reannounce,
)
from schemas.envelope import (
    PROTOCOL_VERSION,
    Envelope,
    Kind,
    decode_fields,
    decode_json,
    encode_fields,
    encode_json,
    new_id,
)
from schemas.errors import AgentbusError, DeadLetterEntry, ErrorCode, ErrorInfo
from schemas.events import ActivityEvent, ActivityType, RegistryEvent, RegistryEventType
from schemas.keys import KeySpace

__all__ = [
    "MAX_RECORD_BYTES",
    "PROTOCOL_VERSION",
    "ActivityEvent",
    "ActivityType",
    "AgentCard",
    "AgentRecord",
    "AgentStatus",
    "AgentbusError",
    "Announce",
    "ControlType",
    "DeadLetterEntry",
    "Envelope",
    "ErrorCode",
    "ErrorInfo",
    "Heartbeat",
    "KeySpace",
    "Kind",
    "Leave",
    "LeaveResult",
    "Reannounce",
    "RegistryEvent",
    "RegistryEventType",
    "decode_fields",
    "decode_json",
    "encode_fields",
    "encode_json",
    "new_id",
]

"""A2A agent cards built from registry records.

Every live bus agent is described as an A2A (Agent2Agent protocol 1.0) agent at
``/a2a/{name}/.well-known/agent-card.json``: its name, description and version come from its
record; its skills are its handled message types (the ``handles`` entry the SDK puts in the
record's metadata, and the types its usage stats have seen) and its capabilities; its one
interface is the gateway's JSON-RPC endpoint ``/a2a/{name}`` (``gateway.a2a_bridge``).
"""

from __future__ import annotations

from collections.abc import Iterable

from a2a.types.a2a_pb2 import (
    AgentCapabilities,
    AgentCard,
    AgentInterface,
    AgentProvider,
    AgentSkill,
    HTTPAuthSecurityScheme,
    SecurityRequirement,
    SecurityScheme,
    StringList,
)
from a2a.utils.constants import PROTOCOL_VERSION_1_0, TransportProtocol

from agent_sdk.usage import UNKNOWN_TYPE, TypeUsage
from schemas.agent import AgentRecord

__all__ = ["A2A_PREFIX", "MODES", "build_card", "handled_types"]

#: Where the gateway serves A2A: ``/a2a/{name}`` (JSON-RPC) and its agent card below it.
A2A_PREFIX = "/a2a"
#: What an agent takes and gives: a JSON value (a data part) or text.
MODES = ["application/json", "text/plain"]
#: The record metadata entry naming the handled message types (written by ``Agent.start``).
HANDLES = "handles"


def handled_types(record: AgentRecord, usage: Iterable[TypeUsage] = ()) -> list[str]:
    """The message types ``record``'s agent handles, as far as the registry tells: the ones it
    declared (``metadata["handles"]``), then the ones it was seen handling."""
    declared = [t for t in record.metadata.get(HANDLES, "").split(",") if t]
    seen = [u.type for u in usage if u.type != UNKNOWN_TYPE and u.invocations > u.errors]
    return list(dict.fromkeys(declared + seen))


def build_card(record: AgentRecord, types: list[str], base_url: str, *, secured: bool) -> AgentCard:
    """The A2A card of ``record``'s agent, served by the gateway at ``base_url``.

    One skill per handled message type (send it as the message's ``type`` metadata, or alone
    when the agent has one type), then one per capability (a description of what it can do,
    for discovery: tagged ``capability``). ``secured``: the gateway requires bearer tokens.
    """
    skills = [
        AgentSkill(
            id=t,
            name=t,
            description=f"Request {t!r} of {record.name} (role {record.role}): the message's "
            "data part (or its text) is the payload; the reply is the answer.",
            tags=["message-type", record.role, *record.tags],
            input_modes=MODES,
            output_modes=MODES,
        )
        for t in types
    ]
    skills += [
        AgentSkill(
            id=f"capability:{c}",
            name=c,
            description=f"{record.name} has the capability {c!r}.",
            tags=["capability", record.role],
        )
        for c in record.capabilities
        if c not in types
    ]
    card = AgentCard(
        name=record.name,
        description=record.description or f"agentbus agent {record.name} (role {record.role})",
        version=record.version,
        supported_interfaces=[
            AgentInterface(
                url=f"{base_url}{A2A_PREFIX}/{record.name}",
                protocol_binding=TransportProtocol.JSONRPC.value,
                protocol_version=PROTOCOL_VERSION_1_0,
            )
        ],
        provider=AgentProvider(organization="agentbus", url=base_url),
        capabilities=AgentCapabilities(streaming=True, push_notifications=False),
        default_input_modes=MODES,
        default_output_modes=MODES,
        skills=skills,
    )
    if secured:
        card.security_schemes["bearer"].CopyFrom(
            SecurityScheme(
                http_auth_security_scheme=HTTPAuthSecurityScheme(
                    scheme="bearer",
                    description="A token from `agentbus token issue` (operator: to send).",
                )
            )
        )
        card.security_requirements.append(
            SecurityRequirement(schemes={"bearer": StringList(list=[])})
        )
    return card

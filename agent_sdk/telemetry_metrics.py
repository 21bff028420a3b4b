"""agentbus metric instruments (OpenTelemetry API only; no-ops until an SDK is installed).

Names, units and attributes are listed in docs/OBSERVABILITY.md. Attribute mappings are cached
per message type, so recording builds no dict on the hot path. The coordinator's counters are
observable: read from its plain integer counters only when a metric reader collects.
``agent_sdk.telemetry`` re-exports every function here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from functools import lru_cache

from opentelemetry import metrics
from opentelemetry.metrics import CallbackOptions, Observation

__all__ = [
    "ATTR_COORDINATOR",
    "ATTR_ERROR_CODE",
    "ATTR_KIND",
    "ATTR_MESSAGE_TYPE",
    "ATTR_NAMESPACE",
    "ATTR_OUTCOME",
    "MAX_TYPES",
    "OTHER_TYPE",
    "forget_coordinator",
    "observe_coordinator",
    "record_dead_lettered",
    "record_failed",
    "record_handled",
    "record_received",
    "record_request_duration",
    "record_sent",
    "set_registry_size",
]

ATTR_MESSAGE_TYPE = "agentbus.message.type"
ATTR_KIND = "agentbus.message.kind"
ATTR_ERROR_CODE = "error.type"
ATTR_NAMESPACE = "agentbus.namespace"
ATTR_OUTCOME = "agentbus.outcome"
ATTR_COORDINATOR = "agentbus.coordinator.id"

# A proxy meter: its instruments become real once the application installs a MeterProvider.
_meter = metrics.get_meter("agentbus")

_sent = _meter.create_counter(
    "agentbus.messages.sent", unit="{message}", description="Messages sent, by type and kind."
)
_received = _meter.create_counter(
    "agentbus.messages.received", unit="{message}", description="Messages taken for handling."
)
_failed = _meter.create_counter(
    "agentbus.messages.failed", unit="{message}", description="Messages whose handling failed."
)
_dead_lettered = _meter.create_counter(
    "agentbus.messages.dead_lettered", unit="{message}", description="Messages dead-lettered."
)
_request_duration = _meter.create_histogram(
    "agentbus.request.duration",
    unit="s",
    description="Request to reply (or timeout/error), seen by the requester.",
)
_handler_duration = _meter.create_histogram(
    "agentbus.handler.duration", unit="s", description="Time a handler took, by type and outcome."
)
_registry_sizes: dict[str, int] = {}
_coordinators: dict[str, Callable[[], Mapping[str, int]]] = {}


def _observe_registry(_options: CallbackOptions) -> Iterable[Observation]:
    return [Observation(n, {ATTR_NAMESPACE: ns}) for ns, n in list(_registry_sizes.items())]


def _coordinator_counter(field: str) -> Callable[[CallbackOptions], Iterable[Observation]]:
    def observe(_options: CallbackOptions) -> Iterable[Observation]:
        out = []
        for cid, stats in list(_coordinators.items()):
            value = stats().get(field)
            if value is not None:
                out.append(Observation(value, {ATTR_COORDINATOR: cid}))
        return out

    return observe


_meter.create_observable_gauge(
    "agentbus.registry.size",
    callbacks=[_observe_registry],
    unit="{agent}",
    description="Live agents in the registry, as last seen by a coordinator in this process.",
)
# The coordinator counts in plain integers (no cost per heartbeat); these read them when
# (and only when) a metric reader collects.
for _name, _field, _unit, _description in (
    ("agentbus.heartbeats.processed", "heartbeats", "{heartbeat}", "Heartbeats processed."),
    ("agentbus.agents.expired", "expiries", "{agent}", "Agents expired by the sweeper."),
    ("agentbus.agents.announced", "announces", "{agent}", "Announcements accepted."),
    ("agentbus.agents.left", "leaves", "{agent}", "Agents that left (deregistered)."),
    ("agentbus.control.dead_lettered", "dead_letters", "{message}", "Bad control messages."),
):
    _meter.create_observable_counter(
        _name, callbacks=[_coordinator_counter(_field)], unit=_unit, description=_description
    )


#: Distinct message types reported before the rest are reported as ``OTHER_TYPE`` (any sender
#: can invent types; a metric backend should not get a series for each).
MAX_TYPES = 200
OTHER_TYPE = "(other)"
_types: set[str] = set()


def _bounded(message_type: str) -> str:
    if message_type in _types:
        return message_type
    if len(_types) >= MAX_TYPES:
        return OTHER_TYPE
    _types.add(message_type)
    return message_type


@lru_cache(maxsize=1024)
def _type_attrs(message_type: str, kind: str | None = None) -> Mapping[str, str]:
    # Cached and never mutated: no dict is built per message on the hot path.
    attrs = {ATTR_MESSAGE_TYPE: _bounded(message_type)}
    if kind is not None:
        attrs[ATTR_KIND] = kind
    return attrs


@lru_cache(maxsize=1024)
def _type_code_attrs(message_type: str, code: str) -> Mapping[str, str]:
    return {ATTR_MESSAGE_TYPE: _bounded(message_type), ATTR_ERROR_CODE: code}


def record_sent(message_type: str, kind: str = "send", count: int = 1) -> None:
    _sent.add(count, _type_attrs(message_type, kind))


def record_received(message_type: str) -> None:
    _received.add(1, _type_attrs(message_type))


def record_failed(message_type: str, code: str) -> None:
    _failed.add(1, _type_code_attrs(message_type, code))


def record_dead_lettered(message_type: str | None, reason: str) -> None:
    _dead_lettered.add(1, _type_code_attrs(message_type or "unknown", reason))


def record_request_duration(message_type: str, seconds: float, outcome: str = "ok") -> None:
    """``outcome``: ``ok``, or the error code (``timeout``, ``no_responders``, ...)."""
    _request_duration.record(seconds, _outcome_attrs(message_type, outcome))


def record_handled(message_type: str, seconds: float, failed: bool = False) -> None:
    """A handler finished after ``seconds`` (the shape of ``HandlerRegistry``'s observer)."""
    _handler_duration.record(seconds, _outcome_attrs(message_type, "error" if failed else "ok"))


@lru_cache(maxsize=1024)
def _outcome_attrs(message_type: str, outcome: str) -> Mapping[str, str]:
    return {ATTR_MESSAGE_TYPE: _bounded(message_type), ATTR_OUTCOME: outcome}


def observe_coordinator(coordinator_id: str, stats: Callable[[], Mapping[str, int]]) -> None:
    """Report a coordinator's cumulative counters (``heartbeats``, ``expiries``, ``announces``,
    ``leaves``, ``dead_letters``) as metrics; ``stats`` is called only when metrics are read."""
    _coordinators[coordinator_id] = stats


def forget_coordinator(coordinator_id: str) -> None:
    """Stop reporting a coordinator that stopped."""
    _coordinators.pop(coordinator_id, None)


def set_registry_size(namespace: str, size: int) -> None:
    """Remember the registry size of ``namespace``; the gauge reports it when collected."""
    _registry_sizes[namespace] = size

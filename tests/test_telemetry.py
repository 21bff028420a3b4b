"""Trace context through envelope headers, messaging spans, and metric instruments."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator

import pytest
from opentelemetry import trace
from opentelemetry.trace import SpanKind, StatusCode

from agent_sdk import telemetry
from schemas.envelope import Envelope, decode_fields, encode_fields
from tests.otel_support import Otel, otel


@pytest.fixture(name="o")
def _otel() -> Iterator[Otel]:
    with otel() as o:
        yield o


def test_producer_and_consumer_form_one_trace_through_stream_fields(o: Otel) -> None:
    headers: dict[str, str] = {}
    with telemetry.producer_span("worker-1", "summarize", message_id="m1", headers=headers):
        env = Envelope(id="m1", type="summarize", headers=headers)
    assert headers["traceparent"].startswith("00-")
    # across the wire: stream fields and back
    wire = {k: v.decode() if isinstance(v, bytes) else v for k, v in encode_fields(env).items()}
    received = decode_fields(wire, "1-0")
    with telemetry.consumer_span(
        "worker-1", received.type, headers=received.headers, message_id=received.id
    ):
        pass
    producer, consumer = o.spans.get_finished_spans()
    assert producer.name == "send worker-1"
    assert producer.kind is SpanKind.PRODUCER
    assert consumer.name == "process worker-1"
    assert consumer.kind is SpanKind.CONSUMER
    assert consumer.context.trace_id == producer.context.trace_id
    assert consumer.parent is not None
    assert consumer.parent.span_id == producer.context.span_id
    assert consumer.parent.is_remote
    attrs = dict(consumer.attributes or {})
    assert attrs["messaging.system"] == "agentbus"
    assert attrs["messaging.operation.type"] == "process"
    assert attrs["messaging.destination.name"] == "worker-1"
    assert attrs["messaging.message.id"] == "m1"
    assert attrs["agentbus.message.type"] == "summarize"
    assert dict(producer.attributes or {})["messaging.operation.type"] == "send"


def test_request_span_is_client_and_carries_the_conversation_id(o: Otel) -> None:
    headers: dict[str, str] = {}
    with telemetry.producer_span(
        "role:search", "lookup", message_id="r1", headers=headers, request=True
    ):
        pass
    with telemetry.consumer_span(
        "role:search", "lookup", headers=headers, message_id="r1", conversation_id="r1"
    ):
        pass
    request, process = o.spans.get_finished_spans()
    assert request.name == "request role:search"
    assert request.kind is SpanKind.CLIENT
    assert process.parent is not None
    assert process.parent.span_id == request.context.span_id
    assert dict(process.attributes or {})["messaging.message.conversation_id"] == "r1"


def test_inject_uses_the_current_span_and_extract_round_trips(o: Otel) -> None:
    tracer = o.tracer_provider.get_tracer("test")
    with tracer.start_as_current_span("outer") as outer:
        headers: dict[str, str] = {}
        telemetry.inject(headers)
    ctx = telemetry.extract(headers)
    remote = trace.get_current_span(ctx).get_span_context()
    assert remote.trace_id == outer.get_span_context().trace_id
    assert remote.span_id == outer.get_span_context().span_id
    assert remote.is_remote


def test_extract_without_headers_starts_a_new_trace(o: Otel) -> None:
    with telemetry.consumer_span("a", "t", headers={}):
        pass
    with telemetry.consumer_span("a", "t", headers={"traceparent": "garbage"}):
        pass
    first, second = o.spans.get_finished_spans()
    assert first.parent is None
    assert second.parent is None
    assert first.context.trace_id != second.context.trace_id


def test_an_exception_in_the_handler_marks_the_span_failed(o: Otel) -> None:
    with (
        pytest.raises(ValueError, match="boom"),
        telemetry.consumer_span("a", "t", headers={}),
    ):
        raise ValueError("boom")
    (span,) = o.spans.get_finished_spans()
    assert span.status.status_code is StatusCode.ERROR
    assert any(e.name == "exception" for e in span.events)


def test_mark_error_sets_the_code(o: Otel) -> None:
    with telemetry.consumer_span("a", "t", headers={}) as span:
        telemetry.mark_error(span, "bad_request", "payload invalid")
    (done,) = o.spans.get_finished_spans()
    assert done.status.status_code is StatusCode.ERROR
    assert dict(done.attributes or {})["error.type"] == "bad_request"


def test_counters_and_histograms_reach_the_sdk(o: Otel) -> None:
    telemetry.record_sent("ping-test", "request")
    telemetry.record_sent("ping-test", "request")
    telemetry.record_received("ping-test")
    telemetry.record_failed("ping-test", "handler_error")
    telemetry.record_handled("ping-test", 0.01, failed=True)
    telemetry.record_request_duration("ping-test", 0.02)
    telemetry.record_dead_lettered("ping-test", "max_deliveries")
    telemetry.observe_coordinator("c-test", lambda: {"heartbeats": 3, "expiries": 2})
    telemetry.set_registry_size("ns-test", 7)

    def value(name: str, **attrs: object) -> float:
        points = [v for a, v in o.metric_points(name) if attrs.items() <= a.items()]
        assert len(points) == 1, (name, o.metric_points(name))
        return points[0]

    sent = value("agentbus.messages.sent", **{"agentbus.message.type": "ping-test"})
    assert sent == 2
    assert value("agentbus.messages.received", **{"agentbus.message.type": "ping-test"}) == 1
    failed = value("agentbus.messages.failed", **{"agentbus.message.type": "ping-test"})
    assert failed == 1
    assert value("agentbus.request.duration", **{"agentbus.message.type": "ping-test"}) == 1
    assert value("agentbus.handler.duration", **{"agentbus.message.type": "ping-test"}) == 1
    dead = value("agentbus.messages.dead_lettered", **{"agentbus.message.type": "ping-test"})
    assert dead == 1
    coordinator = {"agentbus.coordinator.id": "c-test"}
    assert value("agentbus.heartbeats.processed", **coordinator) == 3
    assert value("agentbus.agents.expired", **coordinator) == 2
    telemetry.forget_coordinator("c-test")
    assert not [p for p in o.metric_points("agentbus.agents.expired") if p[0] == coordinator]
    assert value("agentbus.registry.size", **{"agentbus.namespace": "ns-test"}) == 7


_NO_SDK = """
from opentelemetry import trace
from agent_sdk import telemetry
incoming = {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}
with telemetry.consumer_span("a", "t", headers=incoming) as span:
    assert not span.is_recording()
    out = {}
    with telemetry.producer_span("b", "t", headers=out) as inner:
        assert not inner.is_recording()
telemetry.record_sent("t")
# and adds nothing to messages when no trace came in
fresh = {}
with telemetry.producer_span("c", "t", headers=fresh):
    pass
assert fresh == {}, fresh
assert not telemetry.tracing_enabled()
# the API passes the trace through a process that exports nothing
print(out["traceparent"].split("-")[1])
"""


def test_without_an_sdk_nothing_records_but_the_trace_passes_through() -> None:
    done = subprocess.run(
        [sys.executable, "-W", "error", "-c", _NO_SDK],
        capture_output=True,
        text=True,
        check=True,
    )
    assert done.stdout.strip() == "0af7651916cd43dd8448eb211c80319c"


def test_message_types_beyond_the_limit_share_one_series(
    o: Otel, monkeypatch: pytest.MonkeyPatch
) -> None:
    from agent_sdk import telemetry_metrics

    monkeypatch.setattr(telemetry_metrics, "_types", set())
    monkeypatch.setattr(telemetry_metrics, "MAX_TYPES", 2)
    telemetry_metrics._type_attrs.cache_clear()
    for t in ("cap-a", "cap-b", "cap-c", "cap-d", "cap-a"):
        telemetry.record_received(t)
    telemetry_metrics._type_attrs.cache_clear()
    seen = {
        a["agentbus.message.type"]: v
        for a, v in o.metric_points("agentbus.messages.received")
        if str(a["agentbus.message.type"]).startswith("cap-")
        or a["agentbus.message.type"] == "(other)"
    }
    assert seen == {"cap-a": 2, "cap-b": 1, "(other)": 2}

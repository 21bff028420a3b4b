"""In-memory OpenTelemetry SDK for tests.

Spans: a fresh SDK ``TracerProvider`` with an in-memory exporter per test, given to agentbus with
``telemetry.use_tracer_provider`` (and taken back afterwards), so other tests in the process
never see trace headers. Metrics: the global ``MeterProvider`` can be set only once per process,
so the first test that asks installs one with an in-memory reader; values are cumulative, so
tests use message types of their own.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from opentelemetry import metrics
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from agent_sdk import telemetry


@dataclass
class Otel:
    spans: InMemorySpanExporter
    metrics: InMemoryMetricReader
    tracer_provider: TracerProvider

    def metric_points(self, name: str) -> list[tuple[dict[str, object], float]]:
        """(attributes, value) of every data point of metric ``name`` collected now."""
        data = self.metrics.get_metrics_data()
        out: list[tuple[dict[str, object], float]] = []
        if data is None:
            return out
        for rm in data.resource_metrics:
            for sm in rm.scope_metrics:
                for m in sm.metrics:
                    if m.name != name:
                        continue
                    for p in m.data.data_points:
                        value = getattr(p, "value", None)
                        if value is None:
                            value = p.count  # type: ignore[union-attr]
                        out.append((dict(p.attributes or {}), float(value)))
        return out


_reader: InMemoryMetricReader | None = None


def _metric_reader() -> InMemoryMetricReader:
    global _reader
    if _reader is None:
        _reader = InMemoryMetricReader()
        metrics.set_meter_provider(MeterProvider(metric_readers=[_reader]))
    return _reader


@contextmanager
def otel() -> Iterator[Otel]:
    """Record agentbus spans and metrics in memory inside the block."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    telemetry.use_tracer_provider(provider)
    try:
        yield Otel(exporter, _metric_reader(), provider)
    finally:
        telemetry.use_tracer_provider(None)
        provider.shutdown()

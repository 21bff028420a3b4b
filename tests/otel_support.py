"""In-memory OpenTelemetry SDK for tests: one global provider per test process.

OpenTelemetry allows the global tracer/meter provider to be set once per process, so the first
test that asks installs an SDK provider with an in-memory span exporter and a manual metric
reader; ``otel()`` clears the spans before each use.
"""

from __future__ import annotations

from dataclasses import dataclass

from opentelemetry import metrics, trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter


@dataclass
class Otel:
    spans: InMemorySpanExporter
    metrics: InMemoryMetricReader

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


_installed: Otel | None = None


def otel() -> Otel:
    global _installed
    if _installed is None:
        exporter = InMemorySpanExporter()
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        trace.set_tracer_provider(provider)
        reader = InMemoryMetricReader()
        metrics.set_meter_provider(MeterProvider(metric_readers=[reader]))
        _installed = Otel(exporter, reader)
    _installed.spans.clear()
    return _installed

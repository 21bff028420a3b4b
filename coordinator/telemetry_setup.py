"""Turning on OpenTelemetry export for an application: the coordinator daemon, or your own.

Library code (``agent_sdk.telemetry``) only uses the OpenTelemetry API, so nothing is recorded
or exported until an application installs the SDK. This module does that, for
``agentbus coordinator --otel console|otlp`` (or ``AGENTBUS_OTEL_EXPORTER``):

* ``console``: spans and metrics printed as JSON on stdout (metrics every ``interval`` seconds);
* ``otlp``: sent to an OpenTelemetry collector, configured by the standard variables
  (``OTEL_EXPORTER_OTLP_ENDPOINT``, ``OTEL_EXPORTER_OTLP_HEADERS``, and
  ``OTEL_EXPORTER_OTLP_PROTOCOL`` = ``http/protobuf`` (default) or ``grpc``);
* ``none`` or unset: nothing is installed and nothing is exported.

The resource carries ``service.name`` (``OTEL_SERVICE_NAME`` or the name given) and
``service.instance.id``. Needs the ``otel`` extra: ``pip install 'agentbus[otel]'``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from schemas.errors import ConfigurationError

if TYPE_CHECKING:
    from opentelemetry.sdk.metrics.export import MetricExporter
    from opentelemetry.sdk.trace.export import SpanExporter

__all__ = ["ENV_VAR", "EXPORTERS", "TelemetryHandle", "configure_telemetry"]

#: The environment variable read when no exporter is passed.
ENV_VAR = "AGENTBUS_OTEL_EXPORTER"
EXPORTERS = ("none", "console", "otlp")


@dataclass
class TelemetryHandle:
    """What ``configure_telemetry`` installed; ``shutdown()`` flushes and stops it."""

    exporter: str = "none"
    providers: list[Any] = field(default_factory=list)

    @property
    def enabled(self) -> bool:
        return bool(self.providers)

    def shutdown(self) -> None:
        """Flush what is buffered and stop exporting (idempotent)."""
        providers, self.providers = self.providers, []
        for provider in providers:
            provider.shutdown()


def _exporters(kind: str) -> tuple[SpanExporter, MetricExporter]:
    if kind == "console":
        from opentelemetry.sdk.metrics.export import ConsoleMetricExporter
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        return ConsoleSpanExporter(), ConsoleMetricExporter()
    protocol = os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import (
            OTLPMetricExporter as GrpcMetricExporter,
        )
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
            OTLPSpanExporter as GrpcSpanExporter,
        )

        return GrpcSpanExporter(), GrpcMetricExporter()
    if protocol != "http/protobuf":
        raise ConfigurationError(
            f"OTEL_EXPORTER_OTLP_PROTOCOL={protocol!r} is not supported: use http/protobuf or grpc"
        )
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    return OTLPSpanExporter(), OTLPMetricExporter()


def configure_telemetry(
    exporter: str | None = None,
    *,
    service_name: str = "agentbus-coordinator",
    instance_id: str | None = None,
    interval: float = 10.0,
) -> TelemetryHandle:
    """Install the OpenTelemetry SDK with ``exporter`` (else ``$AGENTBUS_OTEL_EXPORTER``).

    Sets the global tracer and meter providers (once per process, as OpenTelemetry allows);
    ``interval`` is the metric export period in seconds. Returns a handle to ``shutdown()``.
    """
    kind = (exporter or os.environ.get(ENV_VAR) or "none").strip().lower()
    if kind not in EXPORTERS:
        raise ConfigurationError(
            f"unknown OpenTelemetry exporter {kind!r}: use one of {', '.join(EXPORTERS)}"
        )
    if kind == "none":
        return TelemetryHandle()
    try:
        from opentelemetry import metrics, trace
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        span_exporter, metric_exporter = _exporters(kind)
    except ImportError as e:
        raise ConfigurationError(
            f"OpenTelemetry export ({kind}) needs the SDK: pip install 'agentbus[otel]' ({e})"
        ) from e
    attributes: dict[str, str] = {"service.name": os.environ.get("OTEL_SERVICE_NAME", service_name)}
    if instance_id:
        attributes["service.instance.id"] = instance_id
    resource = Resource.create(attributes)
    tracer_provider = TracerProvider(resource=resource)
    tracer_provider.add_span_processor(BatchSpanProcessor(span_exporter))
    reader = PeriodicExportingMetricReader(
        metric_exporter, export_interval_millis=max(1.0, interval * 1000)
    )
    meter_provider = MeterProvider(resource=resource, metric_readers=[reader])
    trace.set_tracer_provider(tracer_provider)
    metrics.set_meter_provider(meter_provider)
    return TelemetryHandle(kind, [tracer_provider, meter_provider])

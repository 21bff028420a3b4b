"""Turning export on: nothing by default, console/OTLP when asked, and the daemon's --otel."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid

import pytest
import redis

from agent_sdk.embedded import RedisServer
from coordinator.telemetry_setup import configure_telemetry
from schemas.errors import ConfigurationError
from tests.support import wait_for_sync


def test_nothing_is_installed_unless_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AGENTBUS_OTEL_EXPORTER", raising=False)
    handle = configure_telemetry()
    assert not handle.enabled
    assert handle.exporter == "none"
    handle.shutdown()


def test_an_unknown_exporter_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="unknown OpenTelemetry exporter 'zipkin'"):
        configure_telemetry("zipkin")


_CONSOLE = """
from agent_sdk import telemetry
from coordinator.telemetry_setup import configure_telemetry
handle = configure_telemetry(instance_id="unit-1")  # from AGENTBUS_OTEL_EXPORTER
assert handle.enabled and handle.exporter == "console"
with telemetry.producer_span("somewhere", "probe-type", message_id="m-1", headers={}):
    telemetry.record_sent("probe-type")
handle.shutdown()
"""


def test_console_export_prints_spans_and_metrics() -> None:
    env = {**os.environ, "AGENTBUS_OTEL_EXPORTER": "console", "OTEL_SERVICE_NAME": "probe"}
    done = subprocess.run(
        [sys.executable, "-W", "error", "-c", _CONSOLE],
        capture_output=True, text=True, check=True, env=env, timeout=60,
    )  # fmt: skip
    out = done.stdout
    assert '"name": "send somewhere"' in out
    assert '"messaging.message.id": "m-1"' in out
    assert '"service.name": "probe"' in out
    assert '"service.instance.id": "unit-1"' in out
    assert "agentbus.messages.sent" in out


def test_otlp_exporter_is_built_from_the_standard_variables() -> None:
    code = (
        "from coordinator.telemetry_setup import configure_telemetry\n"
        "h = configure_telemetry('otlp', interval=3600)\n"
        "print(type(h.providers[0]._active_span_processor._span_processors[0].span_exporter)"
        ".__module__)\n"
    )
    for protocol, module in (("grpc", "grpc"), ("http/protobuf", "http")):
        env = {
            **os.environ,
            "OTEL_EXPORTER_OTLP_PROTOCOL": protocol,
            "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9",  # nothing is sent before exit
        }
        done = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60,
            check=True,
        )  # fmt: skip
        assert f"otlp.proto.{module}" in done.stdout


def test_the_daemon_exports_coordinator_metrics_with_otel_console(
    redis_server: RedisServer,
) -> None:
    ns = f"t{uuid.uuid4().hex[:10]}"
    env = {
        **os.environ,
        "AGENTBUS_REDIS_URL": redis_server.url,
        "AGENTBUS_NAMESPACE": ns,
        "AGENTBUS_COORDINATOR_ID": "otel-daemon",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "coordinator.cli", "coordinator", "--otel", "console"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    client = redis.Redis(port=redis_server.port)
    try:
        health = f"{ns}:{{registry}}:coordinator:otel-daemon"
        wait_for_sync(lambda: client.exists(health), timeout=30, message="coordinator health key")
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        client.close()
    assert proc.returncode == 0, err
    assert "agentbus.heartbeats.processed" in out
    assert "agentbus.registry.size" in out
    assert '"agentbus.coordinator.id": "otel-daemon"' in out

"""The standard OTEL_*_EXPORTER variables, and a collector that refuses metrics."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from shoal.bus import ShoalSettings
from shoal.bus.telemetry import metrics_path, setup_telemetry, spans_path


def test_exporter_none_writes_no_spans_and_no_metrics(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "none")
    monkeypatch.setenv("OTEL_METRICS_EXPORTER", "None")
    settings = ShoalSettings(data_dir=tmp_path)
    assert (settings.otel_traces_exporter, settings.otel_metrics_exporter) == ("none", "none")
    telemetry = setup_telemetry(settings, "shoal-test", install_global=False)
    with telemetry.tracer.start_as_current_span("chat"):
        telemetry.meter.create_counter("calls").add(1)
    telemetry.force_flush()
    telemetry.shutdown()
    assert telemetry.exporter == "none"
    assert not spans_path(settings).exists() and not metrics_path(settings).exists()


class _MetricsRefused(BaseHTTPRequestHandler):
    """A collector with traces but no metrics receiver: 405 on /v1/metrics."""

    requests: list[str] = []

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", "0")))
        type(self).requests.append(self.path)
        self.send_response(405 if self.path == "/v1/metrics" else 200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        return None


@pytest.fixture
def collector() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _MetricsRefused)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_a_collector_without_metrics_is_reported_once(
    collector: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = ShoalSettings(data_dir=tmp_path, otel_endpoint=collector)
    telemetry = setup_telemetry(settings, "shoal-test", install_global=False)
    counter = telemetry.meter.create_counter("calls")
    with caplog.at_level(logging.WARNING, logger="opentelemetry"):
        for _ in range(3):
            counter.add(1)
            telemetry.force_flush()
    telemetry.shutdown()
    assert _MetricsRefused.requests.count("/v1/metrics") >= 3
    errors = [r.getMessage() for r in caplog.records if "metrics batch" in r.getMessage()]
    assert len(errors) == 1, errors
    assert errors[0].startswith("Failed to export metrics batch code: 405")
    assert errors[0].endswith("(reported once; later failures like it are not)")

"""Telemetry setup: where spans and metrics go, by the standard OTEL_* settings."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from shoal.bus import ShoalSettings
from shoal.bus.genai import GenAI, session_attributes
from shoal.bus.spanfile import read_spans
from shoal.bus.telemetry import metrics_path, setup_telemetry, spans_path
from shoal.bus.tracecontext import current_traceparent
from tests.otlpreceiver import OtlpGrpcReceiver, OtlpHttpReceiver


def otel_settings(data_dir: Path, **overrides: Any) -> ShoalSettings:
    """Settings with every OTEL_* value given, so the machine's environment cannot leak in."""
    values: dict[str, Any] = {
        "data_dir": data_dir,
        "otel_sdk_disabled": False,
        "otel_endpoint": None,
        "otel_traces_endpoint": None,
        "otel_metrics_endpoint": None,
        "otel_protocol": "http/protobuf",
        "otel_service_name": None,
        "trace_content": False,
    }
    return ShoalSettings(**{**values, **overrides})


def test_spans_are_json_lines_under_the_data_dir_without_an_endpoint(tmp_path: Path) -> None:
    settings = otel_settings(tmp_path)
    with setup_telemetry(
        settings, "shoal-test", instance_id="inst-1", install_global=False
    ) as telemetry:
        assert telemetry.exporter == "jsonl"
        with telemetry.tracer.start_as_current_span("outer", attributes={"k": "v"}) as outer:
            with telemetry.tracer.start_as_current_span("inner"):
                pass
    path = spans_path(settings)
    assert path == tmp_path / "traces" / "spans.jsonl"
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [line["name"] for line in lines] == ["inner", "outer"]
    inner, outer_json = lines
    ctx = outer.get_span_context()
    assert outer_json["trace_id"] == f"{ctx.trace_id:032x}"
    assert outer_json["span_id"] == f"{ctx.span_id:016x}"
    assert outer_json["parent_span_id"] is None
    assert inner["parent_span_id"] == outer_json["span_id"]
    assert inner["trace_id"] == outer_json["trace_id"]
    assert outer_json["attributes"] == {"k": "v"}
    assert outer_json["kind"] == "INTERNAL" and outer_json["status"]["code"] == "UNSET"
    assert outer_json["end_time_unix_nano"] >= outer_json["start_time_unix_nano"] > 0
    assert outer_json["resource"]["service.name"] == "shoal-test"
    assert outer_json["resource"]["service.instance.id"] == "inst-1"
    assert outer_json["resource"]["service.namespace"] == "shoal"
    assert [s.name for s in read_spans(path)] == ["inner", "outer"]


def test_metrics_are_json_lines_flushed_on_shutdown(tmp_path: Path) -> None:
    settings = otel_settings(tmp_path)
    with setup_telemetry(settings, "shoal-test", install_global=False) as telemetry:
        genai = GenAI(telemetry)
        genai.task_started("docs", "summarise")
        genai.task_started("docs", "summarise")
    lines = [json.loads(line) for line in metrics_path(settings).read_text().splitlines()]
    started = next(line for line in lines if line["name"] == "shoal.tasks.started")
    [point] = started["data"]["data_points"]
    assert point["value"] == 2
    assert point["attributes"] == {"shoal.fleet": "docs", "shoal.capability": "summarise"}
    assert started["resource"]["service.name"] == "shoal-test"


def test_otel_sdk_disabled_records_nothing_and_carries_no_context(tmp_path: Path) -> None:
    settings = otel_settings(tmp_path, otel_sdk_disabled="true")
    with setup_telemetry(settings, "shoal-test", install_global=False) as telemetry:
        assert telemetry.enabled is False and telemetry.tracer_provider is None
        genai = GenAI(telemetry)
        with genai.invoke_agent("writer", session_attributes(iid="I1")) as call:
            call.decided("deny", "manifest.tool")
            assert current_traceparent() is None
        genai.task_started("docs", "summarise")
    assert not (tmp_path / "traces").exists()


@pytest.mark.parametrize(
    ("raw", "disabled"), [("true", True), ("TRUE", True), ("yes", False), ("", False)]
)
def test_only_true_disables_the_sdk(
    monkeypatch: pytest.MonkeyPatch, raw: str, disabled: bool
) -> None:
    monkeypatch.setenv("OTEL_SDK_DISABLED", raw)
    assert ShoalSettings().otel_sdk_disabled is disabled


def test_standard_otel_variables_reach_the_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
    monkeypatch.setenv("OTEL_SERVICE_NAME", "my-agents")
    monkeypatch.setenv("OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT", "true")
    settings = ShoalSettings()
    assert settings.otel_endpoint == "http://collector:4318"
    assert settings.otel_protocol == "grpc"
    assert settings.otel_service_name == "my-agents"
    assert settings.trace_content is True


def test_service_name_setting_overrides_the_process_name(tmp_path: Path) -> None:
    exporter = InMemorySpanExporter()
    settings = otel_settings(tmp_path, otel_service_name="my-agents")
    with setup_telemetry(
        settings,
        "shoal-agent",
        span_exporter=exporter,
        metric_reader=InMemoryMetricReader(),
        install_global=False,
    ) as telemetry:
        with telemetry.tracer.start_as_current_span("x"):
            pass
        [span] = exporter.get_finished_spans()
        assert span.resource.attributes["service.name"] == "my-agents"


def test_otlp_http_export_reaches_a_receiver(tmp_path: Path) -> None:
    with OtlpHttpReceiver() as receiver:
        settings = otel_settings(tmp_path, otel_endpoint=receiver.endpoint + "/")
        with setup_telemetry(settings, "shoal-test", install_global=False) as telemetry:
            assert telemetry.exporter == "otlp/http"
            genai = GenAI(telemetry)
            with genai.invoke_agent("writer", session_attributes(iid="I-http", fleet="docs")):
                with genai.chat("m1", session_attributes(iid="I-http"), provider="openai"):
                    pass
        got = receiver.received
        assert got.wait_for(lambda r: len(r.spans) == 2)
        span = next(s for s in got.spans if s["parent_span_id"] is None)
        assert span["name"] == "invoke_agent writer"
        assert span["attributes"]["gen_ai.conversation.id"] == "I-http"
        assert span["resource"]["service.name"] == "shoal-test"
        assert got.wait_for(lambda r: "gen_ai.client.operation.duration" in r.metric_names)
        assert {"/v1/traces", "/v1/metrics"} <= set(got.paths)
    assert not (tmp_path / "traces").exists()


def test_otlp_grpc_export_reaches_a_receiver(tmp_path: Path) -> None:
    with OtlpGrpcReceiver() as receiver:
        settings = otel_settings(tmp_path, otel_endpoint=receiver.endpoint, otel_protocol="grpc")
        with setup_telemetry(settings, "shoal-test", install_global=False) as telemetry:
            assert telemetry.exporter == "otlp/grpc"
            with telemetry.tracer.start_as_current_span("over grpc"):
                pass
            GenAI(telemetry).task_completed("docs", "summarise")
        got = receiver.received
        assert got.wait_for(lambda r: [s["name"] for s in r.spans] == ["over grpc"])
        assert got.wait_for(lambda r: r.metric_names == {"shoal.tasks.completed"})


def test_a_signal_specific_endpoint_is_used_as_given(tmp_path: Path) -> None:
    with OtlpHttpReceiver() as receiver:
        settings = otel_settings(tmp_path, otel_traces_endpoint=receiver.endpoint + "/v1/traces")
        with setup_telemetry(settings, "shoal-test", install_global=False) as telemetry:
            assert telemetry.exporter == "otlp/http"
            with telemetry.tracer.start_as_current_span("only traces"):
                pass
            GenAI(telemetry).task_completed("docs", "summarise")
        assert receiver.received.wait_for(lambda r: len(r.spans) == 1)
        assert receiver.received.paths == ["/v1/traces"]
    # metrics had no endpoint of their own: they stayed local
    [line] = metrics_path(settings).read_text().splitlines()
    assert json.loads(line)["name"] == "shoal.tasks.completed"

"""``shoal demo`` with an OTLP endpoint: a real OpenTelemetry collector receives its trace."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from shoal.bus import ShoalSettings
from shoal.bus.spanfile import SpanRecord
from shoal.bus.telemetry import metrics_path, spans_path
from shoal.bus.tracecontext import goal_trace_id
from shoal.ops.cli import app
from shoal.schemas import parse_event
from tests.agents.test_tracing import assert_trace_mirrors_events, traced_env
from tests.collector import Collector

pytestmark = pytest.mark.timeout(90)


@pytest.mark.parametrize("protocol", ["http/protobuf", "grpc"])
def test_shoal_demo_exports_its_goal_trace_to_a_collector(
    settings: ShoalSettings, protocol: str
) -> None:
    with Collector() as collector:
        endpoint = collector.grpc_endpoint if protocol == "grpc" else collector.http_endpoint
        env = traced_env(
            settings, OTEL_EXPORTER_OTLP_ENDPOINT=endpoint, OTEL_EXPORTER_OTLP_PROTOCOL=protocol
        )
        result = CliRunner().invoke(app, ["demo", "--json"], env=env)
        assert result.exit_code == 0, result.stderr
        doc = json.loads(result.stdout)
        trace_id = f"{goal_trace_id(doc['gid']):032x}"
        got = collector.received

        events = [parse_event(e["event"]) for e in doc["events"]]

        def goal_spans() -> list[SpanRecord]:
            return [SpanRecord.from_json(s) for s in got.spans if s["trace_id"] == trace_id]

        def complete(_: object) -> bool:
            try:
                assert_trace_mirrors_events(goal_spans(), events)
            except (AssertionError, KeyError):
                return False  # not all relayed yet
            return True

        got.wait_for(complete)  # the collector batches for 50 ms before it exports
        assert got.wait_for(lambda r: "gen_ai.client.token.usage" in r.metric_names)
    spans = goal_spans()
    assert doc["trace_id"] == trace_id and len(spans) >= 20
    assert {s.resource["service.name"] for s in spans} == {"shoal-demo"}
    assert_trace_mirrors_events(spans, events)
    assert {"gen_ai.client.operation.duration", "shoal.tasks.completed"} <= got.metric_names
    assert got.paths and set(got.paths) <= {"/v1/traces", "/v1/metrics"}
    # with an endpoint configured nothing is written locally
    assert not spans_path(settings).exists() and not metrics_path(settings).exists()

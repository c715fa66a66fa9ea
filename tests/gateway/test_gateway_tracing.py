"""The gateway's OTel ``chat`` span and GenAI metrics; ``model.called`` carries its trace."""

from __future__ import annotations

from pathlib import Path

import httpx
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from shoal.bus import Bus
from shoal.bus.genai import GenAI
from shoal.bus.telemetry import setup_telemetry
from shoal.gateway import GatewayConfig, run_gateway
from tests.bus.test_telemetry import otel_settings
from tests.gateway.conftest import MakeKey, model_calls


async def test_a_call_makes_one_chat_span_with_usage_and_its_record_carries_the_trace(
    bus: Bus, gateway_config: GatewayConfig, make_key: MakeKey, tmp_path: Path
) -> None:
    spans, metrics = InMemorySpanExporter(), InMemoryMetricReader()
    key, secret = await make_key()
    with setup_telemetry(
        otel_settings(tmp_path),
        "shoal-gateway",
        span_exporter=spans,
        metric_reader=metrics,
        install_global=False,
    ) as telemetry:
        async with (
            run_gateway(bus, gateway_config, genai=GenAI(telemetry)) as gw,
            httpx.AsyncClient(base_url=gw.url, timeout=10) as http,
        ):
            r = await http.post(
                "/chat/completions",
                json={"model": "fast", "messages": [{"role": "user", "content": "hello there"}]},
                headers={"Authorization": f"Bearer {secret}"},
            )
            assert r.status_code == 200
        (span,) = spans.get_finished_spans()
        data = metrics.get_metrics_data()
    assert span.name == "chat fast"
    attrs = dict(span.attributes or {})
    assert (attrs["gen_ai.usage.input_tokens"], attrs["gen_ai.usage.output_tokens"]) == (10, 4)
    assert (attrs["gen_ai.provider.name"], attrs["gen_ai.response.model"]) == (
        "fake",
        "offline-small",
    )
    assert (attrs["shoal.fleet"], attrs["gen_ai.conversation.id"]) == ("research", key.id)
    assert attrs["shoal.policy.decision"] == "allow"
    assert data is not None
    names = {m.name for rm in data.resource_metrics for sm in rm.scope_metrics for m in sm.metrics}
    assert {"gen_ai.client.token.usage", "gen_ai.client.operation.duration"} <= names
    await model_calls(bus, key.id, 1)
    (stored,) = await bus.session_events(key.id)
    assert stored.event is not None and stored.event.traceparent is not None
    assert stored.event.traceparent.split("-")[1] == f"{span.context.trace_id:032x}"

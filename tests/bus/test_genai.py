"""GenAI spans and metrics, read back with the SDK's in-memory exporter and reader."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.metrics.export import (
    HistogramDataPoint,
    InMemoryMetricReader,
    NumberDataPoint,
)
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from shoal.bus.genai import DURATION_BUCKETS, TOKEN_BUCKETS, GenAI, session_attributes
from shoal.bus.telemetry import setup_telemetry
from tests.bus.test_telemetry import otel_settings


@dataclass
class Traced:
    genai: GenAI
    spans: InMemorySpanExporter
    reader: InMemoryMetricReader

    def finished(self) -> dict[str, ReadableSpan]:
        return {s.name: s for s in self.spans.get_finished_spans()}

    def points(self, name: str) -> list[Any]:
        data = self.reader.get_metrics_data()
        for rm in data.resource_metrics if data is not None else []:
            for sm in rm.scope_metrics:
                for metric in sm.metrics:
                    if metric.name == name:
                        return list(metric.data.data_points)
        return []


def make_traced(tmp_path: Path, content: bool) -> Iterator[Traced]:
    spans, reader = InMemorySpanExporter(), InMemoryMetricReader()
    settings = otel_settings(tmp_path, trace_content=content)
    with setup_telemetry(
        settings, "shoal-test", span_exporter=spans, metric_reader=reader, install_global=False
    ) as telemetry:
        yield Traced(GenAI(telemetry), spans, reader)


@pytest.fixture
def traced(tmp_path: Path) -> Iterator[Traced]:
    yield from make_traced(tmp_path, content=False)


@pytest.fixture
def traced_content(tmp_path: Path) -> Iterator[Traced]:
    yield from make_traced(tmp_path, content=True)


SESSION = session_attributes(
    iid="I1",
    gid="G1",
    parentiid="P1",
    fleet="docs",
    agent="summarizer",
    instance="inst-7",
    principal="alice",
    version="1.2",
)


def test_agent_chat_and_tool_spans_nest_with_genai_attributes(traced: Traced) -> None:
    g = traced.genai
    with g.invoke_agent("summarizer", SESSION, capability="summarise", attempt=1) as agent:
        with g.chat("offline-small", SESSION) as chat:
            chat.provider("shoal-offline")
            chat.decided("allow")
            chat.response(
                model="offline-small-2", input_tokens=120, output_tokens=30, finish_reason="stop"
            )
        with g.execute_tool("read_file", SESSION, call_id="C9") as tool:
            tool.arguments({"path": "a.md"})
            tool.result("hello", "internal")
    spans = traced.finished()
    assert set(spans) == {"invoke_agent summarizer", "chat offline-small", "execute_tool read_file"}
    root = spans["invoke_agent summarizer"]
    chat_span, tool_span = spans["chat offline-small"], spans["execute_tool read_file"]
    assert root.parent is None
    assert (
        chat_span.parent is not None
        and chat_span.parent.span_id == agent.span.get_span_context().span_id
    )
    assert tool_span.parent is not None and tool_span.parent.span_id == root.context.span_id
    assert dict(root.attributes or {}) == {
        "gen_ai.operation.name": "invoke_agent",
        "gen_ai.provider.name": "shoal",
        "gen_ai.conversation.id": "I1",
        "gen_ai.agent.name": "summarizer",
        "gen_ai.agent.id": "docs/summarizer",
        "gen_ai.agent.version": "1.2",
        "shoal.fleet": "docs",
        "shoal.instance": "inst-7",
        "shoal.gid": "G1",
        "shoal.parentiid": "P1",
        "shoal.principal": "alice",
        "shoal.capability": "summarise",
        "shoal.attempt": 1,
    }
    assert root.kind == SpanKind.INTERNAL and chat_span.kind == SpanKind.CLIENT
    chat_attrs = dict(chat_span.attributes or {})
    assert {
        k: chat_attrs[k] for k in chat_attrs if not k.startswith(("shoal.", "gen_ai.agent"))
    } == {
        "gen_ai.operation.name": "chat",
        "gen_ai.request.model": "offline-small",
        "gen_ai.provider.name": "shoal-offline",
        "gen_ai.response.model": "offline-small-2",
        "gen_ai.usage.input_tokens": 120,
        "gen_ai.usage.output_tokens": 30,
        "gen_ai.response.finish_reasons": ("stop",),
        "gen_ai.conversation.id": "I1",
    }
    assert chat_attrs["shoal.policy.decision"] == "allow"
    tool_attrs = dict(tool_span.attributes or {})
    assert tool_attrs["gen_ai.operation.name"] == "execute_tool"
    assert tool_attrs["gen_ai.tool.name"] == "read_file"
    assert tool_attrs["gen_ai.tool.call.id"] == "C9"
    # content recording is off by default: neither arguments nor result are on the span
    assert "gen_ai.tool.call.arguments" not in tool_attrs
    assert "gen_ai.tool.call.result" not in tool_attrs
    assert all(s.status.status_code == StatusCode.UNSET for s in spans.values())


def test_a_failing_model_call_sets_error_type_and_still_records_duration(traced: Traced) -> None:
    g = traced.genai
    with pytest.raises(ValueError, match="bad gateway"), g.chat("m1", SESSION, provider="openai"):
        raise ValueError("bad gateway")
    [span] = traced.spans.get_finished_spans()
    assert span.attributes is not None and span.attributes["error.type"] == "ValueError"
    assert span.status.status_code == StatusCode.ERROR
    assert span.status.description == "ValueError: bad gateway"
    assert [e.name for e in span.events] == ["exception"]
    [point] = traced.points("gen_ai.client.operation.duration")
    assert isinstance(point, HistogramDataPoint)
    assert point.count == 1
    assert dict(point.attributes or {}) == {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": "openai",
        "gen_ai.request.model": "m1",
        "shoal.fleet": "docs",
        "gen_ai.agent.name": "summarizer",
        "error.type": "ValueError",
    }


def test_a_failing_tool_call_is_a_failed_span_that_re_raises(traced: Traced) -> None:
    g = traced.genai
    with pytest.raises(KeyError), g.execute_tool("read_file", SESSION, call_id="C1"):
        raise KeyError("path")
    [span] = traced.spans.get_finished_spans()
    assert span.attributes is not None and span.attributes["error.type"] == "KeyError"
    assert span.status.status_code == StatusCode.ERROR
    assert traced.points("gen_ai.client.operation.duration") == []


def test_token_usage_and_duration_use_the_conventional_buckets(traced: Traced) -> None:
    g = traced.genai
    for tokens_in in (100, 200):
        with g.chat("m1", SESSION, provider="openai") as chat:
            chat.response(model="m1-0613", input_tokens=tokens_in, output_tokens=7)
    usage = {
        dict(p.attributes)["gen_ai.token.type"]: p
        for p in traced.points("gen_ai.client.token.usage")
    }
    assert set(usage) == {"input", "output"}
    assert (usage["input"].count, usage["input"].sum) == (2, 300)
    assert (usage["output"].count, usage["output"].sum) == (2, 14)
    assert tuple(usage["input"].explicit_bounds) == TOKEN_BUCKETS
    assert dict(usage["input"].attributes) == {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": "openai",
        "gen_ai.request.model": "m1",
        "gen_ai.response.model": "m1-0613",
        "gen_ai.token.type": "input",
        "shoal.fleet": "docs",
        "gen_ai.agent.name": "summarizer",
    }
    [duration] = traced.points("gen_ai.client.operation.duration")
    assert duration.count == 2 and tuple(duration.explicit_bounds) == DURATION_BUCKETS


def test_tool_content_is_recorded_only_when_configured_and_redacted_by_sensitivity(
    traced_content: Traced,
) -> None:
    g = traced_content.genai
    for call_id, sensitivity in (("pub", "public"), ("conf", "confidential"), ("sec", "secret")):
        with g.execute_tool("read_file", SESSION, call_id=call_id) as tool:
            tool.arguments({"path": "a.md", "token": "[redacted 5 chars]"})
            tool.result({"text": "0123456789"}, sensitivity)
    attrs = {
        dict(s.attributes or {})["gen_ai.tool.call.id"]: dict(s.attributes or {})
        for s in traced_content.spans.get_finished_spans()
    }
    args = '{"path": "a.md", "token": "[redacted 5 chars]"}'
    assert attrs["pub"]["gen_ai.tool.call.arguments"] == args
    assert attrs["pub"]["gen_ai.tool.call.result"] == '{"text": "0123456789"}'
    assert attrs["conf"]["gen_ai.tool.call.result"] == "[redacted 22 chars]"
    assert "gen_ai.tool.call.result" not in attrs["sec"]


def test_denials_tasks_instances_and_cost_are_counted(traced: Traced) -> None:
    g = traced.genai
    with g.execute_tool("delete_all", SESSION, call_id="C1") as tool:
        tool.decided("deny", "manifest.tool")
    with g.chat("m1", SESSION, provider="openai") as chat:
        chat.response(model="m1", input_tokens=1, output_tokens=1, cost_usd=Decimal("0.25"))
    with g.chat("m1", SESSION, provider="openai") as chat:
        chat.response(model="m1", input_tokens=1, output_tokens=1, cost_usd=Decimal("0.5"))
    g.task_started("docs", "summarise")
    g.task_completed("docs", "summarise")
    g.task_failed("docs", "summarise", "ValueError", final=False)
    g.deadlettered("tasks", "invalid_input")
    g.instance_started("docs", "summarizer")
    g.instance_started("docs", "summarizer")
    g.instance_stopped("docs", "summarizer")

    def value(name: str) -> tuple[float, dict[str, Any]]:
        [point] = traced.points(name)
        assert isinstance(point, NumberDataPoint)
        return point.value, dict(point.attributes or {})

    assert value("shoal.policy.denials") == (
        1,
        {
            "shoal.policy.decision": "deny",
            "shoal.policy.rule": "manifest.tool",
            "shoal.fleet": "docs",
        },
    )
    assert value("shoal.cost") == (0.75, {"gen_ai.request.model": "m1", "shoal.fleet": "docs"})
    assert value("shoal.tasks.started")[0] == 1
    assert value("shoal.tasks.completed")[0] == 1
    assert value("shoal.tasks.failed") == (
        1,
        {
            "shoal.fleet": "docs",
            "shoal.capability": "summarise",
            "error.type": "ValueError",
            "shoal.final": False,
        },
    )
    assert value("shoal.messages.deadlettered") == (
        1,
        {"shoal.origin": "tasks", "shoal.reason": "invalid_input"},
    )
    assert value("shoal.instances.active") == (
        1,
        {"shoal.fleet": "docs", "gen_ai.agent.name": "summarizer"},
    )
    [denied] = traced.spans.get_finished_spans()[:1]
    assert denied.attributes is not None
    assert denied.attributes["shoal.policy.decision"] == "deny"


def test_a_disabled_genai_records_nothing_and_still_raises() -> None:
    g = GenAI.disabled()
    assert g.enabled is False
    with g.invoke_agent("summarizer", SESSION) as agent, g.chat("m", SESSION) as chat:
        chat.provider("openai")
        chat.decided("deny", "manifest.model")
        chat.response(model="m", input_tokens=1, output_tokens=1, cost_usd=Decimal("0.1"))
        agent.fail(RuntimeError("x"))
    assert not agent.span.get_span_context().is_valid
    with pytest.raises(ValueError, match="boom"), g.execute_tool("t", SESSION, call_id="c"):
        raise ValueError("boom")

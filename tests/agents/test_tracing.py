"""One trace per goal: the demo's spans mirror its event tree, in one process and across two."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from typer.testing import CliRunner

from shoal.agents.demo import demo_agents, write_workspace
from shoal.agents.models import OfflineModelClient
from shoal.agents.runtime import AgentRuntime
from shoal.agents.tools import ToolEnv
from shoal.bus import Bus, ShoalSettings
from shoal.bus.genai import GenAI
from shoal.bus.spanfile import SpanRecord, read_spans
from shoal.bus.telemetry import metrics_path, setup_telemetry, spans_path
from shoal.bus.tracecontext import current_traceparent, goal_context, goal_trace_id
from shoal.ops.cli import app
from shoal.ops.demo import run_demo
from shoal.ops.goals import build_goal, submit_goal
from shoal.schemas import CloudEvent, ModelCalled, PolicyDecided, ToolCalled, parse_event
from tests.agents.conftest import wait_events
from tests.bus.test_telemetry import otel_settings
from tests.otlpreceiver import OtlpHttpReceiver

pytestmark = pytest.mark.timeout(90)

ROOT = Path(__file__).resolve().parents[2]


def by_id(spans: list[SpanRecord]) -> dict[str, SpanRecord]:
    return {s.span_id: s for s in spans}


def agent_parent_iid(span: SpanRecord, index: dict[str, SpanRecord]) -> str | None:
    """The conversation (IID) of the nearest ``invoke_agent`` above ``span``, if any."""
    parent = index.get(span.parent_span_id or "")
    while parent is not None:
        if parent.attributes.get("gen_ai.operation.name") == "invoke_agent":
            return str(parent.attributes["gen_ai.conversation.id"])
        parent = index.get(parent.parent_span_id or "")
    return None


def assert_trace_mirrors_events(spans: list[SpanRecord], events: list[CloudEvent]) -> None:
    """The span tree of a goal matches its IID/parentiid tree and its recorded calls."""
    gid = events[0].gid
    assert gid is not None
    assert {s.trace_id for s in spans} == {f"{goal_trace_id(gid):032x}"}
    index = by_id(spans)
    agents = [s for s in spans if s.attributes.get("gen_ai.operation.name") == "invoke_agent"]
    event_tree = {e.iid: e.parentiid for e in events}
    span_tree = {
        str(s.attributes["gen_ai.conversation.id"]): agent_parent_iid(s, index) for s in agents
    }
    assert span_tree == event_tree
    for span in agents:
        a = span.attributes
        assert a["shoal.gid"] == gid and a["gen_ai.agent.id"] == f"demo/{a['gen_ai.agent.name']}"
        assert span.name == f"invoke_agent {a['gen_ai.agent.name']}"
        assert a.get("shoal.parentiid") == event_tree[str(a["gen_ai.conversation.id"])]
    # every model call is a chat span of its session, with the tokens the event recorded
    chats = [s for s in spans if s.attributes.get("gen_ai.operation.name") == "chat"]
    model_calls = [(e.iid, d) for e in events if isinstance(d := e.data, ModelCalled)]
    assert Counter(
        (
            s.attributes["gen_ai.conversation.id"],
            s.attributes["gen_ai.usage.input_tokens"],
            s.attributes["gen_ai.usage.output_tokens"],
            s.attributes["gen_ai.response.model"],
            s.attributes["gen_ai.provider.name"],
        )
        for s in chats
    ) == Counter(
        (iid, d.input_tokens, d.output_tokens, d.model, d.provider) for iid, d in model_calls
    )
    assert {s.name for s in chats} == {"chat offline-small"}
    # every tool call that ran is an execute_tool span with the event's call id
    tools = [s for s in spans if s.attributes.get("gen_ai.operation.name") == "execute_tool"]
    ran = {
        s.attributes["gen_ai.tool.call.id"]: s
        for s in tools
        if s.attributes["shoal.policy.decision"] == "allow"
    }
    tool_calls = {d.call_id: (e.iid, d) for e in events if isinstance(d := e.data, ToolCalled)}
    assert set(ran) == set(tool_calls)
    for call_id, span in ran.items():
        iid, called = tool_calls[call_id]
        assert span.attributes["gen_ai.tool.name"] == called.tool
        assert span.attributes["gen_ai.conversation.id"] == iid
    # a refused call is a failed span with the decision, as the event log says
    denied = [s for s in tools if s.attributes["shoal.policy.decision"] != "allow"]
    decisions = [d for e in events if isinstance(d := e.data, PolicyDecided)]
    assert [
        (
            s.attributes["gen_ai.tool.name"],
            s.attributes["shoal.policy.decision"],
            s.attributes["error.type"],
            s.status,
        )
        for s in denied
    ] == [
        (d.target, d.decision, _refusal_type(d.decision), "ERROR")
        for d in decisions
        if d.decision != "allow"
    ]
    # every event emitted by an agent links to the span it happened in
    for event in events:
        if event.type == "shoal.goal.submitted":
            continue  # see test_demo_goal_submission_carries_the_goal_trace_context
        assert event.traceparent is not None, event.type
        _, trace_id, span_id, _ = event.traceparent.split("-")
        assert trace_id == f"{goal_trace_id(gid):032x}" and span_id in index, event.type
        assert index[span_id].attributes["gen_ai.conversation.id"] in (event.iid, event.parentiid)


async def test_demo_spans_form_one_trace_per_goal_matching_the_event_tree(
    bus: Bus, tmp_path: Path
) -> None:
    tel_settings = otel_settings(tmp_path / "tel")
    with setup_telemetry(tel_settings, "shoal-demo", install_global=False) as telemetry:
        result = await run_demo(bus, genai=GenAI(telemetry))
    spans = list(read_spans(spans_path(tel_settings)))
    events = [s.event for s in result.events if s.event is not None]
    assert_trace_mirrors_events(spans, events)
    # the planted failure: attempt 1 failed in its span, attempt 2 succeeded in another
    [retried] = [e.iid for e in events if e.type == "shoal.task.failed"]
    attempts = sorted(
        (s.attributes["shoal.attempt"], s.status, s.attributes.get("error.type"))
        for s in spans
        if s.attributes.get("gen_ai.conversation.id") == retried and s.name.startswith("invoke")
    )
    assert attempts == [(1, "ERROR", "TransientFailure"), (2, "UNSET", None)]
    # the demo submits its goal with the goal's own trace context, so it links there too
    [submitted] = [e for e in events if e.type == "shoal.goal.submitted"]
    assert submitted.traceparent == current_traceparent(goal_context(result.gid))


async def test_demo_spans_reach_an_otlp_http_receiver(bus: Bus, tmp_path: Path) -> None:
    with OtlpHttpReceiver() as receiver:
        tel_settings = otel_settings(tmp_path / "tel", otel_endpoint=receiver.endpoint)
        with setup_telemetry(tel_settings, "shoal-demo", install_global=False) as telemetry:
            result = await run_demo(bus, genai=GenAI(telemetry))
        got = receiver.received
        assert got.wait_for(lambda r: len(r.spans) >= 20)
        assert got.wait_for(lambda r: "gen_ai.client.token.usage" in r.metric_names)
    spans = [SpanRecord.from_json(s) for s in got.spans]
    events = [s.event for s in result.events if s.event is not None]
    assert_trace_mirrors_events(spans, events)
    assert {
        "shoal.tasks.completed",
        "shoal.instances.active",
        "gen_ai.client.operation.duration",
    } <= got.metric_names
    assert not spans_path(tel_settings).exists()


def traced_env(settings: ShoalSettings, **otel: str) -> dict[str, str]:
    """The environment of a shoal command on ``settings``' server and data dir, tracing to the
    local span file unless ``otel`` (``OTEL_*`` variables) says otherwise."""
    return {
        "NATS_URL": settings.nats_url or "",
        "SHOAL_PREFIX": settings.prefix,
        "SHOAL_DATA_DIR": str(settings.data_dir),
        "SHOAL_PRINCIPAL": "tester",
        "OTEL_SDK_DISABLED": "false",
        "OTEL_EXPORTER_OTLP_ENDPOINT": "",
        "OTEL_SERVICE_NAME": "",
        **otel,
    }


def start_worker(settings: ShoalSettings) -> subprocess.Popen[bytes]:
    env = {**os.environ, **traced_env(settings), "SHOAL_TASK_RETRY_DELAY_S": "0.05"}
    return subprocess.Popen(
        [sys.executable, "-m", "shoal", "agent", "run", "demo", "summarizer", "--instance", "w1"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


async def test_a_worker_in_another_process_continues_the_goal_trace(
    bus: Bus, settings: ShoalSettings
) -> None:
    write_workspace(ToolEnv.for_settings(settings).workspace)
    worker = start_worker(settings)
    try:
        await wait_events(
            bus,
            bus.subjects.session_events("w1"),
            lambda evs: any(s.event and s.event.type == "shoal.agent.started" for s in evs),
            timeout=30,
        )
        tel_settings = otel_settings(settings.data_dir)  # the same span file as the worker's
        with setup_telemetry(tel_settings, "shoal-orchestrator", install_global=False) as telemetry:
            orchestrator = AgentRuntime(
                bus,
                demo_agents("demo")["orchestrator"],
                model_clients=[OfflineModelClient()],
                genai=GenAI(telemetry),
            )
            async with orchestrator.running():
                goal = build_goal(
                    "demo", "Summarise", principal="tester", inputs={"pattern": "*.md"}
                )
                await submit_goal(bus, goal)
                assert goal.gid is not None
                stored = await wait_events(
                    bus,
                    bus.subjects.goal_events(goal.gid),
                    lambda evs: any(
                        s.event and s.event.type == "shoal.goal.completed" for s in evs
                    ),
                    timeout=30,
                )
        worker.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(worker.wait, 30) == 0
    finally:
        if worker.poll() is None:
            worker.kill()
    spans = [
        s
        for s in read_spans(spans_path(tel_settings))
        if s.trace_id == f"{goal_trace_id(goal.gid):032x}"
    ]
    services = Counter(
        s.resource["service.name"] for s in spans if s.name.startswith("invoke_agent")
    )
    assert services == {"shoal-orchestrator": 1, "shoal-agent": 6}  # 5 documents, one retried
    worker_spans = [s for s in spans if s.resource["service.name"] == "shoal-agent"]
    assert {s.resource["service.instance.id"] for s in worker_spans} == {"w1"}
    events = [s.event for s in stored if s.event is not None]
    assert_trace_mirrors_events(spans, events)


def test_shoal_demo_leaves_its_goal_trace_in_the_span_file(settings: ShoalSettings) -> None:
    result = CliRunner().invoke(app, ["demo", "--json"], env=traced_env(settings))
    assert result.exit_code == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["trace_id"] == f"{goal_trace_id(doc['gid']):032x}"
    spans = [s for s in read_spans(spans_path(settings)) if s.trace_id == doc["trace_id"]]
    assert {s.resource["service.name"] for s in spans} == {"shoal-demo"}
    events = [parse_event(e["event"]) for e in doc["events"]]
    assert_trace_mirrors_events(spans, events)


def test_a_goal_the_sampler_drops_keeps_its_trace_id_and_its_metrics(
    settings: ShoalSettings,
) -> None:
    env = traced_env(settings, OTEL_TRACES_SAMPLER="always_off")
    result = CliRunner().invoke(app, ["demo", "--json"], env=env)
    assert result.exit_code == 0, result.stderr
    doc = json.loads(result.stdout)
    events = [parse_event(e["event"]) for e in doc["events"]]
    # every event still names the goal's trace, marked not sampled; no span is recorded
    assert {tuple((e.traceparent or "").split("-")[1::2]) for e in events} == {
        (f"{goal_trace_id(doc['gid']):032x}", "00")
    }
    assert list(read_spans(spans_path(settings))) == []
    metrics = [json.loads(line)["name"] for line in metrics_path(settings).open()]
    assert {"gen_ai.client.token.usage", "shoal.tasks.completed", "shoal.cost"} <= set(metrics)


def _refusal_type(decision: str) -> str:
    # The demo's one approval times out: the handler sees ApprovalDenied (a PolicyDenied).
    return "ApprovalDenied" if decision == "needs_approval" else "PolicyDenied"

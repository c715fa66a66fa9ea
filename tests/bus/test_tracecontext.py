"""Trace context across NATS: W3C headers and the CloudEvent ``traceparent`` attribute."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from opentelemetry import trace
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from ulid import ULID

from shoal.bus import Bus
from shoal.bus.telemetry import Telemetry, goal_sampled, setup_telemetry
from shoal.bus.tracecontext import (
    current_traceparent,
    extract_context,
    goal_context,
    goal_trace_id,
    inject_headers,
    with_traceparent,
    work_context,
)
from shoal.ops.goals import build_goal
from shoal.schemas import CloudEvent, TaskStarted, parse_event
from tests.bus.test_telemetry import otel_settings


@pytest.fixture
def telemetry(tmp_path: Path) -> Iterator[Telemetry]:
    with setup_telemetry(
        otel_settings(tmp_path),
        "shoal-test",
        span_exporter=InMemorySpanExporter(),
        metric_reader=InMemoryMetricReader(),
        install_global=False,
    ) as t:
        yield t


def ev(iid: str = "I1") -> CloudEvent:
    return CloudEvent.new(TaskStarted(capability="c", attempt=1), iid=iid, source="shoal://t")


async def test_an_event_published_in_a_span_carries_its_traceparent(
    bus: Bus, telemetry: Telemetry
) -> None:
    sub = await bus.nc.subscribe(bus.subjects.session_events("I1"))
    with telemetry.tracer.start_as_current_span("send") as span:
        await bus.publish(ev())
    msg = await sub.next_msg(timeout=5)
    await sub.unsubscribe()
    ctx = span.get_span_context()
    expected = f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{ctx.trace_flags:02x}"
    assert msg.headers is not None and msg.headers["traceparent"] == expected
    assert parse_event(msg.data).traceparent == expected
    [stored] = await bus.session_events("I1")
    assert stored.event is not None and stored.event.traceparent == expected

    # the consumer continues the trace from the headers
    parent = extract_context(msg.headers)
    with telemetry.tracer.start_as_current_span("receive", context=parent) as child:
        pass
    assert child.get_span_context().trace_id == ctx.trace_id
    assert child.parent is not None and child.parent.span_id == ctx.span_id  # type: ignore[attr-defined]


async def test_an_event_published_outside_any_span_has_no_trace_context(bus: Bus) -> None:
    sub = await bus.nc.subscribe(bus.subjects.session_events("I2"))
    await bus.publish_many([ev("I2")])
    msg = await sub.next_msg(timeout=5)
    await sub.unsubscribe()
    assert msg.headers is not None and "traceparent" not in msg.headers
    assert parse_event(msg.data).traceparent is None


async def test_publish_many_stamps_each_event_with_the_current_span(
    bus: Bus, telemetry: Telemetry
) -> None:
    with telemetry.tracer.start_as_current_span("batch") as span:
        await bus.publish_many([ev("I3"), ev("I3")])
    tp = current_traceparent(trace.set_span_in_context(span))
    stored = await bus.session_events("I3")
    assert [s.event.traceparent for s in stored if s.event] == [tp, tp]


def test_each_span_has_its_own_traceparent_however_often_it_is_asked(
    telemetry: Telemetry,
) -> None:
    def expected(span: trace.Span) -> str:
        c = span.get_span_context()
        return f"00-{c.trace_id:032x}-{c.span_id:016x}-{c.trace_flags:02x}"

    assert current_traceparent() is None
    with telemetry.tracer.start_as_current_span("outer") as outer:
        first = current_traceparent()
        with telemetry.tracer.start_as_current_span("inner") as inner:
            assert [current_traceparent(), current_traceparent()] == [expected(inner)] * 2
        assert [first, current_traceparent()] == [expected(outer)] * 2
    assert expected(inner) != expected(outer)
    assert current_traceparent() is None


def test_an_event_that_already_has_a_traceparent_keeps_it(telemetry: Telemetry) -> None:
    given = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    event = ev().model_copy(update={"traceparent": given})
    with telemetry.tracer.start_as_current_span("other"):
        assert with_traceparent(event) is event


def test_the_event_attribute_is_the_fallback_and_garbage_starts_a_new_trace() -> None:
    given = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    from_event = extract_context({"Nats-Msg-Id": "x"}, traceparent=given)
    assert from_event is not None
    assert current_traceparent(from_event) == given
    assert extract_context({}, None) is None
    assert extract_context({"traceparent": "00-not-a-trace-01"}) is None
    assert extract_context(None, "garbage") is None


def test_inject_adds_w3c_headers_only_inside_a_span(telemetry: Telemetry) -> None:
    assert inject_headers({"a": "b"}) == {"a": "b"}
    with telemetry.tracer.start_as_current_span("x") as span:
        headers = inject_headers({})
    ctx = span.get_span_context()
    assert (
        headers["traceparent"] == f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{ctx.trace_flags:02x}"
    )


def test_untraced_work_of_a_goal_joins_one_trace_named_by_the_gid(telemetry: Telemetry) -> None:
    gid = "01KAKV5J2M8ZQ3Y7TX4W6N9B1C"
    spans = []
    for _ in range(2):  # two deliveries of the same goal
        with telemetry.tracer.start_as_current_span("attempt", context=goal_context(gid)) as s:
            spans.append(s)
    first, second = (s.get_span_context() for s in spans)
    assert first.trace_id == second.trace_id == int(ULID.from_str(gid)) == goal_trace_id(gid)
    assert spans[0].parent == spans[1].parent  # type: ignore[attr-defined]
    assert goal_trace_id("not-a-ulid") == goal_trace_id("not-a-ulid") != goal_trace_id("other")


def test_work_continues_its_message_trace_else_its_goal_trace() -> None:
    given = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    gid = "01KAKV5J2M8ZQ3Y7TX4W6N9B1C"
    assert current_traceparent(work_context({"traceparent": given}, None, gid)) == given
    assert current_traceparent(work_context(None, given, gid)) == given
    from_goal = work_context({}, None, gid)
    assert trace.get_current_span(from_goal).get_span_context().trace_id == goal_trace_id(gid)
    assert work_context({}, None, None) is None


def test_a_goal_is_traced_whole_or_not_at_all_by_its_sampling_decision(
    telemetry: Telemetry,
) -> None:
    gid = "01KAKV5J2M8ZQ3Y7TX4W6N9B1C"
    flags = {}
    for sampled in (True, False):
        parent = work_context({}, None, gid, goal_sampled=lambda _, s=sampled: s)
        # the SDK's default parent-based sampler follows the goal's flag, in any process
        with telemetry.tracer.start_as_current_span("attempt", context=parent) as span:
            assert span.is_recording() is sampled
            flags[sampled] = current_traceparent()[-2:]  # type: ignore[index]
    assert flags == {True: "01", False: "00"}


@pytest.mark.parametrize(
    ("sampler", "arg", "expected"),
    [
        (None, None, {True}),
        ("always_off", None, {False}),
        ("parentbased_traceidratio", "0.5", None),
    ],
)
def test_the_configured_sampler_decides_each_goal_by_its_trace_id(
    monkeypatch: pytest.MonkeyPatch, sampler: str | None, arg: str | None, expected: set[bool]
) -> None:
    for name, value in (("OTEL_TRACES_SAMPLER", sampler), ("OTEL_TRACES_SAMPLER_ARG", arg)):
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
    # ULIDs made in one millisecond count up from one random value, so they share a decision:
    # random ones here, and goals built a few milliseconds apart below.
    gids = [str(ULID.from_bytes(os.urandom(16))) for _ in range(64)]
    decisions = [goal_sampled(gid) for gid in gids]
    assert decisions == [goal_sampled(gid) for gid in gids]  # the same in every process
    built = []
    for _ in range(64):
        built.append(build_goal("docs", "g", principal="p").traceparent)
        time.sleep(0.002)
    if expected is not None:
        assert set(decisions) == expected
        assert {tp[-2:] for tp in built if tp} == {"01" if True in expected else "00"}
    else:  # half the trace-id space: both outcomes among 64 random goals (1 - 2^-63)
        assert set(decisions) == {True, False}
        assert {tp[-2:] for tp in built if tp} == {"00", "01"}

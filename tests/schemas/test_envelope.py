from __future__ import annotations

import json
from decimal import Decimal

import pytest

from shoal.errors import InvalidEvent
from shoal.schemas import (
    EVENT_TYPES,
    CloudEvent,
    ModelCalled,
    ToolCalled,
    event_json_schema,
    export_json_schemas,
    parse_event,
)

DESIGN_TYPES = (
    "goal.submitted goal.planned goal.completed goal.failed task.assigned task.started "
    "task.completed task.failed model.called tool.called policy.decided approval.requested "
    "approval.granted approval.denied agent.started agent.stopped agent.killed session.killed "
    "budget.exceeded outcome.reported"
).split()


def model_called(**over: object) -> CloudEvent:
    data = ModelCalled(
        call_id="c1",
        model="gpt-x",
        provider="offline",
        input_tokens=1200,
        output_tokens=300,
        cached_tokens=100,
        latency_ms=12.5,
        reported_cost_usd=Decimal("0.0123"),
    )
    return CloudEvent.new(
        data,
        iid="I1",
        gid="G1",
        parentiid="P1",
        source="shoal://demo/worker/x1",
        fleet="demo",
        agent="worker",
        instance="x1",
        principal="alice",
        **over,  # type: ignore[arg-type]
    )


def test_event_round_trips_through_json_with_its_typed_payload() -> None:
    event = model_called()
    parsed = parse_event(event.to_json())
    assert parsed == event
    assert isinstance(parsed.data, ModelCalled)
    assert parsed.data.reported_cost_usd == Decimal("0.0123")
    assert parsed.short_type == "model.called"
    assert json.loads(event.to_json())["type"] == "shoal.model.called"


def test_absent_optional_attributes_are_left_out_of_the_wire_form() -> None:
    data = ToolCalled(call_id="t", tool="read_file")
    wire = json.loads(CloudEvent.new(data, iid="I", source="s").to_json())
    assert "gid" not in wire and "parentiid" not in wire and "traceparent" not in wire
    assert wire["specversion"] == "1.0"


def test_unknown_extension_attributes_are_kept() -> None:
    wire = json.loads(model_called().to_json())
    wire["vendorext"] = "x"
    assert parse_event(json.dumps(wire)).model_extra == {"vendorext": "x"}


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (
            lambda w: w.update(type="shoal.model.exploded"),
            "type: unknown event type 'shoal.model.exploded'",
        ),
        (lambda w: w.pop("iid"), "iid: Field required"),
        (lambda w: w.update(time="yesterday"), "time: Input should be a valid datetime"),
        (lambda w: w.update(time="2026-11-21T10:00:00"), "time: Input should have timezone info"),
        (lambda w: w.update(iid="a.b"), "iid: 'a.b' must be one subject token"),
        (
            lambda w: w["data"].update(input_tokens=-1),
            "data.input_tokens: Input should be greater than or equal to 0",
        ),
        (lambda w: w["data"].pop("model"), "data.model: Field required"),
    ],
)
def test_invalid_event_is_rejected_naming_the_field(mutate: object, message: str) -> None:
    wire = json.loads(model_called().to_json())
    mutate(wire)  # type: ignore[operator]
    with pytest.raises(InvalidEvent) as info:
        parse_event(json.dumps(wire))
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_non_json_is_rejected_in_one_line() -> None:
    with pytest.raises(InvalidEvent, match=r"^invalid event: not JSON"):
        parse_event(b"{oops")


def test_every_type_has_a_json_schema_file(tmp_path: object) -> None:
    from pathlib import Path

    out = Path(str(tmp_path))
    paths = export_json_schemas(out)
    assert len(paths) == len(EVENT_TYPES)
    assert {p.name for p in paths} >= {f"shoal.{t}.json" for t in DESIGN_TYPES}
    schema = json.loads((out / "shoal.tool.called.json").read_text())
    assert schema["properties"]["type"]["const"] == "shoal.tool.called"
    assert "tool" in schema["properties"]["data"]["properties"]
    assert "iid" in schema["required"]


def test_json_schema_of_a_type_describes_its_data() -> None:
    schema = event_json_schema("shoal.model.called")
    assert set(schema["properties"]["data"]["required"]) >= {"model", "input_tokens"}

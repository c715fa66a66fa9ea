"""The one-pass decoder: the same events and the same refusals as ``parse_event``."""

from __future__ import annotations

import json

import pytest

from shoal.errors import InvalidEvent
from shoal.schemas import CloudEvent, parse_event
from shoal.schemas.decode import decode_event
from shoal.schemas.events import EVENT_TYPES
from tests.aggregates.eventmix import Mix


def _messages() -> list[bytes]:
    return [e.to_json() for e in Mix(seed=4).until(600).events]


def test_decoded_events_are_the_parsed_events() -> None:
    messages = _messages()
    types = set()
    for raw in messages:
        decoded, parsed = decode_event(raw), parse_event(raw)
        assert isinstance(decoded, CloudEvent)
        assert type(decoded) is not CloudEvent  # the typed envelope took it
        assert decoded.model_dump() == parsed.model_dump()
        assert decoded.to_json() == parsed.to_json() == raw
        types.add(decoded.type)
    assert len(types) >= 8


def test_an_event_without_optional_attributes_decodes_with_them_absent() -> None:
    raw = json.loads(_messages()[-1])
    for key in ("gid", "parentiid", "fleet", "agent", "instance", "principal"):
        raw.pop(key, None)
    data = json.dumps(raw).encode()
    decoded = decode_event(data)
    assert (decoded.gid, decoded.fleet, decoded.agent) == (None, None, None)
    assert decoded.model_dump() == parse_event(data).model_dump()


@pytest.mark.parametrize(
    "mutate",
    [
        lambda d: d.update(iid="a.b"),
        lambda d: d.update(iid="a\x1cb"),  # whitespace to Python's \s, not to Rust's
        lambda d: d.update(fleet="f*"),
        lambda d: d.update(type="shoal.nothing.known"),
        lambda d: d.update(data="not an object"),
        lambda d: d.update(time="yesterday"),
        lambda d: d.pop("source"),
    ],
)
def test_a_refused_event_is_refused_with_the_general_parsers_reason(mutate: object) -> None:
    raw = json.loads(_messages()[-1])
    mutate(raw)  # type: ignore[operator]
    data = json.dumps(raw).encode()
    with pytest.raises(InvalidEvent) as expected:
        parse_event(data)
    with pytest.raises(InvalidEvent) as got:
        decode_event(data)
    assert str(got.value) == str(expected.value)


def test_a_payload_field_named_type_does_not_mislead_the_decoder() -> None:
    # The decoder peeks at the first "type" in the bytes; one inside data that names another
    # event type must not decide the envelope (the general path takes over).
    event = parse_event(_messages()[-1])
    raw = json.loads(event.to_json())
    other = next(t for t in EVENT_TYPES if t != event.type)
    data = json.dumps(
        {"data": {**raw["data"], "type": other}, **{k: v for k, v in raw.items() if k != "data"}}
    ).encode()
    assert decode_event(data).model_dump() == parse_event(data).model_dump()


def test_bytes_that_are_not_json_are_refused() -> None:
    with pytest.raises(InvalidEvent, match="not JSON"):
        decode_event(b"nope")

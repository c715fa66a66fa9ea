"""The AsyncAPI document FastStream generates: valid AsyncAPI 3.0, and the same subjects and
streams as a server that ``shoal up`` provisioned."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from nats.js.errors import NotFoundError

from shoal.bus import Bus, ShoalSettings
from shoal.ops.contract import ENDPOINTS, contract_asyncapi
from shoal.schemas import EVENT_TYPES

pytestmark = pytest.mark.timeout(60)

# The official AsyncAPI 3.0.0 JSON Schema (@asyncapi/specs 6.11.1, Apache-2.0), vendored:
# tests never download anything.
ASYNCAPI_3_SCHEMA = Path(__file__).parent.parent / "data" / "asyncapi-3.0.0.schema.json"

SAMPLE = {"publisher": "agent.f.a.i", "gid": "_", "scope": "fleet", "verb": "scale"}
"""A concrete token for each channel parameter (anything else: the parameter's name)."""


def _document(settings: ShoalSettings) -> dict[str, Any]:
    return contract_asyncapi(settings)


def _concrete(address: str) -> str:
    return re.sub(r"{(\w+)}", lambda m: SAMPLE.get(m.group(1), m.group(1)), address)


def test_the_generated_document_validates_against_the_asyncapi_3_0_schema() -> None:
    doc = _document(ShoalSettings(prefix="acme"))
    schema = json.loads(ASYNCAPI_3_SCHEMA.read_text())
    errors = [
        f"{list(e.absolute_path)}: {e.message[:200]}"
        for e in jsonschema.Draft7Validator(schema).iter_errors(doc)
    ]
    assert errors == []
    assert doc["asyncapi"] == "3.0.0"
    # Something invalid is caught (the validator is not vacuous).
    broken = {**doc, "channels": {"x": {"address": 5}}}
    assert not jsonschema.Draft7Validator(schema).is_valid(broken)


def test_every_event_type_and_endpoint_has_its_channel_typed_with_its_model() -> None:
    doc = _document(ShoalSettings(prefix="acme"))
    channels, schemas = doc["channels"], doc["components"]["schemas"]
    for event_type, model in EVENT_TYPES.items():
        channel = channels[f"events.{model.short_type()}"]
        assert (
            channel["address"] == f"acme.events.{{gid}}.{{iid}}.{model.short_type()}.{{publisher}}"
        )
        (ref,) = channel["messages"].values()
        message = doc["components"]["messages"][ref["$ref"].rsplit("/", 1)[1]]
        payload = schemas[message["payload"]["$ref"].rsplit("/", 1)[1]]
        assert payload["properties"]["type"]["const"] == event_type
        assert payload["required"][0] == "specversion"
        data_ref = payload["properties"]["data"]["$ref"].rsplit("/", 1)[1]
        assert data_ref == model.__name__
    for ep in ENDPOINTS:
        name = f"api.{ep.service}.{ep.name}"
        assert channels[name]["address"] == f"acme.api.{ep.service}.{ep.name}"
        operation = doc["operations"][name]
        assert operation["action"] == "receive"
        assert operation["reply"]["channel"] == {"$ref": f"#/channels/{name}.reply"}
        assert ep.request_id in channels[name]["description"]
    receivers = [n for n, op in doc["operations"].items() if op["action"] == "receive"]
    api = sorted(n for n in receivers if n.startswith("api."))
    assert api == sorted(f"api.{ep.service}.{ep.name}" for ep in ENDPOINTS)
    assert len(api) == 26  # 18 query (13 named), 4 interactions, 4 registry


async def test_channels_are_captured_by_exactly_the_streams_shoal_provisions(bus: Bus) -> None:
    # ``bus`` provisioned the topology as ``shoal up`` does; ask the server, not the code.
    doc = _document(bus.settings)
    js = bus.js
    # The server's own list of the streams that capture any subject under the prefix.
    listed = await bus.nc.request(
        "$JS.API.STREAM.NAMES", json.dumps({"subject": f"{bus.settings.prefix}.>"}).encode()
    )
    provisioned = set(json.loads(listed.data)["streams"] or [])
    covered: set[str] = set()
    for title, channel in doc["channels"].items():
        address = channel["address"]
        if address.startswith("_INBOX."):
            assert title.endswith(".reply") and channel["x-shoal-stream"] == ""
            continue
        assert address.startswith(f"{bus.settings.prefix}."), title
        subject = _concrete(address)
        try:
            stream = await js.find_stream_name_by_subject(subject)
        except NotFoundError:
            stream = ""
        assert stream == channel["x-shoal-stream"], (title, subject)
        covered.add(stream)
    assert covered - {""} == provisioned
    assert provisioned == {
        f"{bus.settings.stream_prefix}_{n}"
        for n in ("GOALS", "TASKS", "EVENTS", "CONTROL", "DEADLETTER")
    }

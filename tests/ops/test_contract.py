"""The exported contract: dialect, URN ids, required ``specversion``, and the documents the
ad-hoc writers produce match their declared schemas."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import jsonschema
import pytest
import yaml
from typer.testing import CliRunner

from shoal.gateway.cache import CachedAnswer
from shoal.gateway.ledger import _Doc
from shoal.ops.cli import app
from shoal.ops.contract import KV_DOCUMENTS, contract_json_schemas, export_contract, kv_document_for
from shoal.policy.store import AppliedPolicy
from shoal.projections.endpoints import ExportParams
from shoal.schemas import EVENT_TYPES, BadRequest, parse_request


def test_every_schema_has_the_2020_12_dialect_and_a_unique_urn_id() -> None:
    schemas = contract_json_schemas()
    ids = [s["$id"] for s in schemas.values()]
    assert len(ids) == len(set(ids)) == len(EVENT_TYPES) + len(KV_DOCUMENTS) + 2 * 26
    for name, schema in schemas.items():
        assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema", name
        assert schema["$id"].startswith("urn:shoal:schema:"), name
        jsonschema.Draft202012Validator.check_schema(schema)
    assert schemas["shoal.model.called.json"]["$id"] == "urn:shoal:schema:event:shoal.model.called"
    assert schemas["kv/presence.json"]["$id"] == "urn:shoal:schema:kv:presence"
    assert schemas["api/query.cost.request.json"]["$id"] == (
        "urn:shoal:schema:api:query.cost.request"
    )


def test_every_event_schema_requires_specversion() -> None:
    schemas = contract_json_schemas()
    for event_type in EVENT_TYPES:
        schema = schemas[f"{event_type}.json"]
        assert schema["required"][0] == "specversion"
        validator = jsonschema.Draft202012Validator(schema)
        event = {
            "id": "E1",
            "source": "shoal://core",
            "type": event_type,
            "time": "2026-12-01T00:00:00Z",
            "iid": "I1",
            "data": {},
        }
        errors = [e.message for e in validator.iter_errors(event)]
        assert "'specversion' is a required property" in errors, event_type


def test_export_writes_events_kv_documents_and_endpoint_bodies(tmp_path: Path) -> None:
    paths = export_contract(tmp_path)
    names = {str(p.relative_to(tmp_path)) for p in paths}
    assert {"kv/presence.json", "kv/kill.json", "kv/fleets.json", "kv/leases.slot.json"} <= names
    assert {"api/query.export.request.json", "api/interactions.send.reply.json"} <= names
    assert len(names) == len(EVENT_TYPES) + len(KV_DOCUMENTS) + 52
    export = json.loads((tmp_path / "api/query.export.request.json").read_text())
    assert export["additionalProperties"] is False


def test_kv_documents_are_found_by_bucket_and_key_pattern() -> None:
    assert kv_document_for("kill", "fleet.demo").name == "kill"  # type: ignore[union-attr]
    assert kv_document_for("kill", "all").name == "kill"  # type: ignore[union-attr]
    assert kv_document_for("leases", "demo.worker.0").name == "leases.slot"  # type: ignore[union-attr]
    assert kv_document_for("leases", "_supervisor.s1").name == "leases.supervisor"  # type: ignore[union-attr]
    assert kv_document_for("presence", "demo.worker") is None


def _validate(name: str, doc: object) -> None:
    jsonschema.Draft202012Validator(contract_json_schemas()[name]).validate(doc)


def test_the_ad_hoc_bucket_writers_write_what_their_schemas_declare() -> None:
    ledger = _Doc(Decimal("1.25"), {"c1": ["0.5", 1764547200.0]}, 29408, 3, Decimal("10"))
    _validate("kv/budgets.json", json.loads(ledger.dump()))
    at = datetime(2026, 12, 1, tzinfo=UTC)
    _validate(
        "kv/policies.json",
        json.loads(AppliedPolicy("global", "rules: []", "ann", "", at).to_json()),
    )
    cached = CachedAnswer({"choices": []}, Decimal("0.001"), "m", "p")
    doc = {"body": cached.body, "cost": str(cached.cost_usd), "model": "m", "provider": "p"}
    _validate("kv/responses.json", {**doc, "expires": 1.5})
    with pytest.raises(jsonschema.ValidationError):
        _validate("kv/budgets.json", {"spent": "1", "held": {}, "extra": 1})


def test_parse_request_names_the_unknown_field() -> None:
    with pytest.raises(BadRequest, match=r"^directroy: Extra inputs are not permitted$"):
        parse_request(ExportParams, b'{"directroy": "x"}')
    assert parse_request(ExportParams, b"").directory == "."


def test_shoal_schemas_asyncapi_prints_yaml_and_writes_json(tmp_path: Path) -> None:
    runner = CliRunner()
    printed = runner.invoke(app, ["--prefix", "acme", "schemas", "asyncapi"])
    assert printed.exit_code == 0, printed.output
    doc = yaml.safe_load(printed.output)
    assert doc["asyncapi"] == "3.0.0"
    assert doc["channels"]["goals"]["address"] == "acme.goals.{fleet}"
    out = tmp_path / "asyncapi.json"
    written = runner.invoke(app, ["schemas", "asyncapi", "--format", "json", "--out", str(out)])
    assert written.exit_code == 0, written.output
    assert json.loads(out.read_text())["channels"]["goals"]["address"] == "shoal.goals.{fleet}"
    bad = runner.invoke(app, ["schemas", "asyncapi", "--format", "xml"])
    assert bad.exit_code == 2

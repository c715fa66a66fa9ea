"""JSON Schema export: one document per event type (the envelope with that type's ``data``),
and, given the declarations of :mod:`shoal.schemas.contract`, the key-value documents and the
request and reply bodies of every endpoint."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from shoal.schemas.contract import DIALECT, Endpoint, KVDocument, model_schema, schema_id
from shoal.schemas.envelope import CloudEvent
from shoal.schemas.events import EVENT_TYPES

__all__ = ["contract_schemas", "event_json_schema", "export_json_schemas"]


def event_json_schema(event_type: str) -> dict[str, Any]:
    """The JSON Schema of a full CloudEvent of ``event_type`` (envelope plus its data)."""
    payload = EVENT_TYPES[event_type]
    schema = CloudEvent.model_json_schema()
    data_schema = payload.model_json_schema(ref_template="#/$defs/{model}")
    defs = {**schema.get("$defs", {}), **data_schema.pop("$defs", {})}
    defs.pop("EventData", None)
    schema["$defs"] = defs
    schema["title"] = event_type
    schema["properties"]["type"] = {"const": event_type, "title": "Type", "type": "string"}
    schema["properties"]["data"] = data_schema
    # ``specversion`` has a default in the model (a producer need not set it), but on the
    # wire it is required by CloudEvents 1.0: every event shoal writes carries it.
    schema["required"] = ["specversion", *schema.get("required", [])]
    return {"$schema": DIALECT, "$id": schema_id("event", event_type), **schema}


def contract_schemas(
    endpoints: Iterable[Endpoint] = (), documents: Iterable[KVDocument] = ()
) -> dict[str, dict[str, Any]]:
    """Every schema by file name: ``<type>.json`` per event, ``kv/<bucket>.json``,
    ``api/<service>.<endpoint>.request.json`` and ``….reply.json``."""
    out = {f"{t}.json": event_json_schema(t) for t in sorted(EVENT_TYPES)}
    for doc in documents:
        out[f"kv/{doc.name}.json"] = model_schema(doc.model, doc.id, mode="serialization")
    for ep in endpoints:
        stem = f"api/{ep.service}.{ep.name}"
        out[f"{stem}.request.json"] = model_schema(ep.request, ep.request_id)
        out[f"{stem}.reply.json"] = model_schema(ep.reply, ep.reply_id, mode="serialization")
    return out


def export_json_schemas(
    directory: Path, endpoints: Iterable[Endpoint] = (), documents: Iterable[KVDocument] = ()
) -> list[Path]:
    """Write every schema of :func:`contract_schemas` under ``directory``; return the paths."""
    written = []
    for name, schema in contract_schemas(endpoints, documents).items():
        path = directory / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(schema, indent=2) + "\n")
        written.append(path)
    return written

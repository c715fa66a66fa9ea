"""JSON Schema export: one file per event type, the envelope with that type's ``data``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from shoal.schemas.envelope import CloudEvent
from shoal.schemas.events import EVENT_TYPES

__all__ = ["event_json_schema", "export_json_schemas"]


def event_json_schema(event_type: str) -> dict[str, Any]:
    """The JSON Schema of a full CloudEvent of ``event_type`` (envelope plus its data)."""
    payload = EVENT_TYPES[event_type]
    schema = CloudEvent.model_json_schema()
    data_schema = payload.model_json_schema(ref_template="#/$defs/{model}")
    defs = {**schema.get("$defs", {}), **data_schema.pop("$defs", {})}
    defs.pop("EventData", None)
    schema["$defs"] = defs
    schema["title"] = event_type
    schema["$id"] = f"https://shoal.dev/schemas/{event_type}.json"
    schema["properties"]["type"] = {"const": event_type, "title": "Type", "type": "string"}
    schema["properties"]["data"] = data_schema
    return schema


def export_json_schemas(directory: Path) -> list[Path]:
    """Write ``<type>.json`` for every event type into ``directory``; return the paths."""
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for event_type in sorted(EVENT_TYPES):
        path = directory / f"{event_type}.json"
        path.write_text(json.dumps(event_json_schema(event_type), indent=2) + "\n")
        written.append(path)
    return written

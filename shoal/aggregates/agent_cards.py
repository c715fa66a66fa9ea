"""A2A agent cards of registered agents, built with the A2A SDK's own ``AgentCard`` type.

The card is the A2A 1.0 JSON form (camelCase, as ``google.protobuf.json_format`` writes the
SDK's protobuf ``AgentCard``): name, description (the purpose), version, provider (the
owner), one skill per capability, JSON in and out. shoal agents are reached over NATS, not
A2A's JSON-RPC, so the one interface names the binding ``shoal+nats`` and the task subject
pattern; everything the registry knows that A2A has no field for (lifecycle state, who
certified it and why, the manifest, the capabilities' JSON Schemas, collaborators) is in the
``capabilities.extensions`` entry :data:`REGISTRY_EXTENSION`.
"""

from __future__ import annotations

from typing import Any

from shoal.aggregates.definitions import Definition, VersionEntry
from shoal.errors import NotFound

__all__ = ["CARD_MEDIA", "PROTOCOL_BINDING", "REGISTRY_EXTENSION", "agent_card", "card_version"]

REGISTRY_EXTENSION = "https://shoal.dev/a2a/extensions/registry/v1"
PROTOCOL_BINDING = "shoal+nats"
CARD_MEDIA = "application/json"


def card_version(definition: Definition, version: str | None = None) -> VersionEntry:
    """The version a card shows: the one asked for, else the newest certified one, else the
    newest that is not retired."""
    if version is not None:
        return definition.entry(version)
    certified = [v for v in definition.versions.values() if v.state == "certified"]
    entry = certified[-1] if certified else definition.latest
    if entry is None:
        raise NotFound(f"{definition.kind} {definition.name} has no version")
    return entry


def agent_card(
    definition: Definition, version: str | None = None, *, prefix: str, base_url: str = ""
) -> dict[str, Any]:
    """The card as A2A JSON (a dict ready for ``json.dumps``)."""
    from a2a.types import (
        AgentCapabilities,
        AgentCard,
        AgentExtension,
        AgentInterface,
        AgentProvider,
        AgentSkill,
    )
    from google.protobuf.json_format import MessageToDict  # type: ignore[import-untyped]

    if definition.kind != "agent":
        raise NotFound(f"{definition.name} is a tool: only agents have agent cards")
    entry = card_version(definition, version)
    capabilities: list[dict[str, Any]] = entry.content.get("capabilities") or []
    manifest: dict[str, Any] = entry.content.get("manifest") or {}
    certified = entry.certified_by
    params = {
        "state": entry.state,
        "digest": entry.digest,
        "target": entry.content.get("target"),
        "certified_by": certified.by if certified else None,
        "certified_reason": certified.reason if certified else None,
        "certified_at": certified.at.isoformat() if certified else None,
        "delegates_to": list(manifest.get("delegates") or []),
        "called_by": list((entry.content.get("collaborators") or {}).get("called_by") or []),
        "manifest": manifest,
        "schemas": {
            c["name"]: {"input": c.get("input_schema"), "output": c.get("output_schema")}
            for c in capabilities
        },
        "versions": {v.version: v.state for v in definition.versions.values()},
    }
    card = AgentCard(
        name=definition.name,
        description=definition.purpose or f"shoal agent {definition.name}",
        version=entry.version,
        provider=AgentProvider(organization=definition.owner or "unowned", url=base_url),
        supported_interfaces=[
            AgentInterface(
                url=f"nats:{prefix}.tasks.<fleet>.<capability>",
                protocol_binding=PROTOCOL_BINDING,
                protocol_version="1.0",
            )
        ],
        capabilities=AgentCapabilities(
            streaming=False,
            push_notifications=False,
            extensions=[
                AgentExtension(
                    uri=REGISTRY_EXTENSION,
                    description="shoal registry: lifecycle, certification, manifest, schemas",
                    required=False,
                    params=_json_safe(params),
                )
            ],
        ),
        default_input_modes=[CARD_MEDIA],
        default_output_modes=[CARD_MEDIA],
        skills=[
            AgentSkill(
                id=c["name"],
                name=c["name"],
                description=c.get("description") or f"{c['name']} tasks",
                tags=[c["name"], definition.name],
                input_modes=[CARD_MEDIA],
                output_modes=[CARD_MEDIA],
            )
            for c in capabilities
        ],
    )
    doc: dict[str, Any] = MessageToDict(card)
    return doc


def _json_safe(value: Any) -> Any:
    """Only what a protobuf ``Struct`` holds: dicts, lists, str, float, bool, None."""
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, int | float):
        return float(value)
    return str(value)

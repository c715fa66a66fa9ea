"""Searching the registry: one row per registered version, filtered by text, capability,
lifecycle state and kind (what ``shoal registry ls|search`` and the registry service answer)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from shoal.aggregates.definitions import Definition, Kind
from shoal.errors import InvalidOption
from shoal.schemas.registry import LIFECYCLE, LifecycleState

__all__ = ["RegistryRow", "check_state", "search"]


@dataclass(frozen=True)
class RegistryRow:
    """One version of one agent or tool."""

    kind: Kind
    name: str
    version: str
    state: LifecycleState
    owner: str
    purpose: str
    capabilities: tuple[str, ...]
    by: str
    """Who moved it into its current state."""
    reason: str

    def to_json(self) -> dict[str, Any]:
        return {**self.__dict__, "capabilities": list(self.capabilities)}


def check_state(state: str | None) -> LifecycleState | None:
    """``state`` if it is a lifecycle state; :class:`InvalidOption` naming the choices."""
    if state is None or state in LIFECYCLE:
        return state
    raise InvalidOption(f"--state {state!r} is not one of {', '.join(LIFECYCLE)}")


def _capabilities(content: dict[str, Any], kind: Kind, name: str) -> tuple[str, ...]:
    if kind == "tool":
        return (name,)
    return tuple(c["name"] for c in content.get("capabilities") or [])


def search(
    definitions: list[Definition],
    text: str = "",
    *,
    capability: str | None = None,
    state: str | None = None,
    kind: Kind | None = None,
) -> list[RegistryRow]:
    """Versions whose definition matches ``text`` (case-insensitive, in the name, purpose,
    owner, capability names or descriptions) and that serve ``capability`` and are in
    ``state``; agents then tools, by name, versions in registration order."""
    wanted = check_state(state)
    needle = text.strip().lower()
    rows: list[RegistryRow] = []
    for d in definitions:
        if kind is not None and d.kind != kind:
            continue
        for entry in d.versions.values():
            caps = _capabilities(entry.content, d.kind, d.name)
            if capability is not None and capability not in caps:
                continue
            if wanted is not None and entry.state != wanted:
                continue
            if needle:
                described = [
                    d.name,
                    d.purpose,
                    d.owner,
                    *caps,
                    *(c.get("description") or "" for c in entry.content.get("capabilities") or []),
                ]
                if not any(needle in part.lower() for part in described):
                    continue
            last = entry.history[-1]
            rows.append(
                RegistryRow(
                    d.kind,
                    d.name,
                    entry.version,
                    entry.state,
                    d.owner,
                    d.purpose,
                    caps,
                    last.by,
                    last.reason,
                )
            )
    return rows

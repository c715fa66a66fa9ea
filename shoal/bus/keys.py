"""Keys and values of shoal's key-value buckets: the contract between writers and watchers.

- **kill** bucket (written by operators and the core, watched by every gateway): one key per
  scope, ``<scope>.<name>`` (``instance.<id>``, ``session.<iid>``, ``goal.<gid>``,
  ``fleet.<name>``, ``tool.<name>``, ``model.<name>``, ``principal.<name>``, ``mcp.<server>``
  for an MCP server behind the gateway) or ``all``;
  the value is a :class:`KillSwitch`. Deleting the key lifts the switch.
- **presence** bucket (written by each instance every ``presence_ttl_s / 3``): key
  ``<fleet>.<agent>.<instance>``, value :class:`Presence`; the bucket's TTL removes the key of
  an instance that stopped heartbeating.
- **fleets** bucket (written by the core from the Fleet aggregate, watched by supervisors):
  key ``<fleet>``, value a JSON desired-state document (see ``shoal.schemas`` fleet specs).
- **keys** bucket (``shoal keys``, read by gateways): key ``<key id>``, value a gateway key
  record (the secret's hash, never the secret; see :mod:`shoal.gateway.keys`).
- **budgets** bucket (gateways): key ``<scope>.<name>``, value a reservation ledger, changed
  only with compare-and-set (see :mod:`shoal.gateway.ledger`).
- **responses** bucket (gateways): key ``<fleet>.<request hash>``, a cached response (TTL).
- **leases** bucket (supervisors): key ``<fleet>.<agent>.<slot>``, value :class:`Lease`,
  claimed with create/update compare-and-set and kept alive inside the bucket's TTL.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from shoal.bus.subjects import check_token

__all__ = [
    "KILL_SCOPES",
    "KillScope",
    "KillSwitch",
    "Lease",
    "Presence",
    "kill_key",
    "lease_key",
    "parse_kill_key",
    "presence_key",
]

KillScope = Literal[
    "instance", "session", "goal", "fleet", "tool", "model", "principal", "mcp", "all"
]
KILL_SCOPES: tuple[KillScope, ...] = (
    "instance",
    "session",
    "goal",
    "fleet",
    "tool",
    "model",
    "principal",
    "mcp",
    "all",
)


def kill_key(scope: KillScope, name: str | None = None) -> str:
    """``<scope>.<name>``, or ``all`` for the platform-wide switch."""
    if scope == "all":
        return "all"
    if scope not in KILL_SCOPES:
        raise ValueError(f"unknown kill scope {scope!r}")
    return f"{scope}.{check_token(name or '', scope)}"


def parse_kill_key(key: str) -> tuple[KillScope, str | None]:
    """Inverse of :func:`kill_key`."""
    if key == "all":
        return "all", None
    scope, _, name = key.partition(".")
    if scope not in KILL_SCOPES or not name:
        raise ValueError(f"{key!r} is not a kill key")
    return scope, name


def presence_key(fleet: str, agent: str, instance: str) -> str:
    fleet, agent = check_token(fleet, "fleet"), check_token(agent, "agent")
    return f"{fleet}.{agent}.{check_token(instance, 'instance')}"


def lease_key(fleet: str, agent: str, slot: int) -> str:
    return f"{check_token(fleet, 'fleet')}.{check_token(agent, 'agent')}.{slot}"


class KillSwitch(BaseModel):
    """Why and by whom a scope was killed."""

    model_config = ConfigDict(extra="ignore")
    scope: KillScope
    name: str | None = None
    reason: str = ""
    by: str
    at: datetime


class Presence(BaseModel):
    """An instance's heartbeat: who it is, where it runs, what it is doing."""

    model_config = ConfigDict(extra="ignore")
    instance: str
    fleet: str
    agent: str
    version: str
    host: str
    pid: int
    started_at: datetime
    heartbeat_at: datetime
    capabilities: list[str] = Field(default_factory=list)
    current_sessions: list[str] = Field(default_factory=list)
    supervisor: str | None = None
    slot: int | None = None


class Lease(BaseModel):
    """A supervisor's claim on one instance slot of a fleet's agent."""

    model_config = ConfigDict(extra="ignore")
    supervisor: str
    host: str
    instance: str | None = None
    renewed_at: datetime

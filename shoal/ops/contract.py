"""The whole wire contract in one place: every endpoint and key-value document, the JSON
Schema export and the AsyncAPI document.

Each part of shoal declares what it serves next to the code that serves it (the query
service's endpoints in :mod:`shoal.projections.endpoints`, the interactions' in
:mod:`shoal.aggregates.interactions`, the bucket documents in their writers' modules); only
``ops`` sees them all, so the catalogue is assembled here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from shoal.aggregates.interactions import INTERACTION_ENDPOINTS
from shoal.aggregates.registry_service import REGISTRY_ENDPOINTS
from shoal.bus import KillSwitch, Presence, ShoalSettings
from shoal.bus.asyncapi import asyncapi_document
from shoal.gateway.cache import CachedResponse
from shoal.gateway.keys import VirtualKey
from shoal.gateway.ledger import BudgetDocument
from shoal.ops.slots import SlotLease, SupervisorLease
from shoal.policy.approvals import ApprovalState
from shoal.policy.store import PolicyDocument
from shoal.projections.endpoints import QUERY_ENDPOINTS
from shoal.schemas import Endpoint, KVDocument, contract_schemas, export_json_schemas
from shoal.schemas.fleet import FleetDesired

__all__ = [
    "ENDPOINTS",
    "KV_DOCUMENTS",
    "contract_asyncapi",
    "contract_json_schemas",
    "export_contract",
    "kv_document_for",
]

ENDPOINTS: tuple[Endpoint, ...] = (*QUERY_ENDPOINTS, *INTERACTION_ENDPOINTS, *REGISTRY_ENDPOINTS)
"""Every NATS micro endpoint shoal serves."""

KV_DOCUMENTS: tuple[KVDocument, ...] = (
    KVDocument(
        "fleets", "fleets", FleetDesired, ("<fleet>",), "desired state, written by the core"
    ),
    KVDocument(
        "kill",
        "kill",
        KillSwitch,
        ("<scope>.<name>", "all"),
        "a kill switch; deleting the key lifts it",
    ),
    KVDocument(
        "presence",
        "presence",
        Presence,
        ("<fleet>.<agent>.<instance>",),
        "an instance's heartbeat (the bucket's TTL removes a silent one)",
    ),
    KVDocument(
        "leases.slot",
        "leases",
        SlotLease,
        ("<fleet>.<agent>.<slot>",),
        "a supervisor's claim on one instance slot",
    ),
    KVDocument(
        "leases.supervisor",
        "leases",
        SupervisorLease,
        ("_supervisor.<id>",),
        "a supervisor's own lease: where it runs and how full it is",
    ),
    KVDocument("policies", "policies", PolicyDocument, ("global", "fleet.<fleet>"), "a policy"),
    KVDocument("approvals", "approvals", ApprovalState, ("<id>",), "an approval and its state"),
    KVDocument("keys", "keys", VirtualKey, ("<id>",), "a gateway key (its secret's hash only)"),
    KVDocument(
        "budgets", "budgets", BudgetDocument, ("<scope>.<name>",), "a gateway reservation ledger"
    ),
    KVDocument(
        "responses", "responses", CachedResponse, ("<fleet>.<hash>",), "a cached model answer"
    ),
)
"""The document of every key of every bucket in the topology."""


def kv_document_for(bucket: str, key: str) -> KVDocument | None:
    """The declared document of ``key`` in the topology bucket ``bucket`` (its field name)."""
    return next((d for d in KV_DOCUMENTS if d.bucket == bucket and d.matches(key)), None)


def export_contract(directory: Path) -> list[Path]:
    """Write every event, key-value and endpoint schema under ``directory``."""
    return export_json_schemas(directory, ENDPOINTS, KV_DOCUMENTS)


def contract_json_schemas() -> dict[str, dict[str, Any]]:
    """Every schema of the contract, by its file name under an export directory."""
    return contract_schemas(ENDPOINTS, KV_DOCUMENTS)


def contract_asyncapi(settings: ShoalSettings) -> dict[str, Any]:
    """The AsyncAPI 3.0 document of the contract for ``settings``' prefix."""
    return asyncapi_document(settings, ENDPOINTS)

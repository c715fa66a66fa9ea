"""The interactions endpoints read requests like every other endpoint: unknown fields are
refused naming them, and each endpoint's metadata names its schemas."""

from __future__ import annotations

import json

import pytest

from shoal.aggregates.interactions import INTERACTION_ENDPOINTS, MICRO_NAME, InteractionsService
from shoal.bus import Bus

pytestmark = pytest.mark.timeout(60)


async def _error(bus: Bus, endpoint: str, payload: bytes) -> tuple[str, str]:
    reply = await bus.nc.request(bus.subjects.api("interactions", endpoint), payload, timeout=5)
    headers = reply.headers or {}
    return headers.get("Nats-Service-Error-Code", ""), headers.get("Nats-Service-Error", "")


async def test_an_unknown_field_is_refused_naming_it_and_metadata_names_the_schemas(
    bus: Bus,
) -> None:
    service = InteractionsService(bus)
    await service.start()
    try:
        body = {"iid": "I1", "text": "hi", "by": "ann", "priority": "high"}
        assert await _error(bus, "send", json.dumps(body).encode()) == (
            "400",
            "priority: Extra inputs are not permitted",
        )
        assert await _error(bus, "pending", b"[1]") == (
            "400",
            "the request must be a JSON object of parameters",
        )
        unknown_session = {"iid": "I1", "text": "hi", "by": "ann"}
        code, text = await _error(bus, "send", json.dumps(unknown_session).encode())
        assert (code, text) == ("404", "no session 'I1' on the event log")
        pending = await bus.nc.request(bus.subjects.api("interactions", "pending"), b"", timeout=5)
        assert json.loads(pending.data) == {"approvals": []}
        info = json.loads((await bus.nc.request(f"$SRV.INFO.{MICRO_NAME}", b"", timeout=5)).data)
        metadata = {e["name"]: e["metadata"] for e in info["endpoints"]}
        assert metadata == {
            ep.name: {
                "request_schema": f"urn:shoal:schema:api:interactions.{ep.name}.request",
                "reply_schema": f"urn:shoal:schema:api:interactions.{ep.name}.reply",
            }
            for ep in INTERACTION_ENDPOINTS
        }
    finally:
        await service.stop()

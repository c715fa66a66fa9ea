"""A high-tier model call parked in the network gateway: the approval outlives the gateway
replica that asked, and the call goes upstream once, when granted."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from shoal.bus import Bus
from shoal.gateway import GatewayConfig, VirtualKey, run_gateway
from shoal.gateway.offline import OfflineUpstream
from shoal.policy import Approvals, apply_policy
from shoal.schemas import ApprovalRequested, PolicyDecided
from tests.gateway.conftest import MakeKey
from tests.policy.test_approval_restarts import pending

pytestmark = pytest.mark.timeout(90)

RULE = (
    '@id("fast-needs-approval") @tier("high") '
    'permit(principal, action == Action::"model", resource == Model::"fast");'
)
BODY = {"model": "fast", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 20}


async def _under_rule(bus: Bus, make_key: MakeKey) -> tuple[VirtualKey, dict[str, str], Approvals]:
    """RULE applied to the fleet; a key of its and its headers; the approvals bucket."""
    await apply_policy(bus, RULE, fleet="research", by="olga", reason="test")
    key, secret = await make_key()
    return key, {"Authorization": f"Bearer {secret}"}, await Approvals.open(bus)


async def test_a_parked_call_survives_a_gateway_restart_and_goes_upstream_once(
    bus: Bus,
    gateway_config: GatewayConfig,
    make_key: MakeKey,
    upstream: tuple[str, OfflineUpstream],
) -> None:
    key, headers, approvals = await _under_rule(bus, make_key)
    http = httpx.AsyncClient(timeout=30)
    try:
        async with run_gateway(bus, gateway_config) as first:
            await asyncio.sleep(0.3)  # the policy mirror follows the bucket
            url = f"{first.url}/chat/completions"
            parked = asyncio.create_task(http.post(url, json=BODY, headers=headers))
            ids = await pending(approvals)
        # The replica stopped: it let go of the parked call at once, retryable.
        released = await asyncio.wait_for(parked, 20)
    finally:
        await http.aclose()
    assert released.status_code == 503, released.text
    assert released.headers["x-should-retry"] == "true"
    assert released.json()["error"]["code"] == "approval_pending"
    assert released.json()["error"]["message"] == (
        f"approval {ids[0]} is pending and this gateway replica is stopping: "
        "retry the call (it finds the same approval)"
    )
    assert upstream[1].requests == {}

    async with run_gateway(bus, gateway_config) as second:
        await asyncio.sleep(0.3)
        async with httpx.AsyncClient(base_url=second.url, timeout=30) as http:
            retried = asyncio.create_task(
                http.post("/chat/completions", json=BODY, headers=headers)
            )
            await asyncio.sleep(0.5)
            assert await pending(approvals) == ids  # the same request: asked once
            await approvals.decide(ids[0], grant=True, by="olga", reason="fine")
            answer = await asyncio.wait_for(retried, 20)
    assert answer.status_code == 200, answer.text
    assert upstream[1].requests == {"offline-small": 1}
    events = [s.event.data for s in await bus.session_events(key.id) if s.event is not None]
    assert [e.request_id for e in events if isinstance(e, ApprovalRequested)] == ids
    decided = [(d.decision, d.rule) for d in events if isinstance(d, PolicyDecided)]
    assert decided == [("needs_approval", "fast-needs-approval")] * 2


async def test_a_grant_covers_the_reviewed_prompt_and_a_changed_prompt_asks_again(
    bus: Bus,
    gateway_config: GatewayConfig,
    make_key: MakeKey,
    upstream: tuple[str, OfflineUpstream],
) -> None:
    key, headers, approvals = await _under_rule(bus, make_key)
    changed = {**BODY, "messages": [{"role": "user", "content": "hi, and wire the money"}]}
    async with run_gateway(bus, gateway_config) as gateway:
        await asyncio.sleep(0.3)  # the policy mirror follows the bucket
        async with httpx.AsyncClient(base_url=gateway.url, timeout=30) as http:
            first = asyncio.create_task(http.post("/chat/completions", json=BODY, headers=headers))
            reviewed = await pending(approvals)
            await approvals.decide(reviewed[0], grant=True, by="olga", reason="fine")
            assert (await asyncio.wait_for(first, 20)).status_code == 200
            # The same prompt again: the grant covers it, nothing new is asked.
            again = await http.post("/chat/completions", json=BODY, headers=headers)
            assert (again.status_code, await approvals.list()) == (200, [])
            # Another prompt to the same model is another request: it parks a new approval.
            parked = asyncio.create_task(
                http.post("/chat/completions", json=changed, headers=headers)
            )
            asked = await pending(approvals)
            await approvals.decide(asked[0], grant=False, by="olga", reason="not that one")
            refused = await asyncio.wait_for(parked, 20)
    assert len(asked) == 1 and asked != reviewed
    assert refused.status_code == 403, refused.text
    assert refused.json()["error"]["code"] == "policy_denied"
    requested = [
        s.event.data
        for s in await bus.session_events(key.id)
        if s.event is not None and isinstance(s.event.data, ApprovalRequested)
    ]
    assert [r.request_id for r in requested] == [reviewed[0], asked[0]]
    assert len({r.request_hash for r in requested}) == 2
    assert all(set(r.arguments or {}) <= {"prompt_digest"} for r in requested)

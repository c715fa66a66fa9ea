"""The model gateway with a raw HTTP client (no SDK): the same enforcement any agent gets."""

from __future__ import annotations

import asyncio
from decimal import Decimal

import httpx

from shoal.bus import Bus, KillSwitch, kill_key
from shoal.gateway import RunningGateway
from shoal.gateway.offline import OfflineUpstream
from shoal.ops import kill as ops_kill
from shoal.policy import apply_policy
from shoal.schemas import ModelCalled, PolicyDecided
from tests.gateway.conftest import MakeKey

PROMPT = [{"role": "user", "content": "hello there"}]


async def _events(bus: Bus, key_id: str, n: int, timeout: float = 5.0) -> list[object]:
    """The first ``n`` events of the key's own session (IID = key id), in order."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        stored = await bus.session_events(key_id)
        if len(stored) >= n or asyncio.get_running_loop().time() > deadline:
            return [s.event.data for s in stored if s.event is not None]
        await asyncio.sleep(0.05)


async def test_a_call_is_forwarded_and_recorded_with_the_upstreams_usage(
    bus: Bus, gateway: RunningGateway, make_key: MakeKey, upstream: tuple[str, OfflineUpstream]
) -> None:
    key, secret = await make_key()
    async with httpx.AsyncClient(base_url=gateway.url, timeout=10) as http:
        r = await http.post(
            "/chat/completions",
            json={"model": "fast", "messages": PROMPT, "max_tokens": 50},
            headers={"Authorization": f"Bearer {secret}"},
        )
    assert r.status_code == 200, r.text
    usage = r.json()["usage"]
    assert usage["prompt_tokens"] == 10 and usage["completion_tokens"] == 4  # offline rules
    assert upstream[1].requests == {"offline-small": 1}
    (called,) = await _events(bus, key.id, 1)
    assert isinstance(called, ModelCalled)
    assert (called.model, called.provider) == ("offline-small", "fake")
    assert (called.input_tokens, called.output_tokens, called.cached_tokens) == (10, 4, 5)
    # 5 uncached x 0.10 + 5 cached x 0.05 + 4 output x 0.40, per million tokens
    assert called.reported_cost_usd == Decimal("0.00000235")
    stored = (await bus.session_events(key.id))[0].event
    assert stored is not None
    assert (stored.fleet, stored.agent, stored.instance) == ("research", "writer", f"key-{key.id}")
    assert stored.source == f"shoal://gateway/{gateway.replica}"


async def test_a_bad_key_is_refused_with_401_in_openais_shape(gateway: RunningGateway) -> None:
    async with httpx.AsyncClient(base_url=gateway.url, timeout=10) as http:
        r = await http.post(
            "/chat/completions",
            json={"model": "fast", "messages": PROMPT},
            headers={"Authorization": "Bearer sk-shoal-01ABC-nope"},
        )
    assert r.status_code == 401
    assert r.json()["error"]["code"] == "invalid_api_key"


async def test_kill_instance_and_kill_model_refuse_before_the_upstream(
    bus: Bus, gateway: RunningGateway, make_key: MakeKey, upstream: tuple[str, OfflineUpstream]
) -> None:
    key, secret = await make_key(instance="inst-1")
    body = {"model": "fast", "messages": PROMPT, "max_tokens": 20}
    auth = {"Authorization": f"Bearer {secret}"}
    async with httpx.AsyncClient(base_url=gateway.url, timeout=10) as http:
        assert (await http.post("/chat/completions", json=body, headers=auth)).status_code == 200
        await ops_kill.kill(bus, "instance", "inst-1", by="tester", reason="test")
        await _until_killed(gateway, kill_key("instance", "inst-1"))
        r = await http.post("/chat/completions", json=body, headers=auth)
        assert r.status_code == 403 and r.json()["error"]["code"] == "killed"
        await ops_kill.unkill(bus, "instance", "inst-1", by="tester")
        await ops_kill.kill(bus, "model", "fast", by="tester")
        await _until_killed(gateway, kill_key("model", "fast"))
        r = await http.post("/chat/completions", json=body, headers=auth)
        assert r.status_code == 403 and "model.fast" in r.json()["error"]["message"]
    assert upstream[1].requests == {"offline-small": 1}
    events = await _events(bus, key.id, 3)
    refusals = [e for e in events if isinstance(e, PolicyDecided)]
    assert [(d.rule, d.decision, d.target) for d in refusals] == [
        ("kill.instance.inst-1", "deny", "fast"),
        ("kill.model.fast", "deny", "fast"),
    ]


async def test_a_model_outside_the_manifest_is_refused_and_recorded(
    bus: Bus, gateway: RunningGateway, make_key: MakeKey, upstream: tuple[str, OfflineUpstream]
) -> None:
    key, secret = await make_key(models=("fast",))
    async with httpx.AsyncClient(base_url=gateway.url, timeout=10) as http:
        r = await http.post(
            "/chat/completions",
            json={"model": "big", "messages": PROMPT},
            headers={"Authorization": f"Bearer {secret}"},
        )
        listed = await http.get("/models", headers={"Authorization": f"Bearer {secret}"})
    assert r.status_code == 403 and r.json()["error"]["code"] == "model_not_allowed"
    assert [m["id"] for m in listed.json()["data"]] == ["fast"]
    assert upstream[1].requests.total() == 0
    (decided,) = await _events(bus, key.id, 1)
    assert isinstance(decided, PolicyDecided) and decided.rule == "manifest.model"


async def test_the_budget_refuses_the_call_whose_reservation_would_exceed_it(
    bus: Bus, gateway: RunningGateway, make_key: MakeKey, upstream: tuple[str, OfflineUpstream]
) -> None:
    # Reservation: prompt bound 3 + 11 bytes + 4 = 18 tokens, + max_tokens 1000, at gpt-4o-mini
    # prices (0.15 in, 0.60 out per 1M) = 0.0000027 + 0.0006 = $0.0006027 per call.
    # The second: spent $0.000003525 + $0.0006027 > $0.000605.
    key, secret = await make_key(budget="0.000605")
    body = {"model": "big", "messages": PROMPT, "max_tokens": 1000}
    auth = {"Authorization": f"Bearer {secret}"}
    async with httpx.AsyncClient(base_url=gateway.url, timeout=10) as http:
        first = await http.post("/chat/completions", json=body, headers=auth)
        assert first.status_code == 200, first.text
        await gateway.model.drain()
        second = await http.post("/chat/completions", json=body, headers=auth)
    assert second.status_code == 429
    assert second.json()["error"]["code"] == "insufficient_quota"
    assert second.headers["x-should-retry"] == "false"
    # The first call fell back from the provider that is down; the second reached none.
    assert upstream[1].requests == {"gpt-4o-mini": 1}
    spent, held = await gateway.model.ledger.spent(f"key.{key.id}")
    # 10 input (5 cached) and 4 output tokens at gpt-4o-mini prices
    assert (spent, held) == (Decimal("0.000003525"), Decimal(0))
    events = await _events(bus, key.id, 2)
    assert [type(e).__name__ for e in events] == ["ModelCalled", "PolicyDecided"]
    assert isinstance(events[1], PolicyDecided) and events[1].rule == "budget.key"


async def test_the_rate_limit_refuses_the_call_past_the_keys_rpm(
    bus: Bus, gateway: RunningGateway, make_key: MakeKey
) -> None:
    _, secret = await make_key(rpm=2)
    body = {"model": "fast", "messages": PROMPT, "max_tokens": 5}
    auth = {"Authorization": f"Bearer {secret}", "X-Shoal-Cache": "bypass"}
    async with httpx.AsyncClient(base_url=gateway.url, timeout=10) as http:
        codes = [
            (await http.post("/chat/completions", json=body, headers=auth)).status_code
            for _ in range(3)
        ]
    assert codes == [200, 200, 429]


async def test_streaming_relays_chunks_and_records_the_final_usage(
    bus: Bus, gateway: RunningGateway, make_key: MakeKey
) -> None:
    key, secret = await make_key()
    body = {"model": "fast", "messages": PROMPT, "max_tokens": 50, "stream": True}
    text, usage = "", None
    async with (
        httpx.AsyncClient(base_url=gateway.url, timeout=10) as http,
        http.stream(
            "POST", "/chat/completions", json=body, headers={"Authorization": f"Bearer {secret}"}
        ) as r,
    ):
        assert r.status_code == 200
        import json

        async for line in r.aiter_lines():
            if line.startswith("data: {"):
                chunk = json.loads(line[6:])
                usage = chunk.get("usage") or usage
                for choice in chunk["choices"]:
                    text += choice["delta"].get("content") or ""
    assert text == "ok: hello there"
    assert usage is not None and usage["completion_tokens"] == 4
    (called,) = await _events(bus, key.id, 1)
    assert isinstance(called, ModelCalled)
    assert (called.input_tokens, called.output_tokens) == (10, 4)


async def _until_killed(gateway: RunningGateway, key: str) -> None:
    for _ in range(100):
        if gateway.model.kills.active.get(key) is not None:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"{key} never reached the gateway")


_ = KillSwitch


async def test_an_applied_policy_denies_in_the_gateway_before_the_upstream(
    bus: Bus, gateway: RunningGateway, make_key: MakeKey, upstream: tuple[str, OfflineUpstream]
) -> None:
    rule = (
        '@id("interns-not-fast") forbid(principal == Principal::"intern", '
        'action == Action::"model", resource == Model::"fast");'
    )
    await apply_policy(bus, rule, fleet="research", by="olga", reason="test")
    await asyncio.sleep(0.3)  # the gateway's policy mirror follows the bucket
    intern_key, intern = await make_key(principal="intern")
    _, alice = await make_key(principal="alice")
    async with httpx.AsyncClient(base_url=gateway.url, timeout=10) as http:
        body = {"model": "fast", "messages": PROMPT, "max_tokens": 20}
        refused = await http.post(
            "/chat/completions", json=body, headers={"Authorization": f"Bearer {intern}"}
        )
        allowed = await http.post(
            "/chat/completions", json=body, headers={"Authorization": f"Bearer {alice}"}
        )
    assert refused.status_code == 403, refused.text
    assert refused.json()["error"]["code"] == "policy_denied"
    assert allowed.status_code == 200, allowed.text
    assert upstream[1].requests == {"offline-small": 1}  # only alice's call went upstream
    decided = [
        s.event.data
        for s in await bus.session_events(intern_key.id)
        if s.event is not None and isinstance(s.event.data, PolicyDecided)
    ]
    assert [(d.decision, d.rule) for d in decided] == [("deny", "interns-not-fast")]
    assert decided[0].policy_version is not None
    assert decided[0].policy_version.startswith("fleet.research@")

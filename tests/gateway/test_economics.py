"""Routing, fallback and the response cache, and the cache's figures in ``shoal cost``."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from decimal import Decimal

import httpx
import pytest

from shoal.aggregates import run_core
from shoal.bus import Bus, ShoalSettings
from shoal.gateway import RunningGateway, run_gateway
from shoal.gateway.offline import OfflineUpstream
from tests.gateway.conftest import MakeKey, config_for, model_calls, shoal_cli

PROMPT = [{"role": "user", "content": "hello there"}]


@pytest.fixture
async def routed(bus: Bus, upstream: tuple[str, OfflineUpstream]) -> AsyncIterator[RunningGateway]:
    upstream[1].fail = {"flaky": 503}
    config = config_for(
        upstream[0],
        models={
            "fast": {"targets": ["fake/offline-small"]},
            "sturdy": {"targets": ["fake/flaky", "fake/gpt-4o-mini"]},
            "routed": {
                "targets": ["fake/offline-small", "fake/gpt-4o"],
                "task_classes": {"code": ["fake/gpt-4o"]},
            },
            "fake/offline-small": {"capabilities": ["chat"]},  # no tools
        },
    )
    async with run_gateway(bus, config) as running:
        yield running


async def _post(
    http: httpx.AsyncClient, secret: str, body: dict[str, object], **headers: str
) -> httpx.Response:
    return await http.post(
        "/chat/completions", json=body, headers={"Authorization": f"Bearer {secret}", **headers}
    )


async def test_fallback_routing_by_task_class_and_by_capability(
    bus: Bus, routed: RunningGateway, make_key: MakeKey, upstream: tuple[str, OfflineUpstream]
) -> None:
    key, secret = await make_key(models=("sturdy", "routed"))
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    async with httpx.AsyncClient(base_url=routed.url, timeout=10) as http:
        sturdy = {"model": "sturdy", "messages": PROMPT, "max_tokens": 9}
        assert (await _post(http, secret, sturdy)).status_code == 200
        plain = {"model": "routed", "messages": PROMPT, "max_tokens": 8}
        assert (await _post(http, secret, plain)).status_code == 200
        coded = {"model": "routed", "messages": PROMPT, "max_tokens": 7}
        assert (await _post(http, secret, coded, **{"X-Shoal-Task-Class": "code"})).is_success
        with_tools = {"model": "routed", "messages": PROMPT, "max_tokens": 6, "tools": tools}
        assert (await _post(http, secret, with_tools)).status_code == 200
    # flaky answered 503 and the call fell back; "code" and a tools request skip offline-small
    assert [b["model"] for b in upstream[1].bodies] == [
        "flaky",
        "gpt-4o-mini",
        "offline-small",
        "gpt-4o",
        "gpt-4o",
    ]
    calls = await model_calls(bus, key.id, 4)
    assert [c.model for c in calls] == ["gpt-4o-mini", "offline-small", "gpt-4o", "gpt-4o"]


async def test_the_cache_answers_an_identical_request_per_fleet_and_shoal_cost_shows_it(
    bus: Bus,
    settings: ShoalSettings,
    gateway: RunningGateway,
    make_key: MakeKey,
    upstream: tuple[str, OfflineUpstream],
) -> None:
    key, secret = await make_key()
    other, other_secret = await make_key(fleet="elsewhere")
    body = {"model": "fast", "messages": PROMPT, "max_tokens": 50, "temperature": 0}
    # The same request with its fields in another order (and a transport-only field) is
    # the same normalized request.
    reordered = {"temperature": 0, "max_tokens": 50, "messages": PROMPT, "model": "fast"}
    async with httpx.AsyncClient(base_url=gateway.url, timeout=10) as http:
        first = await _post(http, secret, body)
        await gateway.model.drain()  # the answer is stored
        second = await _post(http, secret, {**reordered, "user": "someone"})
        bypass = await _post(http, secret, body, **{"X-Shoal-Cache": "bypass"})
        elsewhere = await _post(http, other_secret, body)
    assert first.json()["choices"] == second.json()["choices"]
    assert [r.status_code for r in (first, second, bypass, elsewhere)] == [200] * 4
    assert upstream[1].requests == {"offline-small": 3}  # the second never reached it
    calls = await model_calls(bus, key.id, 3)
    assert [(c.provider, c.input_tokens) for c in calls] == [
        ("fake", 10),
        ("cache", 0),
        ("fake", 10),
    ]
    saved = calls[0].reported_cost_usd
    assert saved == Decimal("0.00000235") and calls[1].reported_cost_usd == saved
    await model_calls(bus, other.id, 1)

    await asyncio.wait_for(
        run_core(settings, settings.nats_url or "", asyncio.Event(), until_idle=True), 60
    )
    answer = json.loads(shoal_cli(settings, "cost", "--cache", "--json"))
    rows = {r["fleet"]: r for r in answer["rows"]}
    assert (rows["research"]["calls"], rows["research"]["hits"]) == (3, 1)
    assert Decimal(rows["research"]["saved_usd"]) == saved
    assert (rows["elsewhere"]["calls"], rows["elsewhere"]["hits"]) == (1, 0)
    total = answer["total"]
    assert (total["calls"], total["hits"], Decimal(total["hit_rate"])) == (4, 1, Decimal("0.25"))
    by_provider = json.loads(shoal_cli(settings, "cost", "--by", "provider", "--json"))
    costs = {r["key"][0]: Decimal(r["cost_usd"]) for r in by_provider["rows"]}
    assert costs == {"fake": 3 * saved, "cache": Decimal(0)}

"""An unmodified pydantic-ai agent (from PyPI) pointed at the gateway by its environment."""

from __future__ import annotations

import asyncio
from decimal import Decimal

import pytest
from pydantic_ai import Agent
from pydantic_ai.exceptions import ModelHTTPError
from pydantic_ai.models.openai import OpenAIChatModel
from pydantic_ai.providers.openai import OpenAIProvider
from pydantic_ai.settings import ModelSettings

from shoal.aggregates.pricing import PriceTable
from shoal.bus import Bus, ShoalSettings
from shoal.gateway import RunningGateway
from shoal.gateway.offline import OfflineUpstream
from shoal.gateway.request import prompt_bound
from tests.gateway.conftest import MakeKey, cost_by_agent, gateway_price, model_calls, shoal_cli

SETTINGS: ModelSettings = {"max_tokens": 20}


def _agent(monkeypatch: pytest.MonkeyPatch, url: str, secret: str) -> Agent[None, str]:
    # What a supervised instance gets in its environment; the framework reads it itself.
    monkeypatch.setenv("OPENAI_BASE_URL", url)
    monkeypatch.setenv("OPENAI_API_KEY", secret)
    model = OpenAIChatModel("fast", provider=OpenAIProvider())
    return Agent(model, output_type=str, model_settings=SETTINGS)


async def test_its_calls_and_stream_appear_in_shoal_cost_with_the_gateways_figures(
    bus: Bus,
    settings: ShoalSettings,
    gateway: RunningGateway,
    make_key: MakeKey,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    key, secret = await make_key(fleet="pyd", agent="helper", instance="pyd-1")
    agent = _agent(monkeypatch, gateway.url, secret)
    first = await agent.run("hello there")
    assert first.output == "ok: hello there"
    async with agent.run_stream("stream this please") as streamed:
        text = await streamed.get_output()
    assert text == "ok: stream this please"
    calls = await model_calls(bus, key.id, 2)
    assert [c.finish_reason for c in calls] == ["stop", "stop"]
    assert all(c.error is None and c.output_tokens > 0 for c in calls)
    expected = gateway_price(calls)
    assert await cost_by_agent(settings) == ({"helper": expected}, expected)


async def test_kill_instance_and_kill_model_refuse_its_next_call(
    settings: ShoalSettings,
    gateway: RunningGateway,
    make_key: MakeKey,
    upstream: tuple[str, OfflineUpstream],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _, secret = await make_key(fleet="pyd", agent="helper", instance="pyd-2")
    agent = _agent(monkeypatch, gateway.url, secret)
    assert (await agent.run("one")).output == "ok: one"
    shoal_cli(settings, "kill", "--instance", "pyd-2", "--reason", "test")
    await _until(gateway, "instance.pyd-2")
    with pytest.raises(ModelHTTPError) as refused:
        await agent.run("two")
    assert refused.value.status_code == 403
    shoal_cli(settings, "unkill", "--instance", "pyd-2")
    await _until(gateway, "instance.pyd-2", present=False)
    assert (await agent.run("three")).output == "ok: three"
    # "fast" is a gateway alias, which the CLI cannot know from the event log: --force.
    shoal_cli(settings, "kill", "--model", "fast", "--force")
    await _until(gateway, "model.fast")
    with pytest.raises(ModelHTTPError) as refused:
        await agent.run("four")
    assert refused.value.status_code == 403
    assert upstream[1].requests == {"offline-small": 2}


async def test_its_budget_refuses_the_call_that_would_exceed_it(
    bus: Bus,
    gateway: RunningGateway,
    make_key: MakeKey,
    upstream: tuple[str, OfflineUpstream],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Learn what one call reserves and costs: prompts of one length (distinct, so the
    # response cache answers none of them) make the same-sized request every time.
    warm, warm_secret = await make_key(fleet="pyd", agent="helper")
    await _agent(monkeypatch, gateway.url, warm_secret).run("hello 0")
    (one,) = await model_calls(bus, warm.id, 1)
    prices = PriceTable.load(None)
    reserve = prices.cost("offline-small", prompt_bound(upstream[1].bodies[0]), 20)
    cost = prices.cost(one.model, one.input_tokens, one.output_tokens, one.cached_tokens)
    budget = reserve * Decimal("1.5")
    # Allowed while (calls so far) x cost + reserve <= budget.
    allowed = next(n for n in range(100) if n * cost + reserve > budget)

    key, secret = await make_key(fleet="pyd", agent="helper", budget=str(budget))
    agent = _agent(monkeypatch, gateway.url, secret)
    for n in range(1, allowed + 1):
        assert (await agent.run(f"hello {n}")).output == f"ok: hello {n}"
        await gateway.model.drain()  # settled before the next reservation
    before = upstream[1].requests.total()
    with pytest.raises(ModelHTTPError) as refused:
        await agent.run("hello 9")
    assert refused.value.status_code == 429
    assert upstream[1].requests.total() == before  # never reached the upstream
    spent, held = await gateway.model.ledger.spent(f"key.{key.id}")
    assert allowed == 3 and (spent, held) == (allowed * cost, Decimal(0))
    assert spent <= budget


async def _until(gateway: RunningGateway, key: str, present: bool = True) -> None:
    for _ in range(200):
        if (key in gateway.model.kills.active) == present:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"kill switch {key} never {'set' if present else 'lifted'}")

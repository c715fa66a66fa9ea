"""The core prefers the gateway's record of a call to any agent's claim of it."""

from __future__ import annotations

from decimal import Decimal

import pytest

from shoal.aggregates import ShoalCore
from shoal.bus import Bus, ShoalSettings
from shoal.schemas import CloudEvent, ModelCalled
from tests.aggregates.eventmix import Mix, publish_all
from tests.aggregates.test_ingestion import ingest

pytestmark = pytest.mark.timeout(120)


def gateway_and_claim(mix: Mix, iid: str, call_id: str) -> tuple[CloudEvent, CloudEvent]:
    """The gateway's record of a call (2,000 tokens in, 500 out) and the agent's forged,
    cheaper claim of the same call (20 in, 5 out, $0)."""
    w = mix.worker

    def called(inp: int, out: int, cost: str) -> ModelCalled:
        return ModelCalled(
            call_id=call_id,
            model="gpt-4o",
            provider="openai",
            input_tokens=inp,
            output_tokens=out,
            latency_ms=10.0,
            reported_cost_usd=Decimal(cost),
        )

    record = CloudEvent.new(
        called(2000, 500, "0.01"),
        iid=iid,
        source="shoal://gateway/r1",
        fleet=w.fleet,
        agent=w.agent,
        instance=w.instance,
        principal=mix.principal,
    )
    claim = CloudEvent.new(
        called(20, 5, "0"),
        iid=iid,
        source=w.source,
        fleet=w.fleet,
        agent=w.agent,
        instance=w.instance,
        principal=mix.principal,
    )
    return record, claim


@pytest.mark.parametrize("claim_first", [False, True], ids=["record-first", "claim-first"])
async def test_a_forged_cheaper_claim_of_a_gateway_call_is_counted_at_the_gateways_price_once(
    bus: Bus, settings: ShoalSettings, claim_first: bool
) -> None:
    mix = Mix(seed=11)
    mix.start_agents()
    mix.model_call("s-gw", None, mix.worker, model="gpt-4o", input_tokens=1000, output_tokens=0)
    record, claim = gateway_and_claim(mix, "s-gw", "gw-0123456789abcdef")
    mix.events.extend([claim, record] if claim_first else [record, claim])
    await publish_all(bus, mix.events)

    app: ShoalCore = await ingest(settings)

    session = app.session("s-gw")
    # gpt-4o: $2.50 / M in, $10 / M out. The agent's own (non-gateway) call: 1,000 in.
    own = Decimal("0.0025")
    gateway = Decimal(2000) * Decimal("2.5") / 10**6 + Decimal(500) * 10 / 10**6
    assert (session.model_calls, session.rejected) == (2, 1)
    assert session.cost_usd == own + gateway == Decimal("0.0125")
    assert (session.input_tokens, session.output_tokens) == (3000, 500)
    assert session.reported_cost_usd == Decimal("0.0101")  # the claim's $0 is not in it

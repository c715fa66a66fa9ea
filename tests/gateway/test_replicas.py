"""Two gateway replicas share one budget through KV compare-and-set: no overspend."""

from __future__ import annotations

import asyncio
from decimal import Decimal

import httpx

from shoal.aggregates.pricing import PriceTable
from shoal.bus import Bus
from shoal.gateway import GatewayConfig, run_gateway
from shoal.gateway.offline import OfflineUpstream
from shoal.gateway.request import prompt_bound
from tests.gateway.conftest import MakeKey

PROMPT = [{"role": "user", "content": "hello there"}]


async def test_concurrent_calls_through_two_replicas_get_exactly_the_reservations_that_fit(
    bus: Bus,
    gateway_config: GatewayConfig,
    make_key: MakeKey,
    upstream: tuple[str, OfflineUpstream],
) -> None:
    upstream[1].delay_s = 1.0  # every granted call is in flight while the others reserve
    body = {"model": "fast", "messages": PROMPT, "max_tokens": 100}
    reserve = PriceTable.load(None).cost("offline-small", prompt_bound(body), 100)
    key, secret = await make_key(budget=str(reserve * Decimal("3.5")))
    async with (
        run_gateway(bus, gateway_config) as one,
        run_gateway(bus, gateway_config) as two,
        httpx.AsyncClient(timeout=20) as http,
    ):
        auth = {"Authorization": f"Bearer {secret}", "X-Shoal-Cache": "bypass"}
        urls = [one.url, two.url] * 5
        answers = await asyncio.gather(
            *(http.post(f"{url}/chat/completions", json=body, headers=auth) for url in urls)
        )
        await one.model.drain()
        await two.model.drain()
        spent, held = await one.model.ledger.spent(f"key.{key.id}")
    codes = sorted(a.status_code for a in answers)
    assert codes == [200] * 3 + [429] * 7
    assert upstream[1].requests == {"offline-small": 3}
    # 3 calls of 10 input (5 cached) and 4 output tokens at offline-small prices
    assert (spent, held) == (3 * Decimal("0.00000235"), Decimal(0))

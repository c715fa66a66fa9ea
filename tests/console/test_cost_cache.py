"""The cost and gateway pages' figures: a repeated request through a real gateway is a hit,
and the page shows the calls, hits and the money saved (the reused answer's price)."""

from __future__ import annotations

import asyncio
import re
from decimal import Decimal

import httpx
import pytest

from shoal.bus import ShoalSettings
from shoal.gateway import RunningGateway
from shoal.projections.client import QueryClient
from tests.console.conftest import Platform
from tests.console.test_access import sign_in
from tests.gateway.conftest import (  # noqa: F401 (fixtures)
    MakeKey,
    gateway,
    gateway_config,
    make_key,
    model_calls,
    upstream,
)

pytestmark = pytest.mark.timeout(90)

PROMPT = [{"role": "user", "content": "hello there"}]


async def test_the_cost_and_gateway_pages_show_the_cache_hits_and_the_money_saved(
    platform: Platform,
    settings: ShoalSettings,
    gateway: RunningGateway,  # noqa: F811
    make_key: MakeKey,  # noqa: F811
) -> None:
    key, secret = await make_key()
    body = {"model": "fast", "messages": PROMPT, "max_tokens": 50, "temperature": 0}
    auth = {"Authorization": f"Bearer {secret}"}
    async with httpx.AsyncClient(base_url=gateway.url, timeout=10) as http:
        assert (await http.post("/chat/completions", json=body, headers=auth)).is_success
        await gateway.model.drain()  # the answer is stored
        assert (await http.post("/chat/completions", json=body, headers=auth)).is_success
    calls = await model_calls(platform.bus, key.id, 2)
    assert [c.provider for c in calls] == ["fake", "cache"]
    saved = calls[1].reported_cost_usd
    token = await platform.token("alice", "viewer")
    async with httpx.AsyncClient(base_url=platform.url) as http:
        await sign_in(http, token)
        for _ in range(100):  # until the core has folded both calls and the projection has them
            await QueryClient(platform.bus.nc, settings).ask("status", fresh=True)
            page = await http.get("/cost?range=24h")
            if '<td class="num">2</td>' in page.text.split('id="cache"', 1)[1]:
                break
            await asyncio.sleep(0.1)
        gateway_page = await http.get("/gateway")
    section = page.text.split('id="cache"', 1)[1].split("</section>", 1)[0]
    words = re.sub(r"<[^>]+>", " ", section.split("<tbody>", 1)[1]).split()
    assert saved == Decimal("0.00000235")
    # research: 2 gateway calls, 1 hit, 50.0%, $0.000002 saved (shown to the micro-dollar);
    # then the total row.
    assert words == [
        "research",
        "2",
        "1",
        "50.0%",
        "$0.000002",
        "all",
        "2",
        "1",
        "50.0%",
        "$0.000002",
    ]
    assert 'title="under a cent: shown to $0.000001"' in section
    routes = gateway_page.text.split('id="routes"', 1)[1].split("</section>", 1)[0]
    rows = [
        re.sub(r"<[^>]+>", " ", row).split()[:4]
        for row in routes.split("<tbody>", 1)[1].split("</tr>")[:-1]
    ]
    assert sorted(rows) == sorted(
        [["cache", calls[1].model, "1", "0"], ["fake", calls[0].model, "1", "0"]]
    )
    assert "$0.000002" in gateway_page.text.split('id="cache"', 1)[1]

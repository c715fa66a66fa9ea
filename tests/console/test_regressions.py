"""The console's overview lists an open regression the core flagged, with its figures."""

from __future__ import annotations

import httpx
import pytest

from shoal.ops.regressions import Regression, open_regressions
from tests.aggregates.eventmix import publish_all
from tests.aggregates.test_cohorts import mix_of_two_versions, upgraded
from tests.console.conftest import Platform
from tests.console.test_access import sign_in
from tests.ops.fleetprocs import eventually

pytestmark = pytest.mark.timeout(90)


async def test_the_overview_lists_an_open_regression(platform: Platform) -> None:
    bus = platform.bus
    await upgraded(bus)  # docs/summarizer: 1 -> 2
    mix, _ = mix_of_two_versions()
    await publish_all(bus, mix.events)

    def one(found: list[Regression]) -> bool:
        return len(found) == 1

    [regression] = await eventually(lambda: open_regressions(bus), one, 60, "a regression")
    token = await platform.token("vera", "viewer")
    async with httpx.AsyncClient(base_url=platform.url) as http:
        signed_in = await sign_in(http, token)
        cookie = signed_in.headers["set-cookie"].split(";")[0]
        page = await http.get("/", headers={"Cookie": cookie})

    assert page.status_code == 200
    assert regression.line() in page.text
    assert '<td class="bad">regressed</td>' in page.text

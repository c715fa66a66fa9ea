"""Taste, in a real Chromium: times in the viewer's zone with UTC on hover, money in USD
saying its precision, and pages that fit a phone's width without scrolling sideways."""

from __future__ import annotations

from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from shoal.console import control
from tests.console.browser import Browser
from tests.console.conftest import Platform

pytestmark = pytest.mark.timeout(120)


async def test_times_show_in_the_viewers_zone_with_utc_on_hover(
    platform: Platform, profile: Path
) -> None:
    result = await control.kill(platform.bus, "tool", "fetch_url", by="oncall", reason="r")
    token = await platform.token("vera", "viewer")
    async with Browser.start(profile, platform.url, tz="Asia/Tokyo") as b:
        await b.sign_in(token)
        await b.get("/kills")
        shown = await b.text("#switches time")
        hover = (await b.all("#switches time", "title"))[0]
        zone = await b.run(
            lambda d: d.execute_script("return Intl.DateTimeFormat().resolvedOptions().timeZone")
        )
    at = result.switch.at
    tokyo = at.astimezone(ZoneInfo("Asia/Tokyo"))
    assert zone == "Asia/Tokyo"
    assert hover == at.astimezone(ZoneInfo("UTC")).strftime("%Y-%m-%d %H:%M:%S UTC")
    # The browser's own locale (en-US here) in its zone: 9 hours ahead of the UTC on hover.
    assert shown == tokyo.strftime("%m/%d/%Y, %I:%M:%S %p GMT+9")


async def test_every_page_fits_a_phone_without_scrolling_sideways(
    platform: Platform, profile: Path
) -> None:
    await control.kill(platform.bus, "session", "s-" + "x" * 60, by="oncall", reason="a long id")
    token = await platform.token("alice", "operator")
    widths = {}
    async with Browser.start(profile, platform.url, width=390) as b:
        await b.sign_in(token)
        for path in ("/", "/fleets", "/sessions", "/cost", "/tools", "/kills", "/approvals"):
            await b.get(path)
            widths[path] = await b.run(
                lambda d: d.execute_script(
                    "return [document.documentElement.scrollWidth, window.innerWidth]"
                )
            )
        footer = await b.text("footer")
    assert {p: w[0] <= w[1] for p, w in widths.items()} == {p: True for p in widths}
    assert "Money in USD: cents, or to the micro-dollar ($0.000001) below one cent" in footer

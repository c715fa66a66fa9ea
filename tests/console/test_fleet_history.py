"""A fleet's history on its page comes from the control stream's audit: a console on a host
without the Fleet aggregate's store (another data dir) shows every command, who and why."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import pytest

from shoal.aggregates.fleet import FleetApplication
from shoal.bus import Bus, ShoalSettings
from shoal.ops.fleets import apply_fleet, fleet_command
from shoal.schemas.fleet import parse_fleet_spec
from tests.console.conftest import Platform, served
from tests.console.test_access import sign_in

pytestmark = pytest.mark.timeout(60)

SPEC = """
fleet: demo
agents:
  - name: worker
    target: shoal.agents.demo:summarizer_agent
    version: "1"
    replicas: 1
"""


async def test_a_console_on_another_host_shows_the_fleets_history_from_the_control_stream(
    platform: Platform, settings: ShoalSettings, app: FleetApplication, tmp_path: Path
) -> None:
    await apply_fleet(platform.bus, app, parse_fleet_spec(SPEC), by="tester", reason="first")
    await fleet_command(
        platform.bus, app, "demo", "scale", by="bob", reason="load", replicas={"worker": 3}
    )
    elsewhere = settings.model_copy(update={"data_dir": tmp_path / "another-host"})
    token = await platform.token("alice", "viewer")
    async with served(Bus(platform.bus.nc, elsewhere)) as url:
        async with httpx.AsyncClient(base_url=url) as http:
            await sign_in(http, token)
            page = await http.get("/fleets/demo")
    history = page.text.split("<h2>History</h2>", 1)[1].split("</section>", 1)[0]
    rows = [
        re.sub(r"<[^>]+>", "|", row).split("|")
        for row in history.split("<tbody>", 1)[1].split("</tr>")[:-1]
    ]
    cells = [[c.strip() for c in r if c.strip()] for r in rows]
    # newest first: command, by, why
    assert [c[2:5] for c in cells] == [["scale", "bob", "load"], ["apply", "tester", "first"]]
    assert not (tmp_path / "another-host" / "fleets.sqlite").exists()

"""The overview's on-call facts link to their detail: a session waiting for a person's reply
is listed as awaiting input, and a dead letter is counted and listed with its reason."""

from __future__ import annotations

import re

import httpx
import pytest

from shoal.agents.gateways import ModelGateway
from shoal.agents.session import Session
from shoal.bus import ShoalSettings
from shoal.projections.client import QueryClient
from shoal.schemas import AgentStarted, SessionAsked, new_id
from tests.console.conftest import Platform
from tests.console.test_access import sign_in
from tests.console.test_browser import rig  # noqa: F401 (fixture)
from tests.ops.fleetprocs import eventually

pytestmark = pytest.mark.timeout(90)


async def test_a_question_and_a_dead_letter_show_on_the_overview_with_their_detail(
    platform: Platform,
    settings: ShoalSettings,
    rig: tuple[Session, ModelGateway],  # noqa: F811
) -> None:
    _, model = rig
    # Before its instance announced itself: the core refuses the call, into a dead letter.
    await model.complete("a call from an instance the core does not know")
    await model.emitter.emit(
        AgentStarted(version="1", capabilities=("help",)),
        Session(iid=new_id(), gid=None, principal="ops"),
    )
    asking = Session(iid=new_id(), gid=None, principal="alice")
    await model.emitter.emit(SessionAsked(question_id="q1", question="Which region?"), asking)
    query = QueryClient(platform.bus.nc, settings)

    async def overview() -> str:
        await query.ask("status", fresh=True)
        return (await http.get("/")).text

    token = await platform.token("vera", "viewer")
    async with httpx.AsyncClient(base_url=platform.url) as http:
        await sign_in(http, token)
        page = await eventually(overview, lambda t: "awaiting input" in t, 30, "awaiting input")
        letters = await http.get("/deadletters")
    attention = page.split("<h2>Needs attention</h2>", 1)[1]
    row = re.search(
        r'<td class="warn">awaiting input</td><td><a href="/sessions/([^"]+)"', attention
    )
    assert row is not None and row.group(1) == asking.iid
    assert re.search(r'href="/deadletters"><b id="deadletters">1</b>', page)
    rows = letters.text.split("<tbody>", 1)[1].split("</tbody>", 1)[0].count("<tr ")
    assert rows == 1
    assert f"refused: unknown instance &#39;{model.emitter.identity.instance}&#39;" in letters.text
    assert "1 in all" in letters.text

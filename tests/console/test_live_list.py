"""The sessions list is live: a session that starts while the page is open appears on it,
filters kept, without a reload."""

from __future__ import annotations

from pathlib import Path

import pytest
from selenium.webdriver.common.by import By

from shoal.agents.gateways import ModelGateway
from shoal.agents.session import Session
from shoal.schemas import AgentStarted, new_id
from tests.console.browser import Browser
from tests.console.conftest import Platform
from tests.console.test_browser import rig  # noqa: F401 (fixture)

pytestmark = pytest.mark.timeout(120)


async def test_a_session_started_while_the_list_is_open_appears_on_it(
    platform: Platform,
    rig: tuple[Session, ModelGateway],  # noqa: F811
    profile: Path,
) -> None:
    session, model = rig
    token = await platform.token("vera", "viewer")
    async with Browser.start(profile, platform.url) as b:
        await b.sign_in(token)
        await b.get(f"/sessions?q={session.iid}")
        before = await b.all("#sessions a[href^='/sessions/']", "href")
        marker = await b.run(lambda d: d.execute_script("return window.__same = 'page'"))
        # The instance announces itself (the core refuses calls of an unknown instance),
        # then the session's first call.
        life = Session(iid=new_id(), gid=None, principal="ops")
        await model.emitter.emit(AgentStarted(version="1", capabilities=("help",)), life)
        await model.complete("a first call: the session now exists")
        rows = await b.until(
            lambda d: [
                e.get_attribute("href")
                for e in d.find_elements(By.CSS_SELECTOR, "#sessions a[href^='/sessions/']")
            ],
            40,
            "the new session on the list",
        )
        same_page = await b.run(lambda d: d.execute_script("return window.__same"))
        state = await b.text("#list-state")
        kept = await b.all("#q", "value")
    assert before == [] and marker == "page"
    assert rows == [f"{platform.url}/sessions/{session.iid}"]
    assert same_page == "page"  # swapped in place, not reloaded
    assert state == "live" and kept == [session.iid]

"""The console end to end in a real headless Chromium: a live timeline, a kill from the page,
a scale that converges, and a viewer who sees but cannot act.

``SHOAL_CONSOLE_SCREENSHOTS=docs/console`` makes these tests write the screenshots that
``docs/console.md`` shows.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from selenium.webdriver.common.by import By

from shoal.agents import CapabilityManifest, Killed, OfflineModelClient
from shoal.agents.demo import DEMO_FLEET, DEMO_GOAL, write_workspace
from shoal.agents.gateways import ModelGateway
from shoal.agents.killswitch import KillWatcher
from shoal.agents.policy import Policy
from shoal.agents.session import Emitter, Identity, Session
from shoal.agents.tools import ToolEnv
from shoal.aggregates.fleet import FleetApplication
from shoal.bus import ShoalSettings, Stored
from shoal.ops.demo import fleet_services
from shoal.ops.fleets import apply_fleet
from shoal.ops.goals import build_goal, submit_goal
from shoal.projections.client import QueryClient
from shoal.schemas import ControlAccepted, new_id
from shoal.schemas.fleet import parse_fleet_spec
from tests.console.browser import Browser
from tests.console.conftest import Platform
from tests.ops.fleetprocs import Supervisors, agent_procs, eventually, procs_now

pytestmark = pytest.mark.timeout(180)

ENTRIES = (By.CSS_SELECTOR, "li.entry")
WORKERS = (By.CSS_SELECTOR, 'section[data-agent="worker"] tr[data-instance]')


def control_events(stored: list[Stored]) -> list[ControlAccepted]:
    """The accepted operator commands among stored control-stream messages."""
    events = [s.event for s in stored if s.event is not None]
    return [e.data for e in events if isinstance(e.data, ControlAccepted)]


async def test_demo_goal_timeline_fills_in_live(
    platform: Platform, settings: ShoalSettings, profile: Path
) -> None:
    bus = platform.bus
    token = await platform.token("alice", "operator")
    write_workspace(ToolEnv.for_settings(settings).workspace)
    goal = build_goal(DEMO_FLEET, DEMO_GOAL, principal="alice", inputs={"pattern": "*.md"})
    assert goal.gid is not None
    async with AsyncExitStack() as stack:
        for factory in fleet_services():
            await stack.enter_async_context(factory(bus))
        b = await stack.enter_async_context(Browser.start(profile, platform.url))
        await b.sign_in(token)
        # The page is open before the goal exists: everything on it arrives live.
        await b.get(f"/sessions/{goal.iid}")
        waiting = await b.text("#waiting")
        await submit_goal(bus, goal)
        await b.until(lambda d: d.find_elements(By.CSS_SELECTOR, "li.entry"), 20, "a first line")
        first_lines = len(await b.all("li.entry", "data-seq"))
        await b.until(
            lambda d: "goal.completed" in d.find_element(By.ID, "tree").text, 60, "goal.completed"
        )
        events = await bus.goal_events(goal.gid)
        seqs = sorted(str(s.seq) for s in events)
        shown = await b.until(
            lambda d: (
                sorted(
                    e.get_attribute("data-seq")
                    for e in d.find_elements(By.CSS_SELECTOR, "li.entry")
                )
                == seqs
            ),
            20,
            "every event of the goal on the page",
        )
        assert shown
        children = {s.event.iid for s in events if s.event and s.event.parentiid == goal.iid}
        nodes = await b.all("li.node", "data-node")
        assert sorted(nodes) == sorted([goal.iid, *children])
        # Each child session's lines sit under its own node, inside the root's.
        for child in children:
            own = await b.all(f'ol.entries[data-iid="{child}"] > li.entry', "data-seq")
            assert sorted(own) == sorted(
                str(s.seq) for s in events if s.event and s.event.iid == child
            )
        assert waiting.startswith("No event of this session yet")
        assert first_lines < len(seqs)
        await b.shot("session-live")
        # A reload replays the same tree from the log, with the session's figures.
        await QueryClient(bus.nc, settings).ask("status", fresh=True)
        await b.get(f"/sessions/{goal.iid}")
        assert await b.text("#status") == "completed"
        assert sorted(await b.all("li.entry", "data-seq")) == seqs
        await b.shot("session")
        await b.get(f"/sessions/{goal.iid}?at={seqs[len(seqs) // 2]}")
        assert len(await b.all("li.entry", "data-seq")) == len(
            [s for s in events if s.seq <= int(seqs[len(seqs) // 2])]
        )
        await b.shot("session-replay")
        for name, path in (
            ("overview", "/"),
            ("sessions", "/sessions"),
            ("cost", "/cost?range=24h"),
            ("tools", "/tools"),
            ("gateway", "/gateway"),
        ):
            await b.get(path)
            await b.shot(name)
        await b.get("/cost?range=24h")
        assert await b.text("#total-spend") != "$0.00"
        await b.run(lambda d: d.set_window_size(390, 844))  # a phone
        for name, path in (("overview-narrow", "/"), ("session-narrow", f"/sessions/{goal.iid}")):
            await b.get(path)
            await b.shot(name)


@pytest.fixture
async def rig(platform: Platform) -> AsyncIterator[tuple[Session, ModelGateway]]:
    """One session's model gateway, watching the kill bucket as every agent's does."""
    bus = platform.bus
    manifest = CapabilityManifest(models=("offline-small",), budget_usd=Decimal("1"))
    identity = Identity("ops", "helper", new_id(), "1")
    kills = KillWatcher(bus)
    await kills.start()
    emitter = Emitter(bus, identity)
    session = Session(iid=new_id(), gid=None, principal="alice", budget_usd=manifest.budget_usd)
    policy = Policy(identity, manifest, kills, emitter)
    yield session, ModelGateway(policy, emitter, [OfflineModelClient()], session)
    await kills.stop()


async def test_session_killed_from_the_page_refuses_its_next_model_call(
    platform: Platform, rig: tuple[Session, ModelGateway], profile: Path
) -> None:
    session, model = rig
    bus = platform.bus
    await model.complete("first call, before the kill")
    token = await platform.token("alice", "operator")
    async with Browser.start(profile, platform.url) as b:
        await b.sign_in(token)
        await b.get(f"/sessions/{session.iid}")
        await b.until(
            lambda d: "model.called" in d.find_element(By.ID, "tree").text, 10, "model.called"
        )
        await b.fill("#kill-reason", "incident 42")
        await b.click("#kill-session")
        assert "Kill session" in await b.text("h1")
        await b.shot("kill-confirm")
        await b.click("#confirm")
        flash = await b.text(".flash.ok")
        await b.get("/kills")
        keys = await b.all("#switches tr[data-key]", "data-key")
        await b.shot("kills")
    assert flash == f"kill switch session.{session.iid} set"
    assert keys == [f"session.{session.iid}"]

    async def refused() -> str:
        try:
            await model.complete("second call, after the kill")
        except Killed as e:
            return e.key
        return ""

    assert await eventually(refused, bool, 10, "the call refused") == f"session.{session.iid}"
    audit = control_events(
        await bus.read(bus.subjects.all_control, stream=bus.topology.control.name)
    )
    assert [(a.command, a.target, a.by, a.reason) for a in audit] == [
        ("kill.session", session.iid, "alice", "incident 42")
    ]


SPEC = """
fleet: demo
rollout: {batch: 2, first_heartbeat_s: 60}
agents:
  - name: worker
    target: shoal.agents.demo:summarizer_agent
    version: "1"
    replicas: 1
"""


async def test_fleet_scaled_from_the_page_converges_to_the_new_instance_count(
    platform: Platform,
    settings: ShoalSettings,
    supervisors: Supervisors,
    app: FleetApplication,
    profile: Path,
) -> None:
    bus = platform.bus
    await apply_fleet(bus, app, parse_fleet_spec(SPEC), by="tester")
    supervisors.start("sup-a")
    await eventually(lambda: procs_now(settings.prefix), lambda ps: len(ps) == 1, 60, "1 proc")
    token = await platform.token("bob", "operator")
    async with Browser.start(profile, platform.url) as b:
        await b.sign_in(token)
        await b.get("/fleets/demo")

        def one_live(d: Any) -> bool:
            # The process is up; its first heartbeat (what the page counts) may come later
            # on a loaded machine, and the page is not live: reload until it shows.
            d.refresh()
            return bool(d.find_element(By.ID, "count-worker").get_attribute("data-actual") == "1")

        await b.until(one_live, 60, "1/1 on the page")
        await b.fill("#replicas-worker", "3")
        await b.click("#scale-worker")
        assert await b.text("h1") == "Scale worker of fleet demo to 3 instance(s)?"
        await b.click("#confirm")
        flash = await b.text(".flash.ok")

        def converged(d: Any) -> bool:
            d.refresh()
            count = d.find_element(By.ID, "count-worker")
            return count.text == "3/3" and len(d.find_elements(*WORKERS)) == 3

        await b.until(converged, 90, "3/3 instances on the page")
        instances = sorted(
            await b.all('section[data-agent="worker"] tr[data-instance]', "data-instance")
        )
        await b.shot("fleet")
        await b.get("/fleets")
        await b.shot("fleets")
    assert flash == "scale worker of fleet demo to 3 instance(s): accepted"
    assert instances == sorted(p.instance for p in agent_procs(settings.prefix))
    history = await asyncio.to_thread(app.history, "demo")
    assert [(h.command, h.by) for h in history] == [("apply", "tester"), ("scale", "bob")]


async def test_viewer_sees_no_action_and_a_forged_post_is_refused(
    platform: Platform, rig: tuple[Session, ModelGateway], profile: Path
) -> None:
    session, model = rig
    bus = platform.bus
    await model.complete("a call, so the session has a page")
    token = await platform.token("vera", "viewer")
    async with Browser.start(profile, platform.url) as b:
        await b.get("/login")
        await b.shot("login")
        await b.sign_in(token)
        assert await b.text(".role") == "viewer"
        buttons = {}
        for path in (f"/sessions/{session.iid}", "/kills", "/fleets"):
            await b.get(path)
            buttons[path] = await b.all("form[action='/kills'], .kill-button", "outerHTML")
        await b.get(f"/sessions/{session.iid}")
        await b.shot("viewer-session")
        csrf = (await b.all("input[name=csrf]", "value"))[0]
        cookies = await b.run(lambda d: {c["name"]: c["value"] for c in d.get_cookies()})
    assert buttons == {f"/sessions/{session.iid}": [], "/kills": [], "/fleets": []}
    form = {"scope": "session", "name": session.iid, "reason": "forged", "confirmed": "yes"}
    async with httpx.AsyncClient(base_url=platform.url, cookies=cookies) as http:
        as_viewer = await http.post("/kills", data={**form, "csrf": csrf})
        without_csrf = await http.post("/kills", data=form)
        scale = await http.post(
            "/fleets/demo/scale",
            data={"agent": "w", "replicas": "9", "confirmed": "yes", "csrf": csrf},
        )
    assert (as_viewer.status_code, without_csrf.status_code, scale.status_code) == (403, 403, 403)
    assert "vera is a viewer" in as_viewer.text
    kv = await bus.kv(bus.topology.kill.name)
    with pytest.raises(Exception, match="nats: no keys found"):
        await kv.keys()
    await model.complete("still allowed: nothing was killed")

"""The approvals inbox over plain HTTP: a parked call granted or denied from the page, once,
recorded as the signed-in principal; a viewer sees the request and cannot decide it."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest

from shoal.agents.session import Emitter, Identity, Session
from shoal.policy import Approvals, ApprovalState
from shoal.projections.client import QueryClient
from shoal.schemas import AgentStarted, ApprovalDenied, ApprovalGranted
from tests.console.browser import Browser
from tests.console.conftest import Platform
from tests.console.test_access import csrf_of, sign_in
from tests.ops.fleetprocs import eventually
from tests.policy.test_approvals import SOURCE, email_request

pytestmark = pytest.mark.timeout(60)


async def parked(platform: Platform, iid: str, to: str) -> ApprovalState:
    """A request from a registered instance (demo/mailer/inst-1), once the projection (which
    says which requests the inbox lists) has it."""
    bus = platform.bus
    emitter = Emitter(bus, Identity("demo", "mailer", "inst-1", "1"))
    life = Session(iid="life-inst-1", gid=None, principal="ops")
    await emitter.emit(AgentStarted(version="1", capabilities=("mail",)), life)
    state = await (await Approvals.open(bus)).request(email_request(iid, to), source=SOURCE)
    query = QueryClient(bus.nc, bus.settings)

    async def listed() -> list[dict[str, object]]:
        await query.ask("status", fresh=True)
        return await query_rows(query, state.id)

    await eventually(listed, bool, 30, f"{state.id} in the projection")
    return state


async def query_rows(query: QueryClient, request_id: str) -> list[dict[str, object]]:
    answer = await query.sql(
        f"SELECT request_id FROM approvals WHERE request_id = '{request_id}'", 10
    )
    return [dict(zip(answer.columns, r, strict=True)) for r in answer.rows]


async def test_a_grant_from_the_inbox_resumes_the_parked_call_recorded_as_the_principal(
    platform: Platform,
) -> None:
    bus = platform.bus
    approvals = await Approvals.open(bus)
    state = await parked(platform, "s-grant", "cfo@example.com")
    waiter = asyncio.create_task(approvals.wait(state.id, source=SOURCE))
    token = await platform.token("alice", "operator")
    async with httpx.AsyncClient(base_url=platform.url) as http:
        await sign_in(http, token)
        inbox = await http.get("/approvals")
        form = {"reason": "checked with finance", "csrf": csrf_of(inbox.text)}
        confirm = await http.post(f"/approvals/{state.id}/grant", data=form)
        pending_meanwhile = (await approvals.get(state.id)).state
        granted = await http.post(f"/approvals/{state.id}/grant", data={**form, "confirmed": "yes"})
        again = await http.post(f"/approvals/{state.id}/deny", data={**form, "confirmed": "yes"})
        after = await http.get("/approvals")
    resumed = await asyncio.wait_for(waiter, 10)

    assert f'data-approval="{state.id}"' in inbox.text
    assert f'id="grant-{state.id}"' in inbox.text and "send_email" in inbox.text
    assert f"Grant {state.id}: tool send_email in session s-grant." in confirm.text
    assert "Recorded on the session&#39;s timeline as alice, reason: checked with finance." in (
        confirm.text
    )
    assert pending_meanwhile == "pending"
    assert granted.headers["location"] == (f"/approvals?done={state.id}+granted+by+alice")
    assert again.headers["location"] == (
        f"/approvals?error=approval+{state.id}+is+already+granted+by+alice"
    )
    assert (resumed.state, resumed.decided_by, resumed.reason) == (
        "granted",
        "alice",
        "checked with finance",
    )
    assert 'id="no-pending"' in after.text and f'id="grant-{state.id}"' not in after.text
    events = [e.event for e in await bus.read(bus.subjects.session_events("s-grant")) if e.event]
    decisions = [(e.source, e.data) for e in events if isinstance(e.data, ApprovalGranted)]
    assert [(s, d.request_id, d.by, d.reason) for s, d in decisions] == [
        ("shoal://cli/alice", state.id, "alice", "checked with finance")
    ]


async def test_a_deny_from_the_inbox_is_recorded_with_its_reason(platform: Platform) -> None:
    bus = platform.bus
    approvals = await Approvals.open(bus)
    state = await parked(platform, "s-deny", "all@example.com")
    token = await platform.token("olga", "admin")
    async with httpx.AsyncClient(base_url=platform.url) as http:
        await sign_in(http, token)
        csrf = csrf_of((await http.get("/approvals")).text)
        form = {"reason": "not to the whole company", "csrf": csrf, "confirmed": "yes"}
        denied = await http.post(f"/approvals/{state.id}/deny", data=form)
        page = await http.get(denied.headers["location"])
    decided = await approvals.get(state.id)
    assert (decided.state, decided.decided_by, decided.reason) == (
        "denied",
        "olga",
        "not to the whole company",
    )
    assert f"{state.id} denied by olga" in page.text
    assert '<td class="bad">denied</td><td>olga</td><td>not to the whole company</td>' in (
        page.text
    )
    events = [e.event for e in await bus.read(bus.subjects.session_events("s-deny")) if e.event]
    assert [(e.data.by, e.data.reason) for e in events if isinstance(e.data, ApprovalDenied)] == [
        ("olga", "not to the whole company")
    ]


async def test_a_viewer_sees_the_request_and_its_forged_decision_is_refused(
    platform: Platform,
) -> None:
    bus = platform.bus
    approvals = await Approvals.open(bus)
    state = await parked(platform, "s-view", "cfo@example.com")
    token = await platform.token("vera", "viewer")
    async with httpx.AsyncClient(base_url=platform.url) as http:
        await sign_in(http, token)
        inbox = await http.get("/approvals")
        csrf = csrf_of(inbox.text)  # the sign-out form's: a valid token of this sign-in
        forged = await http.post(
            f"/approvals/{state.id}/grant", data={"csrf": csrf, "confirmed": "yes"}
        )
    assert f'data-approval="{state.id}"' in inbox.text
    assert "/grant" not in inbox.text and "/deny" not in inbox.text
    assert forged.status_code == 403 and "vera is a viewer" in forged.text
    assert (await approvals.get(state.id)).state == "pending"
    events = [e.event for e in await bus.read(bus.subjects.session_events("s-view")) if e.event]
    assert [type(e.data).__name__ for e in events] == ["ApprovalRequested"]


async def test_an_approval_granted_in_the_browser_is_confirmed_then_recorded(
    platform: Platform, profile: Path
) -> None:
    approvals = await Approvals.open(platform.bus)
    state = await parked(platform, "s-page", "cfo@example.com")
    token = await platform.token("alice", "operator")
    async with Browser.start(profile, platform.url) as b:
        await b.sign_in(token)
        await b.get("/approvals")
        await b.fill(f"#reason-{state.id}", "checked with finance")
        await b.shot("approvals")
        await b.click(f"#grant-{state.id}")
        title = await b.text("h1")
        await b.click("#confirm")
        flash = await b.text(".flash.ok")
        decided = await b.all("#decided tr[data-approval]", "data-approval")
        await b.shot("approvals-decided")
    assert title == f"Grant {state.id}?"
    assert flash == f"{state.id} granted by alice"
    assert decided == [state.id]
    assert (await approvals.get(state.id)).decided_by == "alice"

"""Approvals on a real server: one request per exact call, decided once, timed out visibly."""

from __future__ import annotations

import asyncio

import pytest

from shoal.bus import Bus
from shoal.policy import Approvals, ApprovalState, NotPending, approval_id, request_hash
from shoal.policy.approvals import deadline_after
from shoal.schemas import ApprovalDenied, ApprovalGranted, ApprovalRequested, utcnow

SOURCE = "shoal://demo/mailer/inst-1"


def email_request(iid: str, to: str, timeout_s: float | None = None) -> ApprovalState:
    args = {"to": to, "body": "quarterly numbers"}
    digest = request_hash("tool.call", "send_email", args)
    return ApprovalState(
        id=approval_id(iid, digest),
        iid=iid,
        fleet="demo",
        agent="mailer",
        instance="inst-1",
        principal="alice",
        action="tool.call",
        target="send_email",
        rule="email-needs-approval",
        arguments={"to": 13, "body": 17},
        request_hash=digest,
        requested_at=utcnow(),
        deadline=deadline_after(timeout_s),
    )


async def test_the_same_request_finds_its_approval_and_a_changed_one_needs_another(
    bus: Bus,
) -> None:
    approvals = await Approvals.open(bus)
    first = await approvals.request(email_request("s1", "cfo@example.com"), source=SOURCE)
    again = await approvals.request(email_request("s1", "cfo@example.com"), source=SOURCE)
    changed = await approvals.request(email_request("s1", "all@example.com"), source=SOURCE)

    assert again.id == first.id and again.requested_at == first.requested_at
    assert changed.id != first.id
    pending = await approvals.list()
    assert [p.id for p in pending] == [first.id, changed.id]
    events = await bus.read(bus.subjects.session_events("s1"))
    requested = [
        e.event.data for e in events if e.event and isinstance(e.event.data, ApprovalRequested)
    ]
    assert [r.request_id for r in requested] == [first.id, changed.id]
    assert requested[0].request_hash == first.request_hash


async def test_a_grant_resumes_the_waiter_once_and_cannot_be_decided_again(bus: Bus) -> None:
    approvals = await Approvals.open(bus)
    state = await approvals.request(email_request("s2", "cfo@example.com"), source=SOURCE)
    waiter = asyncio.create_task(approvals.wait(state.id, source=SOURCE))
    await asyncio.sleep(0.1)
    assert not waiter.done()

    decided = await approvals.decide(state.id, grant=True, by="olga", reason="looks right")
    resumed = await asyncio.wait_for(waiter, 5)

    assert (resumed.state, resumed.decided_by, resumed.reason) == ("granted", "olga", "looks right")
    assert resumed.request_hash == state.request_hash
    with pytest.raises(NotPending) as raised:
        await approvals.decide(state.id, grant=False, by="mallory", reason="no")
    assert str(raised.value) == f"approval {state.id} is already granted by olga"
    assert decided.wait_s is not None and decided.wait_s >= 0
    events = [e.event.data for e in await bus.read(bus.subjects.session_events("s2")) if e.event]
    assert [type(d).__name__ for d in events] == ["ApprovalRequested", "ApprovalGranted"]
    assert isinstance(events[1], ApprovalGranted) and events[1].by == "olga"


async def test_an_undecided_request_expires_at_its_deadline_and_says_so(bus: Bus) -> None:
    approvals = await Approvals.open(bus)
    state = await approvals.request(
        email_request("s3", "cfo@example.com", timeout_s=0.3), source=SOURCE
    )

    expired = await asyncio.wait_for(approvals.wait(state.id, source=SOURCE), 10)

    assert (expired.state, expired.reason) == ("expired", "timed out")
    with pytest.raises(NotPending):
        await approvals.decide(state.id, grant=True, by="late", reason="sorry")
    events = [e.event for e in await bus.read(bus.subjects.session_events("s3")) if e.event]
    denied = events[-1]
    assert isinstance(denied.data, ApprovalDenied) and denied.data.expired
    assert (denied.source, denied.instance) == (SOURCE, "inst-1")


async def test_a_grant_written_into_the_bucket_without_an_operators_record_is_not_a_grant(
    bus: Bus,
) -> None:
    # An instance can write the approvals bucket (it creates its requests there); it cannot
    # publish approval.granted under an operator's identity. The waiter believes the log.
    approvals = await Approvals.open(bus)
    state = await approvals.request(email_request("s4", "cfo@example.com"), source=SOURCE)
    forged = state.model_copy(update={"state": "granted", "decided_by": "olga"})
    await approvals.kv.put(state.id, forged.model_dump_json().encode())

    final = await asyncio.wait_for(approvals.wait(state.id, source=SOURCE), 20)

    assert (final.state, final.reason) == ("denied", "granted without a recorded grant")

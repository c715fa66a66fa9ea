"""Replay folds in one pass, and its answers are the core's on the same log.

The one-pass replay (:func:`fold_replay`) folds each event as the ordered consumer delivers
it, and applies the Session's ``@event`` bodies without building the library's aggregate
events. These tests hold it to the core that ingested the same log (cost to the cent,
counts, status, timeline order, the ``--at`` cut) and to the library's own fold, attribute
for attribute.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from shoal.aggregates import Session, open_core
from shoal.aggregates.fold import apply_event, open_session
from shoal.aggregates.replay import build_replay, fold_replay, read_replay
from shoal.aggregates.replayfold import OutOfOrder, ReplayFold
from shoal.bus import Bus, ShoalSettings, Stored
from shoal.schemas import (
    ApprovalGranted,
    ApprovalRequested,
    CloudEvent,
    ModelCalled,
    OutcomeReported,
    SessionAsked,
    SessionKilled,
    SessionMessage,
)
from tests.aggregates.eventmix import Mix, publish_all
from tests.ops.test_core_cli import ingest

FIGURES = (
    "status",
    "capability",
    "attempts",
    "retries",
    "model_calls",
    "tool_calls",
    "input_tokens",
    "output_tokens",
    "cached_tokens",
    "cost_usd",
    "reported_cost_usd",
    "cost_by_model",
    "decisions",
    "denials",
    "errors",
    "approvals",
    "killed_by",
    "kill_reason",
    "outcome",
    "first_seq",
    "last_seq",
    "started_at",
    "ended_at",
)
"""What replay and the core both fold from a session's own events (the core adds what spans
aggregates: children, flags, budgets, agent versions)."""


def figures(session: Session) -> dict[str, Any]:
    return {name: getattr(session, name) for name in FIGURES}


def two_goals() -> tuple[Mix, str, str]:
    """Two goals; the first's root also gets an approval and a kill sent without the GID."""
    mix = Mix(seed=41)
    mix.start_agents()
    gid = mix.goal(tasks=3)
    root = next(e.iid for e in mix.events if e.type == "shoal.goal.submitted")
    mix.emit(
        ApprovalRequested(request_id="r1", action="tool.call", target="shell"),
        iid=root,
        gid=gid,
        by=mix.orchestrator,
    )
    mix.emit(ApprovalGranted(request_id="r1", by="alice"), iid=root, gid=gid)
    mix.goal(tasks=2)
    mix.emit(OutcomeReported(outcome="success", detail="ok"), iid=root, gid=None)
    mix.emit(SessionKilled(by="alice", reason="enough"), iid=root, gid=None)
    return mix, gid, root


async def test_one_pass_replay_equals_the_core_on_the_same_log(
    bus: Bus, settings: ShoalSettings
) -> None:
    mix, gid, root = two_goals()
    await publish_all(bus, mix.events)
    await ingest(settings)

    replay = (await fold_replay(bus, root, mix.prices)).replay(root)

    app = open_core(settings)
    try:
        nodes = [replay.root, *replay.root.children]
        goal = app.goal(gid)
        assert [n.iid for n in nodes] == goal.iids
        assert len(nodes) == 4
        assert replay.root.total_cost() == app.goal_cost(goal)
        for node in nodes:
            assert figures(node.session) == figures(app.session(node.iid))
            own = [s.seq for s in await bus.session_events(node.iid)]
            assert [e.seq for e in node.entries] == own
    finally:
        app.close()
    calls = [e.data for e in mix.events if e.gid == gid and isinstance(e.data, ModelCalled)]
    goal_cost = sum(
        (mix.prices.cost(d.model, d.input_tokens, d.output_tokens) for d in calls), Decimal(0)
    )
    assert replay.root.total_cost() == goal_cost
    assert replay.root.session.status == "killed"
    assert replay.root.session.outcome == "success"
    assert replay.root.session.approvals == {"r1": "granted"}
    assert replay.events == sum(1 for e in mix.events if e.gid == gid or e.iid == root)
    assert replay.malformed == 0


async def test_replay_at_a_cut_equals_the_core_that_ingested_only_that_far(
    bus: Bus, settings: ShoalSettings
) -> None:
    mix, _, root = two_goals()
    # Cut in the middle of the first goal's second task: a failed-then-retried task behind,
    # one task running, one not started.
    second_task = [i for i, e in enumerate(mix.events) if e.type == "shoal.task.started"][2]
    cut = second_task + 3
    await publish_all(bus, mix.events[:cut])
    await ingest(settings)
    app = open_core(settings)
    try:
        stored = await read_replay(bus, root)
        then = {s.event.iid: figures(app.session(s.event.iid)) for s in stored if s.event}
    finally:
        app.close()
    last_seq = stored[-1].seq
    last_time = stored[-1].event.time if stored[-1].event else None
    await publish_all(bus, mix.events[cut:])

    by_seq = (await fold_replay(bus, root, mix.prices, last_seq)).replay(root)
    by_time = (await fold_replay(bus, root, mix.prices, last_time)).replay(root)

    nodes = [by_seq.root, *by_seq.root.children]
    assert {n.iid: figures(n.session) for n in nodes} == then
    assert len(then) == 3
    assert [n.session.status for n in nodes] == ["open", "completed", "running"]
    assert max(e.seq for n in nodes for e in n.entries) == last_seq
    assert by_seq.events == len(stored)
    assert by_time.to_json() | {"at": None} == by_seq.to_json() | {"at": None}


async def test_one_pass_replay_equals_the_sorted_read_then_fold(
    bus: Bus, settings: ShoalSettings
) -> None:
    mix, _, root = two_goals()
    await publish_all(bus, mix.events)
    stored = await read_replay(bus, root)
    middle = stored[len(stored) // 2].seq

    for at in (None, middle):
        one_pass = (await fold_replay(bus, root, mix.prices, at)).replay(root)
        two_pass = build_replay(stored, root, mix.prices, at)
        assert one_pass.to_json() == two_pass.to_json()
    assert (await fold_replay(bus, root, mix.prices)).seqs != []


def conversation() -> tuple[Mix, list[Stored]]:
    """Every kind of session event the fold handles, as stored messages in order."""
    mix = Mix(seed=5)
    mix.start_agents()
    gid = mix.goal(tasks=3)
    child = next(e.iid for e in mix.events if e.type == "shoal.task.assigned")
    mix.emit(SessionAsked(question_id="q1", question="which?"), iid=child, gid=gid)
    mix.emit(SessionMessage(text="that one", by="alice", reply_to="q1"), iid=child, gid=gid)
    mix.emit(
        ApprovalRequested(request_id="r9", action="tool.call", target="shell"), iid=child, gid=gid
    )
    mix.emit(ApprovalGranted(request_id="r9", by="bob"), iid=child, gid=gid)
    mix.emit(OutcomeReported(outcome="failure", signal="thumbs"), iid=child, gid=gid)
    mix.emit(SessionKilled(by="alice"), iid=child, gid=gid)
    return mix, [stored(n + 1, e) for n, e in enumerate(mix.events)]


def stored(seq: int, ev: CloudEvent) -> Stored:
    return Stored(seq, f"t.events.{ev.gid or '_'}.{ev.iid}.{ev.short_type}", ev.time, ev)


def test_the_light_fold_leaves_the_state_the_library_fold_leaves() -> None:
    mix, items = conversation()
    library: dict[str, Session] = {}
    for item in items:
        ev = item.event
        assert ev is not None
        if ev.iid not in library:
            library[ev.iid] = open_session(ev, item.seq)
        apply_event(library[ev.iid], ev, item.seq, mix.prices)

    fold = ReplayFold(mix.prices)
    for item in items:
        fold.add(item)
    root = next(e.iid for e in mix.events if e.type == "shoal.goal.submitted")
    fold.replay(root)

    assert set(fold.nodes) == set(library)
    for iid, session in library.items():
        session.collect_events()
        assert vars(fold.nodes[iid].session) == vars(session)
    child = next(e.iid for e in mix.events if e.type == "shoal.task.assigned")
    applied = sum(1 for i in items if i.event and i.event.iid == child)
    assert fold.nodes[child].session.version == 1 + applied  # opened, then every event


def test_an_event_behind_its_session_is_refused_by_the_fold_and_sorted_by_the_list() -> None:
    mix, items = conversation()
    fold = ReplayFold(mix.prices)
    child = next(e.iid for e in mix.events if e.type == "shoal.task.assigned")
    late, *rest = [i for i in items if i.event and i.event.iid == child]
    for item in rest:
        fold.add(item)

    with pytest.raises(OutOfOrder):
        fold.add(late)

    root = next(e.iid for e in mix.events if e.type == "shoal.goal.submitted")
    shuffled = list(reversed(items))
    assert build_replay(shuffled, root, mix.prices).to_json() == (
        build_replay(items, root, mix.prices).to_json()
    )

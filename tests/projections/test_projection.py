"""The projection against the core it reads: same sessions, same money, whatever the batching."""

from __future__ import annotations

from collections import defaultdict
from decimal import Decimal

import pytest
from eventsourcing.persistence import IntegrityError, Tracking

from shoal.aggregates.application import ShoalCore
from shoal.projections.projection import CostProjection, new_batch
from shoal.projections.queries import CostAnswer, all_answers, run_named
from shoal.projections.view import DuckDBCostView, open_view
from tests.projections.conftest import NOW, build


def test_every_session_matches_the_core_aggregate(core: ShoalCore) -> None:
    view = build(core, ":memory:")
    rows = {r["iid"]: r for r in view.datastore.rows("SELECT * FROM sessions")}
    sessions = core.sessions()
    assert len(rows) == len(sessions) > 300
    for s in sessions:
        row = rows[s.iid]
        for attr in (
            "status",
            "gid",
            "parentiid",
            "fleet",
            "principal",
            "agent",
            "capability",
            "model_calls",
            "tool_calls",
            "input_tokens",
            "output_tokens",
            "cached_tokens",
            "cost_usd",
            "reported_cost_usd",
            "errors",
            "denials",
            "rejected",
            "budget_exceeded",
            "killed_by",
            "outcome",
            "started_at",
            "ended_at",
        ):
            assert row[attr] == getattr(s, attr), (s.iid, attr)
        assert row["attempts"] == s.attempts, s.iid
        assert row["looping"] == ("looping" in s.flags), s.iid


def test_cost_by_model_equals_the_cores_server_side_cost_exactly(core: ShoalCore) -> None:
    view = build(core, ":memory:")
    expected: dict[str, Decimal] = defaultdict(Decimal)
    for s in core.sessions():
        for model, cost in s.cost_by_model.items():
            expected[model] += cost
    got = {
        r["model"]: r["cost"]
        for r in view.datastore.rows(
            "SELECT model, sum(cost_usd) AS cost FROM model_calls GROUP BY model"
        )
    }
    assert got == dict(expected)
    assert sum(got.values()) == sum(s.cost_usd for s in core.sessions())


def test_calls_from_an_unknown_instance_cost_nothing(core: ShoalCore) -> None:
    view = build(core, ":memory:")
    rogue = view.datastore.rows("SELECT count(*) AS n FROM model_calls WHERE agent = 'rogue'")
    rejected = view.datastore.rows("SELECT sum(rejected) AS n FROM sessions")
    assert rogue == [{"n": 0}]
    assert rejected[0]["n"] == sum(s.rejected for s in core.sessions()) > 0


def test_answers_do_not_depend_on_batch_boundaries(core: ShoalCore) -> None:
    whole = build(core, ":memory:", batch_size=5000)
    split = build(core, ":memory:", batch_size=400)  # sessions straddle many batches
    assert all_answers(split.datastore, NOW) == all_answers(whole.datastore, NOW)


def test_one_event_per_transaction_gives_the_same_rows(core: ShoalCore) -> None:
    # The first 150 notifications, one transaction each: every patch merges in SQL.
    single = build_prefix(core, 150, batch_size=1)
    batched = build_prefix(core, 150, batch_size=5000)
    assert all_answers(single.datastore, NOW) == all_answers(batched.datastore, NOW)
    sessions = "SELECT * FROM sessions ORDER BY iid"
    assert single.datastore.rows(sessions) == batched.datastore.rows(sessions)


def build_prefix(core: ShoalCore, limit: int, batch_size: int) -> DuckDBCostView:
    view = open_view(":memory:")
    projection = CostProjection(view, batch_size=batch_size)
    for n in core.recorder.select_notifications(
        start=0, limit=limit, topics=projection.topics, inclusive_of_start=False
    ):
        projection.process_event(core.mapper.to_domain_event(n), Tracking(core.name, n.id))
    projection.flush()
    return view


def test_a_batch_already_tracked_is_refused_and_writes_nothing(core: ShoalCore) -> None:
    view = build(core, ":memory:")
    position = view.max_tracking_id(core.name)
    assert position is not None
    before = view.table_counts()
    batch = new_batch()
    batch.facts["outcomes"].add((1, None, "x", None, "success", None, "", "me"))
    batch.events = 1
    with pytest.raises(IntegrityError):
        view.write(batch, Tracking(core.name, position))
    assert view.table_counts() == before
    assert view.max_tracking_id(core.name) == position


def test_cost_by_goal_and_outcome_agree_whether_summed_per_session_or_per_call(
    core: ShoalCore,
) -> None:
    view = build(core, ":memory:")
    # With a time range the sums run over model calls; without one, over sessions.
    everything = {"since": "2000-01-01T00:00:00+00:00"}
    for by in (["outcome"], ["goal"], ["goal", "outcome"]):
        per_session = run_named(view.datastore, "cost", {"by": by, "limit": 10_000})
        per_call = run_named(view.datastore, "cost", {"by": by, "limit": 10_000, **everything})
        assert per_session == per_call
        assert isinstance(per_session, CostAnswer) and per_session.groups > 1


def test_every_goal_carries_its_sessions_spend_and_the_cores_outcome(core: ShoalCore) -> None:
    view = build(core, ":memory:")
    rows = {r["gid"]: r for r in view.datastore.rows("SELECT * FROM goals")}
    units = {
        r["unit"]: r["effective_outcome"]
        for r in view.datastore.rows("SELECT * FROM outcome_units WHERE kind = 'goal'")
    }
    reported = 0
    for gid, row in rows.items():
        goal = core.goal(gid)
        assert row["cost_usd"] == core.goal_cost(goal), gid
        assert row["status"] == goal.status, gid
        assert row["sessions"] == len(goal.iids), gid
        if goal.outcome is not None:
            reported += 1
            assert units[gid] == goal.outcome, gid
    assert reported > 10

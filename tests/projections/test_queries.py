"""Named queries against figures computed independently from the core's aggregates."""

from __future__ import annotations

from decimal import Decimal

from shoal.aggregates.application import ShoalCore
from shoal.projections.queries import (
    FailedSpendAnswer,
    InterventionAnswer,
    LedgerAnswer,
    SuccessCostAnswer,
    run_named,
)
from tests.projections.conftest import build


def test_the_ledger_filters_by_decision_tool_and_sensitivity(core: ShoalCore) -> None:
    ds = build(core, ":memory:").datastore
    denied = run_named(ds, "ledger", {"decision": "deny", "limit": 10_000})
    assert isinstance(denied, LedgerAnswer)
    expected = sum(s.denials for s in core.sessions())
    assert len(denied.rows) == expected > 0
    assert {r.result_class for r in denied.rows} == {"denied"}
    assert [r.seq for r in denied.rows] == sorted((r.seq for r in denied.rows), reverse=True)

    confidential = run_named(
        ds, "ledger", {"tool": "crm_lookup", "sensitivity": "confidential", "limit": 10_000}
    )
    assert isinstance(confidential, LedgerAnswer)
    calls = ds.rows("SELECT count(*) AS n FROM tool_calls WHERE tool = 'crm_lookup'")[0]["n"]
    assert len(confidential.rows) == calls > 0
    assert {(r.tool, r.decision, r.version) for r in confidential.rows} == {
        ("crm_lookup", "allow", "1")
    }

    newest = run_named(ds, "ledger", {"limit": 5})
    assert isinstance(newest, LedgerAnswer)
    top = ds.rows("SELECT seq FROM tool_ledger ORDER BY seq DESC LIMIT 5")
    assert [r.seq for r in newest.rows] == [r["seq"] for r in top]


def test_failed_spend_is_what_failed_and_killed_sessions_cost(core: ShoalCore) -> None:
    answer = run_named(build(core, ":memory:").datastore, "failed-spend", {})
    assert isinstance(answer, FailedSpendAnswer)
    ended_badly = [s for s in core.sessions() if s.status in ("failed", "killed")]
    assert answer.total_usd == sum((s.cost_usd for s in ended_badly), Decimal(0))
    assert sum(r.killed_sessions for r in answer.rows) == sum(
        s.status == "killed" for s in ended_badly
    )


def test_intervention_rate_counts_sessions_that_asked_a_human(core: ShoalCore) -> None:
    answer = run_named(build(core, ":memory:").datastore, "interventions", {})
    assert isinstance(answer, InterventionAnswer)
    sessions = core.sessions()
    asked = sum(bool(s.approvals) for s in sessions)  # every approval began as a request
    assert answer.total.sessions == len(sessions)
    assert answer.total.sessions_needing_approval == asked > 0
    assert answer.total.rate == (Decimal(asked) / len(sessions)).quantize(Decimal("1e-10"))


def test_cost_per_success_divides_all_spend_by_successful_goals(core: ShoalCore) -> None:
    answer = run_named(build(core, ":memory:").datastore, "cost-per-success", {})
    assert isinstance(answer, SuccessCostAnswer)
    goals = [core.goal(gid) for gid in {s.gid for s in core.sessions() if s.gid}]
    implied = {"completed": "success", "failed": "failure"}
    outcomes = [g.outcome or implied.get(g.status, "pending") for g in goals]
    spend = sum((core.goal_cost(g) for g in goals), Decimal(0))
    successes = outcomes.count("success")
    assert answer.total.units == len(goals)
    assert answer.total.successes == successes
    assert answer.total.spend_usd == spend
    assert answer.total.cost_per_success_usd == (spend / successes).quantize(Decimal("1e-10"))

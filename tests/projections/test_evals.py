"""Attribution, evaluations, cohort comparisons and the report, against hand-computed figures.

The stream (``evalstream``) is folded by the real core and projected into a real DuckDB
file; every expected number below is worked out from the goals as written.
"""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest
from pydantic import ValidationError

from shoal.projections.answers import CostAnswer, OutcomesAnswer
from shoal.projections.eval_answers import (
    Cohort,
    CompareAnswer,
    CompareParams,
    EvalsAnswer,
    ReportAnswer,
)
from shoal.projections.evals import cohort_outcomes
from shoal.projections.queries import run_named
from tests.projections.evalstream import Goal, project

CENT = Decimal("0.01")


def _versions(ok_a: int, n_a: int, ok_b: int, n_b: int) -> list[Goal]:
    goals = [Goal(i, "1.0", succeed=i < ok_a) for i in range(n_a)]
    goals += [Goal(100 + i, "1.1", succeed=i < ok_b, cents=2) for i in range(n_b)]
    return goals


def _compare(tmp: Path, goals: list[Goal]) -> CompareAnswer:
    ds = project(tmp, goals)
    answer = run_named(
        ds,
        "evals-compare",
        {
            "baseline": {"agent": "worker", "agent_version": "1.0"},
            "candidate": {"agent": "worker", "agent_version": "1.1"},
        },
    )
    assert isinstance(answer, CompareAnswer)
    return answer


def test_a_worse_release_is_flagged_as_a_regression_with_its_sample_sizes(tmp_path: Path) -> None:
    # 36 of 40 goals succeed on 1.0, 24 of 40 on 1.1.
    answer = _compare(tmp_path, _versions(36, 40, 24, 40))
    a, b = answer.baseline, answer.candidate
    assert (a.sessions, a.decided, a.successes, a.failures) == (40, 40, 36, 4)
    assert (b.sessions, b.decided, b.successes, b.failures) == (40, 40, 24, 16)
    assert (a.success_rate, b.success_rate) == (Decimal("0.9"), Decimal("0.6"))
    # Spend: 40 x 1 cent, 40 x 2 cents; per success 0.40/36 and 0.80/24.
    assert (a.spend_usd, b.spend_usd) == (Decimal("0.40"), Decimal("0.80"))
    assert a.cost_per_success_usd == Decimal("0.0111111111")
    assert b.cost_per_success_usd == Decimal("0.0333333333")
    rate = answer.success_rate
    assert (rate.n_a, rate.n_b, rate.successes_a, rate.successes_b) == (40, 40, 36, 24)
    # pooled 0.75: z = (0.6 - 0.9) / sqrt(0.75 * 0.25 * (1/40 + 1/40)) = -3.0984
    assert rate.z == pytest.approx(-3.0984, abs=1e-4)
    assert rate.p_value == pytest.approx(0.001946, abs=1e-5)
    assert rate.significant and rate.regressed
    cost = answer.cost_per_success
    assert (cost.units_a, cost.units_b) == (40, 40)
    assert cost.estimate == pytest.approx(0.0333333 - 0.0111111, abs=1e-6)
    assert cost.significant and cost.regressed
    assert answer.regressed
    assert answer.verdict.startswith("regressed: success rate fell (p=0.00195, n=40 vs 40)")


def test_a_difference_of_two_samples_is_not_called_significant(tmp_path: Path) -> None:
    # 2 of 2 succeed on 1.0, 0 of 2 on 1.1: a 100-point drop, and still only noise.
    answer = _compare(tmp_path, _versions(2, 2, 0, 2))
    rate = answer.success_rate
    assert (rate.n_a, rate.n_b, rate.successes_a, rate.successes_b) == (2, 2, 2, 0)
    assert (rate.p_value, rate.significant, rate.regressed) == (None, False, False)
    assert rate.reason == "too few samples (n=2 and n=2; need 10 each)"
    assert (answer.cost_per_success.significant, answer.regressed) == (False, False)
    assert answer.verdict == "not judged: too few samples (n=2 and n=2; need 10 each)"


def test_equal_releases_are_not_a_regression(tmp_path: Path) -> None:
    goals = [Goal(i, "1.0", succeed=i % 5 != 0) for i in range(30)]
    goals += [Goal(100 + i, "1.1", succeed=i % 5 != 0) for i in range(30)]
    answer = _compare(tmp_path, goals)
    assert (answer.success_rate.z, answer.success_rate.p_value) == (0.0, 1.0)
    assert (answer.regressed, answer.cost_per_success.significant) == (False, False)


def test_cohort_outcomes_sums_one_cohort(tmp_path: Path) -> None:
    ds = project(tmp_path, _versions(7, 10, 3, 5))
    out = cohort_outcomes(ds, Cohort(agent="worker", agent_version="1.1"))
    assert (out.sessions, out.decided, out.successes, out.failures, out.pending) == (5, 5, 3, 2, 0)
    assert (out.spend_usd, out.cost_per_success_usd) == (Decimal("0.10"), Decimal("0.0333333333"))
    assert cohort_outcomes(ds, Cohort(agent_version="9.9")).sessions == 0


def test_compare_refuses_the_same_cohort_twice() -> None:
    with pytest.raises(ValidationError, match="baseline and candidate are the same cohort"):
        CompareParams(baseline=Cohort(model="m"), candidate=Cohort(model="m"))


def test_cost_by_team_workflow_and_capability_is_exact_to_the_cent(tmp_path: Path) -> None:
    goals = [
        Goal(1, "1.0", True, cents=3, team="payments", workflow="triage", capability="fix"),
        Goal(2, "1.0", True, cents=5, team="payments", workflow="triage", capability="fix"),
        Goal(3, "1.0", False, cents=7, team="payments", workflow="triage", capability="review"),
        # The orchestrator did not pass the labels on: the goal's apply to its child.
        Goal(4, "1.0", True, cents=11, team="search", workflow="triage", task_labels=False),
        Goal(5, "1.1", True, cents=13, team="search", workflow="release", capability="review"),
        Goal(6, "1.1", False, cents=17, team="search", workflow="release", capability="review"),
    ]
    ds = project(tmp_path, goals)
    answer = run_named(ds, "cost", {"by": ["team", "workflow", "capability"]})
    assert isinstance(answer, CostAnswer)
    got = {tuple(r.key): (r.calls, r.cost_usd) for r in answer.rows}
    assert got == {
        ("search", "release", "review"): (2, Decimal(30) * CENT),
        ("search", "triage", "fix"): (1, Decimal(11) * CENT),
        ("payments", "triage", "fix"): (2, Decimal(8) * CENT),
        ("payments", "triage", "review"): (1, Decimal(7) * CENT),
    }
    assert [tuple(r.key) for r in answer.rows] == list(got)  # most expensive first
    assert list(got) == [
        ("search", "release", "review"),
        ("search", "triage", "fix"),
        ("payments", "triage", "fix"),
        ("payments", "triage", "review"),
    ]
    assert (answer.calls, answer.total_usd) == (6, Decimal(56) * CENT)
    # The same sums over a time range (per call, not per session), and by agent version.
    ranged = run_named(ds, "cost", {"by": ["team"], "since": "2026-11-30T00:00:00Z"})
    assert isinstance(ranged, CostAnswer)
    assert {r.key[0]: r.cost_usd for r in ranged.rows} == {
        "payments": Decimal(15) * CENT,
        "search": Decimal(41) * CENT,
    }
    expected = {
        ("1.0", "success"): (3, Decimal(19) * CENT),
        ("1.0", "failure"): (1, Decimal(7) * CENT),
        ("1.1", "success"): (1, Decimal(13) * CENT),
        ("1.1", "failure"): (1, Decimal(17) * CENT),
    }
    units = run_named(ds, "outcomes", {"by": ["team"]})
    assert isinstance(units, OutcomesAnswer)
    assert [(r.key, r.outcome, r.units, r.spend_usd) for r in units.rows] == [
        (["payments"], "failure", 1, Decimal(7) * CENT),
        (["payments"], "success", 2, Decimal(8) * CENT),
        (["search"], "failure", 1, Decimal(17) * CENT),
        (["search"], "success", 2, Decimal(24) * CENT),
    ]
    for window in ({}, {"since": "2026-11-30T00:00:00Z"}):
        by_version = run_named(ds, "cost", {"by": ["agent_version", "outcome"], **window})
        assert isinstance(by_version, CostAnswer)
        assert {tuple(r.key): (r.calls, r.cost_usd) for r in by_version.rows} == expected


def test_evals_groups_rates_retries_interventions_and_tool_sets(tmp_path: Path) -> None:
    goals = [
        Goal(1, "1.0", True, cents=2, attempts=2, tools=("search", "read")),
        Goal(2, "1.0", True, cents=2, tools=("read", "search", "read"), approval=True),
        Goal(3, "1.0", False, cents=2, ask=True),
        Goal(4, "1.1", True, cents=4, attempts=3, model="gpt-4o-mini"),
    ]
    ds = project(tmp_path, goals)
    answer = run_named(ds, "evals", {"by": ["agent_version", "tool_set"]})
    assert isinstance(answer, EvalsAnswer)
    rows = {tuple(r.key): r for r in answer.rows}
    assert set(rows) == {("1.0", "read+search"), ("1.0", "(none)"), ("1.1", "(none)")}
    both = rows["1.0", "read+search"]
    assert (both.sessions, both.successes, both.retries, both.interventions) == (2, 2, 1, 1)
    assert (both.success_rate, both.retries_per_success) == (Decimal(1), Decimal("0.5"))
    assert (both.spend_usd, both.cost_per_success_usd) == (Decimal("0.04"), Decimal("0.02"))
    assert both.intervention_rate == Decimal("0.5")
    none = rows["1.0", "(none)"]
    assert (none.successes, none.failures, none.success_rate, none.interventions) == (
        0,
        1,
        Decimal(0),
        1,
    )
    assert none.cost_per_success_usd is None
    t = answer.total
    assert (t.sessions, t.successes, t.failures, t.retries, t.interventions) == (4, 3, 1, 3, 2)
    assert t.success_rate == Decimal("0.75")
    assert t.retries_per_success == Decimal(1)
    # The model of a session is the first it called (gpt-4o-mini 400k input: 0.06 USD).
    by_model = run_named(ds, "evals", {"by": ["model", "task_class", "prompt_template"]})
    assert isinstance(by_model, EvalsAnswer)
    assert {tuple(r.key): r.spend_usd for r in by_model.rows} == {
        ("offline-small", "bugfix", "fix-prompt"): Decimal("0.06"),
        ("gpt-4o-mini", "bugfix", "fix-prompt"): Decimal("0.06"),
    }
    # Latency: every task session here ends a fixed number of seconds after it starts.
    assert all(r.latency_p50_s is not None and r.latency_p50_s > 0 for r in answer.rows)


def test_report_counts_work_cost_and_controls_per_fleet_and_team(tmp_path: Path) -> None:
    goals = [
        Goal(1, "1.0", True, cents=10, team="payments", approval=True),
        Goal(2, "1.0", True, cents=20, team="payments", denied=True),
        Goal(3, "1.0", False, cents=30, team="payments", killed=True),
        Goal(4, "1.0", True, cents=40, team="search", denied=True, approval=True),
    ]
    ds = project(tmp_path, goals)
    answer = run_named(ds, "report", {"since": "2026-11-01T00:00:00Z"})
    assert isinstance(answer, ReportAnswer)
    rows = {(r.fleet, r.team): r for r in answer.rows}
    assert list(rows) == [("rev", "payments"), ("rev", "search")]
    pay = rows["rev", "payments"]
    assert (pay.units, pay.successes, pay.failures, pay.spend_usd) == (3, 2, 1, Decimal("0.60"))
    assert pay.cost_per_success_usd == Decimal("0.30")
    # Sessions: each goal's root session and its task session.
    assert (pay.sessions, pay.denials, pay.approvals_requested, pay.approvals_granted) == (
        6,
        1,
        1,
        1,
    )
    assert (pay.kills, pay.incidents) == (1, 0)
    search = rows["rev", "search"]
    assert (search.units, search.successes, search.spend_usd) == (1, 1, Decimal("0.40"))
    assert (search.denials, search.approvals_granted, search.kills) == (1, 1, 0)
    t = answer.total
    assert (t.units, t.successes, t.spend_usd, t.cost_per_success_usd) == (
        4,
        3,
        Decimal("1.00"),
        Decimal("0.3333333333"),
    )
    assert (t.denials, t.approvals_requested, t.kills) == (2, 2, 1)
    empty = run_named(ds, "report", {"since": "2026-12-01T00:00:00Z"})
    assert isinstance(empty, ReportAnswer)
    assert (empty.rows, empty.total.units, empty.total.spend_usd) == ([], 0, Decimal(0))


def test_labels_survive_a_rebuild_by_replay(tmp_path: Path) -> None:
    goals = [Goal(i, "1.0" if i % 2 else "1.1", i % 3 != 0, team=f"t{i % 2}") for i in range(9)]
    first = project(tmp_path / "a", goals, batch=1)
    again = project(tmp_path / "b", goals, batch=10_000)
    for ds in (first, again):
        # Every root and task session carries its goal's team, one event per batch or not.
        teams = "SELECT team, count(*) AS n FROM sessions GROUP BY team ORDER BY team"
        assert ds.rows(teams) == [{"team": "t0", "n": 10}, {"team": "t1", "n": 8}]
    q = {"by": ["team", "agent_version"]}
    assert run_named(first, "evals", q) == run_named(again, "evals", q)

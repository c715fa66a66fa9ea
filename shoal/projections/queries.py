"""The questions the projection answers, as named queries with typed parameters and answers.

Each named query is a function ``(datastore, params) -> answer`` registered in
:data:`NAMED_QUERIES`; parameters and answers are pydantic models, so the query service
sends them as JSON and the CLI gets the same types back. Money is :class:`~decimal.Decimal`
end to end (a decimal string on the wire).

Definitions the design leaves open (see ``docs/projections.md``):

* a session's *effective outcome* is the reported one (``outcome.reported``) if any, else
  what its status implies: completed → success, failed or killed → failure, else pending;
* an *outcome unit* is a goal (all its sessions' spend; the root session's reported outcome
  stands for the goal) or a bare session (no goal, no parent);
* a *workflow* is a fleet and a capability (the kind of task); a goal's root session, which
  has no capability, counts as the workflow ``(goal)``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from pydantic import BaseModel

from shoal.projections.answers import (
    COST_DIMENSIONS,
    CacheAnswer,
    CacheRow,
    CostAnswer,
    CostParams,
    CostRow,
    FailedSpendAnswer,
    FailedSpendRow,
    InterventionAnswer,
    InterventionRow,
    LedgerAnswer,
    LedgerParams,
    LedgerRow,
    OutcomeRow,
    OutcomesAnswer,
    OutcomesParams,
    RetriesAnswer,
    RetriesRow,
    SessionRow,
    SessionsAnswer,
    SessionsParams,
    SuccessCostAnswer,
    SuccessCostRow,
    TimeRange,
    WorkflowRow,
    WorkflowsAnswer,
    WorkflowsParams,
)
from shoal.projections.cost import cost
from shoal.projections.eval_answers import (
    CompareAnswer,
    CompareParams,
    EvalsAnswer,
    EvalsParams,
    ReportAnswer,
)
from shoal.projections.evals import compare_cohorts, evals
from shoal.projections.money import MONEY_QUANTUM
from shoal.projections.report import report
from shoal.projections.views import LEDGER_CALLS, LEDGER_REFUSALS
from shoal.schemas import utcnow

if TYPE_CHECKING:  # duckdb loads where queries run, not in every CLI process
    from shoal.projections.recorder import DuckDBDatastore

__all__ = [
    "COST_DIMENSIONS",
    "EXAMPLE_COMPARE",
    "NAMED_QUERIES",
    "CostAnswer",
    "CostParams",
    "CostRow",
    "FailedSpendAnswer",
    "InterventionAnswer",
    "LedgerAnswer",
    "LedgerParams",
    "NamedQuery",
    "OutcomesAnswer",
    "RetriesAnswer",
    "SessionsAnswer",
    "SessionsParams",
    "SuccessCostAnswer",
    "TimeRange",
    "WorkflowsAnswer",
    "WorkflowsParams",
    "all_answers",
    "run_named",
]

_ZERO = Decimal(0)


# -- the queries -------------------------------------------------------------------------------


def _ratio(numerator: Decimal | int, denominator: int) -> Decimal | None:
    if not denominator:
        return None
    return (Decimal(numerator) / denominator).quantize(MONEY_QUANTUM)


def _success_row(fleet: str | None, r: dict[str, Any]) -> SuccessCostRow:
    ratio = _ratio(r["spend_usd"], r["successes"])
    return SuccessCostRow(**{**r, "fleet": fleet}, cost_per_success_usd=ratio)


def cost_per_success(ds: DuckDBDatastore, p: TimeRange) -> SuccessCostAnswer:
    """Spend per successful outcome, per fleet and in all (units opened in the range)."""
    where, params = p.where("opened_at")
    rows = ds.rows(
        f"""
        SELECT fleet, count(*) AS units,
               count(*) FILTER (effective_outcome = 'success') AS successes,
               count(*) FILTER (effective_outcome = 'failure') AS failures,
               count(*) FILTER (effective_outcome = 'abandoned') AS abandoned,
               count(*) FILTER (effective_outcome = 'pending') AS pending,
               COALESCE(sum(spend), 0) AS spend_usd,
               COALESCE(sum(spend) FILTER (effective_outcome = 'success'), 0)
                   AS success_spend_usd
        FROM outcome_units WHERE {where}
        GROUP BY GROUPING SETS ((fleet), ())
        ORDER BY GROUPING(fleet), spend_usd DESC, fleet
        """,
        params,
    )
    fleets, total = rows[:-1], rows[-1] if rows else None
    empty = {k: 0 for k in ("units", "successes", "failures", "abandoned", "pending")}
    return SuccessCostAnswer(
        rows=[_success_row(r["fleet"], r) for r in fleets],
        total=_success_row(
            None, total or {**empty, "spend_usd": _ZERO, "success_spend_usd": _ZERO}
        ),
    )


def failed_spend(ds: DuckDBDatastore, p: TimeRange) -> FailedSpendAnswer:
    """What sessions that failed or were killed cost, per fleet (sessions opened in range)."""
    where, params = p.where("opened_at")
    rows = ds.rows(
        f"""
        SELECT fleet, count(*) FILTER (status = 'failed') AS failed_sessions,
               count(*) FILTER (status = 'killed') AS killed_sessions, sum(cost_usd) AS spend_usd
        FROM sessions WHERE status IN ('failed', 'killed') AND {where}
        GROUP BY fleet ORDER BY spend_usd DESC, fleet
        """,
        params,
    )
    out = [FailedSpendRow(**r) for r in rows]
    return FailedSpendAnswer(rows=out, total_usd=sum((r.spend_usd for r in out), _ZERO))


def retries_per_success(ds: DuckDBDatastore, p: TimeRange) -> RetriesAnswer:
    """Retries (attempts after the first) per completed session, per fleet and capability."""
    where, params = p.where("opened_at")
    rows = ds.rows(
        f"""
        SELECT fleet, capability, count(*) AS sessions,
               COALESCE(sum(greatest(attempts - 1, 0)), 0) AS retries,
               count(*) FILTER (effective_outcome = 'success') AS successes
        FROM session_outcomes WHERE capability IS NOT NULL AND {where}
        GROUP BY fleet, capability ORDER BY retries DESC, fleet, capability
        """,
        params,
    )
    ratio = "retries_per_success"
    return RetriesAnswer(
        rows=[RetriesRow(**r, **{ratio: _ratio(r["retries"], r["successes"])}) for r in rows]
    )


def tool_ledger(ds: DuckDBDatastore, p: LedgerParams) -> LedgerAnswer:
    """Tool calls (run or refused), newest first, filtered."""
    where, params = p.where("ts")
    for column, value in (
        ("tool", p.tool),
        ("agent", p.agent),
        ("decision", p.decision),
        ("sensitivity", p.sensitivity),
        ("iid", p.iid),
    ):
        if value is not None:
            where += f" AND {column} = ?"
            params.append(value)
    # The newest rows of each half first, then of both: a top-N per table, not a sort of
    # every matching call.
    top = f"WHERE {where} ORDER BY seq DESC, tool LIMIT {p.limit}"
    rows = ds.rows(
        f"""
        SELECT * FROM (
            (SELECT * FROM ({LEDGER_CALLS}) {top})
            UNION ALL
            (SELECT * FROM ({LEDGER_REFUSALS}) {top})
        ) {top}
        """,
        [*params, *params, *params],
    )
    return LedgerAnswer(rows=[LedgerRow(**r) for r in rows])


def sessions(ds: DuckDBDatastore, p: SessionsParams) -> SessionsAnswer:
    """Active, stuck or looping sessions, most recently active first."""
    now = p.now or utcnow()
    active = "status IN ('open', 'running')"
    condition, params = {
        "active": (active, []),
        "stuck": (f"{active} AND (stuck OR last_event_at < ?)", [now - _seconds(p.stuck_after_s)]),
        "looping": ("looping", []),
    }[p.state]
    rows = ds.rows(
        f"""
        SELECT iid, gid, fleet, agent, capability, status, opened_at, last_event_at,
               model_calls, tool_calls, cost_usd, stuck OR last_event_at < ? AS stuck, looping
        FROM sessions WHERE {condition}
        ORDER BY last_event_at DESC, iid LIMIT {p.limit}
        """,
        [now - _seconds(p.stuck_after_s), *params],
    )
    return SessionsAnswer(state=p.state, rows=[SessionRow(**r) for r in rows])


def _seconds(s: float) -> timedelta:
    return timedelta(seconds=s)


def top_workflows(ds: DuckDBDatastore, p: WorkflowsParams) -> WorkflowsAnswer:
    """Workflows (fleet, capability) by spend or by successful outcomes."""
    where, params = p.where("opened_at")
    order = (
        "spend_usd DESC, successes DESC" if p.order == "spend" else "successes DESC, spend_usd DESC"
    )
    rows = ds.rows(
        f"""
        SELECT fleet, COALESCE(capability, '(goal)') AS capability, count(*) AS sessions,
               count(*) FILTER (effective_outcome = 'success') AS successes,
               count(*) FILTER (effective_outcome = 'failure') AS failures,
               sum(cost_usd) AS spend_usd
        FROM session_outcomes WHERE {where}
        GROUP BY ALL ORDER BY {order}, fleet, capability LIMIT {p.limit}
        """,
        params,
    )
    return WorkflowsAnswer(
        order=p.order,
        rows=[
            WorkflowRow(**r, cost_per_success_usd=_ratio(r["spend_usd"], r["successes"]))
            for r in rows
        ],
    )


def _intervention_row(fleet: str | None, r: dict[str, Any]) -> InterventionRow:
    rate = _ratio(r["sessions_needing_approval"], r["sessions"]) or _ZERO
    decided = r.get("granted", 0) + r.get("denied", 0) + r.get("expired", 0)
    wait = r.get("median_wait_s")
    return InterventionRow(
        **{**r, "fleet": fleet, "median_wait_s": None if wait is None else float(wait)},
        rate=rate,
        approval_rate=_ratio(r.get("granted", 0), decided),
    )


def intervention_rate(ds: DuckDBDatastore, p: TimeRange) -> InterventionAnswer:
    """Human intervention per fleet: sessions that needed an approval / sessions, and how
    the approvals went (granted, denied, expired, approval rate, median wait)."""
    where, params = p.where("opened_at")
    rows = ds.rows(
        f"""
        SELECT fleet, count(*) AS sessions,
               count(*) FILTER (approvals_requested > 0) AS sessions_needing_approval,
               COALESCE(sum(approvals_requested), 0) AS approvals_requested
        FROM sessions WHERE {where}
        GROUP BY GROUPING SETS ((fleet), ())
        ORDER BY GROUPING(fleet), sessions DESC, fleet
        """,
        params,
    )
    # One row per decided approval (its first decision), with the wait since its request.
    decided = ds.rows(
        f"""
        WITH asked AS (
            SELECT request_id, min(ts) AS at FROM approvals WHERE state = 'requested'
            GROUP BY request_id
        ), decided AS (
            SELECT request_id, any_value(iid) AS iid, min(ts) AS at,
                   arg_min(state, ts) AS state
            FROM approvals WHERE state IN ('granted', 'denied', 'expired')
            GROUP BY request_id
        )
        SELECT s.fleet,
               count(*) FILTER (d.state = 'granted') AS granted,
               count(*) FILTER (d.state = 'denied') AS denied,
               count(*) FILTER (d.state = 'expired') AS expired,
               median(epoch(d.at) - epoch(q.at)) AS median_wait_s
        FROM decided d JOIN asked q USING (request_id) JOIN sessions s ON s.iid = d.iid
        WHERE {where.replace("opened_at", "s.opened_at")}
        GROUP BY GROUPING SETS ((s.fleet), ())
        ORDER BY GROUPING(s.fleet), s.fleet
        """,
        params,
    )
    by_fleet = {r["fleet"]: r for r in decided[:-1]}
    empty = {"sessions": 0, "sessions_needing_approval": 0, "approvals_requested": 0}
    total = {**(rows[-1] if rows else empty), **_decisions(decided[-1] if decided else None)}
    return InterventionAnswer(
        rows=[
            _intervention_row(r["fleet"], {**r, **_decisions(by_fleet.get(r["fleet"]))})
            for r in rows[:-1]
        ],
        total=_intervention_row(None, total),
    )


def _decisions(r: dict[str, Any] | None) -> dict[str, Any]:
    if r is None:
        return {"granted": 0, "denied": 0, "expired": 0, "median_wait_s": None}
    return {k: r[k] for k in ("granted", "denied", "expired", "median_wait_s")}


def outcomes(ds: DuckDBDatastore, p: OutcomesParams) -> OutcomesAnswer:
    """Outcome units and their spend, per fleet, effective outcome and any labels in ``by``."""
    where, params = p.where("opened_at")
    labels = "".join(f", {d} AS k{i}" for i, d in enumerate(p.by))
    order = "".join(f", k{i}" for i in range(len(p.by)))
    rows = ds.rows(
        f"""
        SELECT fleet, effective_outcome AS outcome{labels}, count(*) AS units,
               COALESCE(sum(spend), 0) AS spend_usd
        FROM outcome_units WHERE {where}
        GROUP BY ALL ORDER BY fleet{order}, outcome
        """,
        params,
    )
    return OutcomesAnswer(
        rows=[
            OutcomeRow(
                fleet=r["fleet"],
                outcome=r["outcome"],
                units=r["units"],
                spend_usd=r["spend_usd"],
                key=[r[f"k{i}"] for i in range(len(p.by))],
            )
            for r in rows
        ]
    )


def _cache_row(fleet: str | None, r: dict[str, Any]) -> CacheRow:
    return CacheRow(
        fleet=fleet,
        calls=r["calls"],
        hits=r["hits"],
        hit_rate=_ratio(r["hits"], r["calls"]),
        saved_usd=r["saved_usd"],
    )


def cache_savings(ds: DuckDBDatastore, p: TimeRange) -> CacheAnswer:
    """The gateway's response cache: share of its calls answered from the cache, money saved.

    Gateway records have call ids ``gw-…``; a hit is recorded with provider ``cache``, no
    tokens (the core charges nothing) and the price of the reused answer as its reported cost.
    """
    where, params = p.where("ts")
    rows = ds.rows(
        f"""
        SELECT fleet, count(*) AS calls, count(*) FILTER (provider = 'cache') AS hits,
               COALESCE(sum(reported_cost_usd) FILTER (provider = 'cache'), 0) AS saved_usd
        FROM model_calls WHERE call_id LIKE 'gw-%' AND {where}
        GROUP BY GROUPING SETS ((fleet), ())
        ORDER BY GROUPING(fleet), fleet
        """,
        params,
    )
    total = rows[-1] if rows else {"calls": 0, "hits": 0, "saved_usd": _ZERO}
    return CacheAnswer(
        rows=[_cache_row(r["fleet"], r) for r in rows[:-1]], total=_cache_row(None, total)
    )


# -- the registry ------------------------------------------------------------------------------

P = TypeVar("P", bound=BaseModel)
A = TypeVar("A", bound=BaseModel)


@dataclass(frozen=True)
class NamedQuery(Generic[P, A]):
    """A query the service answers: its name (the endpoint), parameter and answer types."""

    name: str
    params: type[P]
    answer: type[A]
    run: Callable[[DuckDBDatastore, P], A]
    description: str


NAMED_QUERIES: dict[str, NamedQuery[Any, Any]] = {
    q.name: q
    for q in (
        NamedQuery("cost", CostParams, CostAnswer, cost, "cost by dimension"),
        NamedQuery(
            "cost-per-success",
            TimeRange,
            SuccessCostAnswer,
            cost_per_success,
            "spend per successful outcome",
        ),
        NamedQuery("failed-spend", TimeRange, FailedSpendAnswer, failed_spend, "failed sessions"),
        NamedQuery("retries", TimeRange, RetriesAnswer, retries_per_success, "retries/success"),
        NamedQuery("ledger", LedgerParams, LedgerAnswer, tool_ledger, "tool-call ledger"),
        NamedQuery("sessions", SessionsParams, SessionsAnswer, sessions, "active/stuck/looping"),
        NamedQuery("workflows", WorkflowsParams, WorkflowsAnswer, top_workflows, "top workflows"),
        NamedQuery(
            "interventions",
            TimeRange,
            InterventionAnswer,
            intervention_rate,
            "human-intervention rate",
        ),
        NamedQuery("outcomes", OutcomesParams, OutcomesAnswer, outcomes, "outcomes and spend"),
        NamedQuery("cache", TimeRange, CacheAnswer, cache_savings, "gateway cache hits, saved"),
        NamedQuery("evals", EvalsParams, EvalsAnswer, evals, "success rate, cost per success"),
        NamedQuery(
            "evals-compare", CompareParams, CompareAnswer, compare_cohorts, "two cohorts compared"
        ),
        NamedQuery("report", TimeRange, ReportAnswer, report, "work, cost, risk, controls"),
    )
}
"""Every named query, by endpoint name."""


EXAMPLE_COMPARE: dict[str, Any] = {
    "baseline": {"agent_version": "1.0"},
    "candidate": {"agent_version": "1.1"},
}
"""Parameters for ``evals-compare`` where a caller has none of its own (a smoke test)."""


def run_named(ds: DuckDBDatastore, name: str, params: dict[str, Any] | None = None) -> BaseModel:
    """Run a named query from JSON-ready parameters (validated against its model)."""
    query = NAMED_QUERIES[name]
    answer: BaseModel = query.run(ds, query.params.model_validate(params or {}))
    return answer


def all_answers(
    ds: DuckDBDatastore, now: datetime, names: Sequence[str] | None = None
) -> dict[str, Any]:
    """Every named query's answer with fixed parameters, as JSON data (to compare builds)."""
    params: dict[str, dict[str, Any]] = {
        "sessions": {"now": now.isoformat()},
        "evals-compare": EXAMPLE_COMPARE,
    }
    out: dict[str, Any] = {}
    for name in names or NAMED_QUERIES:
        out[name] = run_named(ds, name, params.get(name)).model_dump(mode="json")
    for dims in (["fleet"], ["agent"], ["principal"], ["goal"], ["outcome"], ["agent", "model"]):
        key = "cost:" + ",".join(dims)
        out[key] = run_named(ds, "cost", {"by": dims}).model_dump(mode="json")
    for state in ("stuck", "looping"):
        out[f"sessions:{state}"] = run_named(
            ds, "sessions", {"state": state, "now": now.isoformat()}
        ).model_dump(mode="json")
    out["workflows:successes"] = run_named(ds, "workflows", {"order": "successes"}).model_dump(
        mode="json"
    )
    return out

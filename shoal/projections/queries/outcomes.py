"""Outcome queries: spend per success, outcome units, failed spend, retries, top workflows."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from shoal.projections.answers import (
    FailedSpendAnswer,
    FailedSpendRow,
    OutcomeRow,
    OutcomesAnswer,
    OutcomesParams,
    RetriesAnswer,
    RetriesRow,
    SuccessCostAnswer,
    SuccessCostRow,
    TimeRange,
    WorkflowRow,
    WorkflowsAnswer,
    WorkflowsParams,
)
from shoal.projections.ratio import ZERO, ratio

if TYPE_CHECKING:  # duckdb loads where queries run, not in every CLI process
    from shoal.projections.recorder import DuckDBDatastore


def _success_row(fleet: str | None, r: dict[str, Any]) -> SuccessCostRow:
    per_success = ratio(r["spend_usd"], r["successes"])
    return SuccessCostRow(**{**r, "fleet": fleet}, cost_per_success_usd=per_success)


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
        total=_success_row(None, total or {**empty, "spend_usd": ZERO, "success_spend_usd": ZERO}),
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
    return FailedSpendAnswer(rows=out, total_usd=sum((r.spend_usd for r in out), ZERO))


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
    return RetriesAnswer(
        rows=[
            RetriesRow(**r, retries_per_success=ratio(r["retries"], r["successes"])) for r in rows
        ]
    )


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
            WorkflowRow(**r, cost_per_success_usd=ratio(r["spend_usd"], r["successes"]))
            for r in rows
        ],
    )


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

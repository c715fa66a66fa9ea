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
from datetime import datetime
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from pydantic import BaseModel

from shoal.projections.answers import (
    COST_DIMENSIONS,
    CacheAnswer,
    CostAnswer,
    CostParams,
    CostRow,
    FailedSpendAnswer,
    InterventionAnswer,
    LedgerAnswer,
    LedgerParams,
    OutcomesAnswer,
    OutcomesParams,
    RetriesAnswer,
    SessionsAnswer,
    SessionsParams,
    SuccessCostAnswer,
    TimeRange,
    WorkflowsAnswer,
    WorkflowsParams,
)
from shoal.projections.eval_answers import (
    CompareAnswer,
    CompareParams,
    EvalsAnswer,
    EvalsParams,
    ReportAnswer,
)
from shoal.projections.evals import compare_cohorts, evals
from shoal.projections.queries.activity import (
    cache_savings,
    intervention_rate,
    sessions,
    tool_ledger,
)
from shoal.projections.queries.cost import cost
from shoal.projections.queries.outcomes import (
    cost_per_success,
    failed_spend,
    outcomes,
    retries_per_success,
    top_workflows,
)
from shoal.projections.report import report

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
    "intervention_rate",
    "run_named",
]

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

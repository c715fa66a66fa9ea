"""Charging a model call's server-side cost, and noticing the budget it crosses.

Session spend is on the Session; goal and fleet spend are running totals in the working set.
A crossing is recorded once per scope (on the Session, the Goal or the fleet's
:class:`~shoal.aggregates.budgets.FleetSpend`) and returned as a
:class:`~shoal.aggregates.budgets.BudgetCrossing` for the ingestion to act on (the
``budget.exceeded`` event and the scope's kill switch).
"""

from __future__ import annotations

from decimal import Decimal

from shoal.aggregates.budgets import BudgetCrossing, BudgetScope
from shoal.aggregates.session import Session
from shoal.aggregates.workingset import WorkingSet
from shoal.schemas import CloudEvent

__all__ = ["charge"]


def charge(
    ws: WorkingSet,
    s: Session,
    ev: CloudEvent,
    seq: int,
    cost: Decimal,
    fleet_budgets: dict[str, Decimal],
) -> list[BudgetCrossing]:
    """Add ``cost`` to the goal's and fleet's totals; return the budgets it crossed."""
    gid, fleet = s.gid or ev.gid, s.fleet or ev.fleet
    ws.totals.add(gid, fleet, cost)
    crossed: list[BudgetCrossing] = []

    def crossing(scope: BudgetScope, key: str, budget: Decimal, spent: Decimal) -> None:
        crossed.append(BudgetCrossing(scope, key, budget, spent, seq, s.iid, gid, fleet))

    if s.budget_usd is not None and not s.budget_exceeded and s.cost_usd > s.budget_usd:
        s.record_budget_exceeded(seq, "session", s.iid, s.budget_usd, s.cost_usd, timestamp=ev.time)
        crossing("session", s.iid, s.budget_usd, s.cost_usd)
    if gid:
        g = ws.goal(gid, seq, ev.time)
        spent = ws.totals.goals[gid]
        if g.budget_usd is not None and not g.budget_exceeded and spent > g.budget_usd:
            g.record_budget_exceeded(seq, g.budget_usd, spent, timestamp=ev.time)
            ws.collect(g)
            crossing("goal", gid, g.budget_usd, spent)
    cap = fleet_budgets.get(fleet) if fleet else None
    if fleet and cap is not None and ws.totals.fleets[fleet] > cap:
        spend = ws.spend_of(fleet, ev.time)
        if not spend.budget_exceeded:
            spent = ws.totals.fleets[fleet]
            spend.record_budget_exceeded(seq, cap, spent, timestamp=ev.time)
            ws.collect(spend)
            crossing("fleet", fleet, cap, spent)
    return crossed

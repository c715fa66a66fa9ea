"""Budgets per session, goal and fleet: running spend, and the moment a budget is crossed.

Session spend lives on the Session aggregate. Goal and fleet spend are sums over sessions,
kept here in memory (:class:`SpendTotals`) and rebuilt at start-up from the recorded
``Session.ModelCalled`` events, so a restarted core crosses a budget at exactly the same
event as one that never stopped. A crossing is recorded once per scope (on the Session, the
Goal, or the :class:`FleetSpend` aggregate) and turned into side effects by the ingestion:
a ``budget.exceeded`` event on the bus and the scope's kill switch.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Literal
from uuid import UUID

from eventsourcing.domain import Aggregate, event

from shoal.aggregates.session import stable_id

__all__ = ["BudgetCrossing", "FleetSpend", "SpendTotals", "fleet_spend_id"]

BudgetScope = Literal["session", "goal", "fleet"]


def fleet_spend_id(fleet: str) -> UUID:
    """The aggregate id of a fleet's spend record (deterministic)."""
    return stable_id("fleet-spend", fleet)


class FleetSpend(Aggregate):
    """A fleet's budget crossings (the fleet's lifecycle is the Fleet aggregate's business)."""

    @staticmethod
    def create_id(fleet: str) -> UUID:
        return fleet_spend_id(fleet)

    class Opened(Aggregate.Created):
        """The fleet's spend first needed recording."""

        fleet: str

    @event(Opened)
    def __init__(self, fleet: str, timestamp: datetime) -> None:
        self.fleet = fleet
        self.budget_exceeded = False
        self.crossings: list[dict[str, str]] = []

    class BudgetExceeded(Aggregate.Event):
        """The fleet's sessions together spent more than the fleet's cap."""

        seq: int
        budget_usd: Decimal
        spent_usd: Decimal

    @event(BudgetExceeded)
    def record_budget_exceeded(
        self, seq: int, budget_usd: Decimal, spent_usd: Decimal, timestamp: datetime
    ) -> None:
        self.budget_exceeded = True
        self.crossings.append({"budget_usd": str(budget_usd), "spent_usd": str(spent_usd)})


@dataclass(frozen=True)
class BudgetCrossing:
    """A budget crossed by the event at ``seq``: what to publish and which switch to set."""

    scope: BudgetScope
    key: str
    budget_usd: Decimal
    spent_usd: Decimal
    seq: int
    iid: str
    gid: str | None
    fleet: str | None

    @property
    def event_id(self) -> str:
        """Deterministic: a redelivered batch republishes the same id, which JetStream drops."""
        return f"core-budget-{self.scope}-{self.key}"


@dataclass
class SpendTotals:
    """Running spend per goal and per fleet (in memory; rebuilt from the log at start)."""

    goals: defaultdict[str, Decimal] = field(default_factory=lambda: defaultdict(Decimal))
    fleets: defaultdict[str, Decimal] = field(default_factory=lambda: defaultdict(Decimal))

    def add(self, gid: str | None, fleet: str | None, cost: Decimal) -> None:
        if gid:
            self.goals[gid] += cost
        if fleet:
            self.fleets[fleet] += cost

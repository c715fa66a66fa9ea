"""The Goal aggregate: one goal (GID), the sessions serving it, its plan, status and outcome.

A goal's total cost is not kept here as a running sum (that would add one goal event per
model call): it is the sum of its sessions' costs, which :func:`goal_cost` computes and the
ingestion keeps in memory for budget checks.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any
from uuid import UUID

from eventsourcing.domain import Aggregate, event

from shoal.aggregates.session import stable_id

__all__ = ["Goal", "goal_id"]


def goal_id(gid: str) -> UUID:
    """The aggregate id of the goal with this GID (deterministic)."""
    return stable_id("goal", gid)


class Goal(Aggregate):
    """One goal: what was asked, of which fleet, by whom, and every IID serving it."""

    @staticmethod
    def create_id(gid: str) -> UUID:
        return goal_id(gid)

    class Opened(Aggregate.Created):
        """The first event of this GID reached the core."""

        gid: str
        seq: int

    @event(Opened)
    def __init__(self, gid: str, seq: int, timestamp: datetime) -> None:
        self.gid = gid
        self.first_seq = seq
        self.fleet: str | None = None
        self.principal: str | None = None
        self.text = ""
        self.root_iid: str | None = None
        self.budget_usd: Decimal | None = None
        self.budget_exceeded = False
        self.status = "open"
        self.iids: list[str] = []
        self.plan: list[dict[str, Any]] = []
        self.summary = ""
        self.failure_reason = ""
        self.ended_at: datetime | None = None
        self.outcome: str | None = None
        self.outcome_signal: str | None = None
        self.outcomes: dict[str, str] = {}

    class Submitted(Aggregate.Event):
        """Someone asked a fleet to achieve this goal."""

        seq: int
        fleet: str
        text: str
        principal: str | None
        root_iid: str
        budget_usd: Decimal | None
        source: str
        labels: dict[str, str] | None  # attribution (absent from events recorded before it)

    @event(Submitted)
    def submitted(
        self,
        seq: int,
        fleet: str,
        text: str,
        principal: str | None,
        root_iid: str,
        budget_usd: Decimal | None,
        source: str,
        timestamp: datetime,
        labels: dict[str, str] | None = None,
    ) -> None:
        self.fleet, self.text, self.principal = fleet, text, principal
        self.root_iid, self.budget_usd = root_iid, budget_usd
        if self.status == "open":
            self.status = "running"

    class SessionAdded(Aggregate.Event):
        """A session (IID) serving this goal appeared."""

        seq: int
        iid: str
        parentiid: str | None

    @event(SessionAdded)
    def session_added(self, seq: int, iid: str, parentiid: str | None, timestamp: datetime) -> None:
        self.iids.append(iid)

    class Planned(Aggregate.Event):
        """The orchestrator split the goal into tasks (IID and capability of each)."""

        seq: int
        tasks: list[dict[str, Any]]

    @event(Planned)
    def planned(self, seq: int, tasks: list[dict[str, Any]], timestamp: datetime) -> None:
        self.plan = tasks
        if self.status == "open":
            self.status = "running"

    class Completed(Aggregate.Event):
        """The orchestrator consolidated every task's result."""

        seq: int
        summary: str

    @event(Completed)
    def completed(self, seq: int, summary: str, timestamp: datetime) -> None:
        self.status, self.summary, self.ended_at = "completed", summary, timestamp

    class Failed(Aggregate.Event):
        """The goal cannot be achieved."""

        seq: int
        reason: str
        failed_iids: list[str]

    @event(Failed)
    def failed(self, seq: int, reason: str, failed_iids: list[str], timestamp: datetime) -> None:
        self.status, self.failure_reason, self.ended_at = "failed", reason, timestamp

    class BudgetExceeded(Aggregate.Event):
        """The goal's sessions together spent more than the goal's budget."""

        seq: int
        budget_usd: Decimal
        spent_usd: Decimal

    @event(BudgetExceeded)
    def record_budget_exceeded(
        self, seq: int, budget_usd: Decimal, spent_usd: Decimal, timestamp: datetime
    ) -> None:
        self.budget_exceeded = True

    class OutcomeReported(Aggregate.Event):
        """Outcome feedback on one of the goal's sessions (the root's stands for the goal)."""

        seq: int
        iid: str
        outcome: str
        signal: str | None

    @event(OutcomeReported)
    def outcome_reported(
        self, seq: int, iid: str, outcome: str, signal: str | None, timestamp: datetime
    ) -> None:
        self.outcomes[iid] = outcome
        if iid == self.root_iid or self.outcome is None or self.root_iid not in self.outcomes:
            self.outcome, self.outcome_signal = outcome, signal

    def summary_dict(self) -> dict[str, Any]:
        """A JSON-friendly view of the state."""
        return {
            "gid": self.gid,
            "fleet": self.fleet,
            "principal": self.principal,
            "text": self.text,
            "root_iid": self.root_iid,
            "status": self.status,
            "budget_usd": str(self.budget_usd) if self.budget_usd is not None else None,
            "budget_exceeded": self.budget_exceeded,
            "iids": list(self.iids),
            "plan": list(self.plan),
            "summary": self.summary,
            "failure_reason": self.failure_reason,
            "submitted_at": self.created_on.isoformat(),
            "ended_at": self.ended_at.isoformat() if self.ended_at else None,
            "outcome": self.outcome,
            "outcome_signal": self.outcome_signal,
        }

"""Folding events into Goals: which sessions serve a goal, and the goal's own lifecycle.

Every event with a GID lists its IID on the goal the first time it is seen; goal-level
types (submitted, planned, completed, failed, outcomes, goal budget crossings) change the
goal itself.
"""

from __future__ import annotations

from shoal.aggregates.workingset import WorkingSet
from shoal.schemas import (
    BudgetExceeded,
    CloudEvent,
    GoalCompleted,
    GoalFailed,
    GoalPlanned,
    GoalSubmitted,
    OutcomeReported,
)

__all__ = ["GOAL_TYPES", "apply_goal_event", "touches_goal"]

GOAL_TYPES = frozenset(
    {
        GoalSubmitted.type,
        GoalPlanned.type,
        GoalCompleted.type,
        GoalFailed.type,
        OutcomeReported.type,
        BudgetExceeded.type,
    }
)


def touches_goal(ws: WorkingSet, ev: CloudEvent, seq: int) -> bool:
    """True when ``ev`` changes its goal: a goal-level type, or a session new to the goal."""
    if not ev.gid:
        return False
    return ev.type in GOAL_TYPES or ev.iid not in ws.iids_of_goal(ev.gid, seq, ev.time)


def apply_goal_event(ws: WorkingSet, ev: CloudEvent, seq: int) -> None:
    """Record ``ev`` on its goal (``ev.gid`` is set)."""
    assert ev.gid is not None
    g = ws.goal(ev.gid, seq, ev.time)
    d = ev.data
    iids = ws.iids_of_goal(ev.gid, seq, ev.time)
    if ev.iid not in iids:
        g.session_added(seq, ev.iid, ev.parentiid, timestamp=ev.time)
        iids.add(ev.iid)
    if isinstance(d, GoalSubmitted):
        g.submitted(
            seq,
            d.fleet,
            d.text,
            ev.principal,
            ev.iid,
            d.budget_usd,
            ev.source,
            timestamp=ev.time,
            labels=d.labels.values() if d.labels is not None else None,
        )
    elif isinstance(d, GoalPlanned):
        tasks = [{"iid": t.iid, "capability": t.capability} for t in d.tasks]
        g.planned(seq, tasks, timestamp=ev.time)
    elif isinstance(d, GoalCompleted):
        g.completed(seq, d.summary[:500], timestamp=ev.time)
    elif isinstance(d, GoalFailed):
        g.failed(seq, d.reason[:500], list(d.failed_iids), timestamp=ev.time)
    elif isinstance(d, OutcomeReported):
        g.outcome_reported(seq, ev.iid, d.outcome, d.signal, timestamp=ev.time)
    elif isinstance(d, BudgetExceeded) and d.scope == "goal" and not g.budget_exceeded:
        g.record_budget_exceeded(seq, d.budget_usd, d.spent_usd, timestamp=ev.time)
    ws.collect(g)

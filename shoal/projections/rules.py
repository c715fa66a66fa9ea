"""How the projection's state tables merge changes: one rule per column of ``sessions`` and
``goals`` (see :class:`~shoal.projections.batch.Rule`), and the batch that applies them."""

from __future__ import annotations

from typing import Any

from shoal.projections.batch import Batch, Rule
from shoal.projections.schema import FACT_TABLES, GOALS, SESSIONS
from shoal.schemas.labels import LABEL_NAMES

__all__ = ["GOAL_RULES", "SESSION_RULES", "labels_of", "new_batch"]

SESSION_RULES = {
    "session_id": Rule.FIRST,
    "gid": Rule.FIRST,
    "parentiid": Rule.FIRST,
    "source": Rule.FIRST,
    "capability": Rule.FIRST,
    "status": Rule.SESSION_STATUS,
    "attempts": Rule.MAX,
    "opened_at": Rule.FIRST,
    "started_at": Rule.FIRST,
    "last_event_at": Rule.MAX,
    "first_seq": Rule.FIRST,
    "last_seq": Rule.MAX,
    **{
        c: Rule.SUM
        for c in (
            "model_calls",
            "tool_calls",
            "input_tokens",
            "output_tokens",
            "cached_tokens",
            "cost_usd",
            "reported_cost_usd",
            "errors",
            "denials",
            "approvals_requested",
            "rejected",
            "asks",
        )
    },
    "budget_exceeded": Rule.OR,
    "stuck": Rule.OR,
    "looping": Rule.OR,
    **dict.fromkeys(LABEL_NAMES, Rule.LAST),
    "agent_version": Rule.LAST,  # the latest attempt's instance
    "model": Rule.FIRST,
    "tools": Rule.UNION,
}

GOAL_RULES = {
    "goal_id": Rule.FIRST,
    "model_calls": Rule.SUM,
    "cost_usd": Rule.SUM,
    "status": Rule.GOAL_STATUS,
    "sessions": Rule.SUM,
    "opened_at": Rule.FIRST,
    "submitted_at": Rule.FIRST,
    "last_event_at": Rule.MAX,
    "first_seq": Rule.FIRST,
    "last_seq": Rule.MAX,
    "budget_exceeded": Rule.OR,
    **dict.fromkeys(LABEL_NAMES, Rule.LAST),
}


def labels_of(e: Any) -> dict[str, str]:
    """An event's attribution labels (none on events recorded before labels existed)."""
    labels = getattr(e, "labels", None) or {}
    return {k: v for k, v in labels.items() if k in LABEL_NAMES}


def new_batch() -> Batch:
    """An empty batch for the projection's tables."""
    return Batch(FACT_TABLES, {SESSIONS: SESSION_RULES, GOALS: GOAL_RULES})

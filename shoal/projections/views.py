"""The projection's views and the SQL shared by views and queries (no pyarrow here: the
CLI imports the queries without loading the storage side)."""

from __future__ import annotations

from shoal.projections.money import MONEY_SCALE
from shoal.schemas.labels import LABEL_NAMES

__all__ = ["LEDGER_CALLS", "LEDGER_REFUSALS", "VIEWS"]

_UNIT_LABELS = ", ".join(LABEL_NAMES)

# An outcome for every session and goal: the reported one if feedback arrived, else the one
# its status implies (completed → success, failed or killed → failure, else pending).
_EFFECTIVE = """
    COALESCE(outcome, CASE status
        WHEN 'completed' THEN 'success'
        WHEN 'failed' THEN 'failure'
        WHEN 'killed' THEN 'failure'
        ELSE 'pending' END)
"""

# The tool-call ledger: every call that ran (the gateway allowed it) and every call a policy
# refused before it ran (no tool.called exists for those). Kept apart so that a query can
# push its filter and top-N into each half (``queries.tool_ledger``).
LEDGER_CALLS = """
    SELECT seq, ts, iid, gid, fleet, agent, instance, principal, tool, version,
           arguments, sensitivity, result_class, latency_ms, 'allow' AS decision,
           NULL AS rule, error
    FROM tool_calls
"""
LEDGER_REFUSALS = """
    SELECT seq, ts, iid, gid, fleet, agent, instance, principal, target AS tool, NULL AS version,
           NULL AS arguments, NULL AS sensitivity,
           CASE decision WHEN 'deny' THEN 'denied' ELSE 'pending' END AS result_class,
           NULL AS latency_ms, decision, rule, reason AS error
    FROM policy_decisions WHERE action = 'tool.call'
"""

VIEWS: dict[str, str] = {
    # One row per session with its effective outcome.
    "session_outcomes": f"SELECT *, {_EFFECTIVE} AS effective_outcome FROM sessions",
    # A goal's effective outcome: its root session's reported one, else the last reported for
    # the goal, else what its status implies; and its spend (kept on its row).
    "goal_outcomes": """
        SELECT *, COALESCE(root_outcome, outcome, CASE status
                   WHEN 'completed' THEN 'success' WHEN 'failed' THEN 'failure'
                   ELSE 'pending' END) AS effective_outcome
        FROM goals
    """,
    # The unit an outcome is judged on: a goal (with all its sessions' spend), or a bare
    # session (no goal, no parent).
    "outcome_units": f"""
        SELECT 'g:' || gid AS key, 'goal' AS kind, gid AS unit, fleet, principal, opened_at,
               effective_outcome, cost_usd::DECIMAL(38,{MONEY_SCALE}) AS spend, {_UNIT_LABELS}
        FROM goal_outcomes
        UNION ALL
        SELECT 's:' || iid, 'session', iid, fleet, principal, opened_at, effective_outcome,
               cost_usd::DECIMAL(38,{MONEY_SCALE}), {_UNIT_LABELS}
        FROM session_outcomes WHERE gid IS NULL AND parentiid IS NULL
    """,
    # Every session with what it is attributed to: its labels (its own task's, else its
    # goal's: the projection copies a goal's labels onto its sessions), its agent's release,
    # its first model, and its tool set (the distinct tools it called, joined by +).
    "attributed_sessions": f"""
        SELECT s.iid, s.gid, s.parentiid, s.fleet, s.principal, s.agent, s.instance,
               s.capability, s.status, s.attempts, s.opened_at, s.started_at, s.ended_at,
               s.model_calls, s.tool_calls, s.input_tokens, s.output_tokens, s.cached_tokens,
               s.cost_usd, s.reported_cost_usd, s.errors, s.denials,
               s.approvals_requested, s.asks, s.rejected, s.budget_exceeded, s.stuck,
               s.looping, s.killed_by, s.effective_outcome, s.agent_version, s.model,
               COALESCE(array_to_string(s.tools, '+'), '(none)') AS tool_set, {_UNIT_LABELS}
        FROM session_outcomes s
    """,
    "tool_ledger": f"{LEDGER_CALLS} UNION ALL {LEDGER_REFUSALS}",
}

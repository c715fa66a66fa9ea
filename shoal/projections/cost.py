"""``cost``: server-side spend of model calls, grouped by call, session and label dimensions.

Call dimensions (fleet, agent, model, principal, goal, provider) are on each call's row.
Attribution dimensions (team, repo, workflow, task class, prompt template and version,
capability, agent version) belong to the call's session (``attributed_sessions``: its own
labels, else its goal's), joined on the IID only when asked for. ``outcome`` is the
effective outcome of the call's goal (or bare session), which changes after the call.
"""

from __future__ import annotations

from decimal import Decimal
from typing import TYPE_CHECKING, Any

from shoal.projections.answers import SESSION_DIMENSIONS, CostAnswer, CostParams, CostRow

if TYPE_CHECKING:
    from shoal.projections.recorder import DuckDBDatastore

__all__ = ["cost"]

_ZERO = Decimal(0)

_COST_COLUMN = {
    "fleet": "m.fleet",
    "agent": "m.agent",
    "model": "m.model",
    "principal": "m.principal",
    "goal": "m.gid",
    "provider": "m.provider",
    **{d: f"m.{d}" for d in SESSION_DIMENSIONS},
    "outcome": (
        "COALESCE(CASE WHEN m.gid IS NOT NULL THEN g.effective_outcome "
        "WHEN {bare}.parentiid IS NULL THEN {bare}.effective_outcome END, 'pending')"
    ),
}


def cost(ds: DuckDBDatastore, p: CostParams) -> CostAnswer:
    """Server-side cost of model calls in the range, grouped by ``p.by``."""
    attributed = [d for d in p.by if d in SESSION_DIMENSIONS]
    ranged = p.since is not None or p.until is not None
    per_session = not ranged and set(p.by) <= {"goal", "outcome", *SESSION_DIMENSIONS}
    bare = "m" if per_session else "s"  # where a bare session's own outcome is found
    columns = [_COST_COLUMN[d].format(bare=bare) for d in p.by]
    where, params = p.where("m.ts")
    keys = ", ".join(f"{c} AS k{i}" for i, c in enumerate(columns))
    group = ", ".join(f"k{i}" for i in range(len(columns)))
    # Per call by default; but goal, outcome and the attribution are the session's, whose
    # row already sums its calls: without a time range, a tenth of the rows give the sums.
    calls, source, join = "count(*)", "model_calls m", ""
    if per_session:
        table = "attributed_sessions" if attributed else "session_outcomes"
        calls, source, where = "sum(m.model_calls)", f"{table} m", "m.model_calls > 0"
    elif attributed:
        # Sum the calls in the range per session first, then join the sessions' attribution.
        on_call = {_COST_COLUMN[d] for d in p.by if d not in attributed and d != "outcome"}
        source = f"""(
            SELECT c.*, {", ".join(f"a.{d}" for d in attributed)} FROM (
                SELECT {_sums(sorted(on_call | {"m.gid", "m.iid"}), "count(*)")}
                FROM model_calls m WHERE {where} GROUP BY ALL
            ) c LEFT JOIN attributed_sessions a ON a.iid = c.iid
        ) m"""
        calls, where = "sum(m.model_calls)", "TRUE"
    if "outcome" in p.by:
        # A goal's sessions take the goal's outcome; a bare session (no goal) its own.
        join = "LEFT JOIN goal_outcomes g ON g.gid = m.gid"
        if not per_session:
            # Sum the calls per goal (or bare session) first, then join the few sums.
            inner = sorted({_COST_COLUMN[d] for d in p.by if d != "outcome"} | {"m.gid"})
            source = f"""(
                SELECT {_sums(inner, calls)}, CASE WHEN m.gid IS NULL THEN m.iid END AS iid
                FROM {source} WHERE {where} GROUP BY ALL
            ) m"""
            calls, where = "sum(m.model_calls)", "TRUE"
            join += " LEFT JOIN session_outcomes s ON s.iid = m.iid"
    rows = ds.rows(
        f"""
        SELECT {keys}, {calls} AS calls, sum(m.input_tokens) AS input_tokens,
               sum(m.output_tokens) AS output_tokens, sum(m.cached_tokens) AS cached_tokens,
               sum(m.cost_usd) AS cost_usd, COALESCE(sum(m.reported_cost_usd), 0) AS reported,
               count(*) OVER () AS all_groups, sum({calls}) OVER () AS all_calls,
               sum(sum(m.cost_usd)) OVER () AS all_cost
        FROM {source} {join}
        WHERE {where}
        GROUP BY {group}
        ORDER BY cost_usd DESC, {group}
        LIMIT {p.limit}
        """,
        params,
    )
    out = [
        CostRow(
            key=[r[f"k{i}"] for i in range(len(columns))],
            calls=r["calls"],
            input_tokens=r["input_tokens"],
            output_tokens=r["output_tokens"],
            cached_tokens=r["cached_tokens"],
            cost_usd=r["cost_usd"],
            reported_cost_usd=r["reported"],
        )
        for r in rows
    ]
    first: dict[str, Any] = (
        rows[0] if rows else {"all_groups": 0, "all_calls": 0, "all_cost": _ZERO}
    )
    return CostAnswer(
        by=list(p.by),
        rows=out,
        groups=first["all_groups"],
        calls=int(first["all_calls"]),
        total_usd=first["all_cost"],
    )


def _sums(keys: list[str], calls: str) -> str:
    """Grouping columns (``m.x AS x``) and the sums of the calls under them."""
    named = ", ".join(f"{c} AS {c[2:]}" for c in keys)
    return f"""{named}, {calls} AS model_calls, sum(m.input_tokens) AS input_tokens,
        sum(m.output_tokens) AS output_tokens, sum(m.cached_tokens) AS cached_tokens,
        sum(m.cost_usd) AS cost_usd, sum(m.reported_cost_usd) AS reported_cost_usd"""

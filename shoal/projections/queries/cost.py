"""Cost by dimension: model calls summed per fleet, agent, model, principal, goal, outcome…"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from shoal.projections.answers import SESSION_DIMENSIONS, CostAnswer, CostParams, CostRow
from shoal.projections.ratio import ZERO
from shoal.projections.rollups import CALL_DIMENSIONS, hourly_source

if TYPE_CHECKING:  # duckdb loads where queries run, not in every CLI process
    from shoal.projections.recorder import DuckDBDatastore

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


def cost(ds: DuckDBDatastore, p: CostParams, *, rollups: bool = True) -> CostAnswer:
    """Server-side cost of model calls in the range, grouped by ``p.by``.

    Read from the hourly rollups (:mod:`shoal.projections.rollups`) where they carry the
    dimensions asked for; ``rollups=False`` reads the raw rows only (the same answer).
    Attribution dimensions (team, workflow, capability, …: the session's labels, else its
    goal's) are not in the rollups: those questions read the rows (:func:`_attributed`).
    """
    if any(d in SESSION_DIMENSIONS for d in p.by):
        return _attributed(ds, p)
    dims = set(p.by)
    by_unit = rollups and dims <= {"goal", "outcome"}  # the per-unit rollup, any range
    per_session = (
        not by_unit and p.since is None and p.until is None and dims <= {"goal", "outcome"}
    )
    bare = "m" if per_session else "s"  # where a bare session's own outcome is found
    columns = [_COST_COLUMN[d].format(bare=bare) for d in p.by]
    where, params = p.where("m.ts")
    # Per call by default; but goal and outcome are attributes of the session, whose row
    # already sums its calls: without a time range, a tenth of the rows give the same sums.
    calls, source, join = "count(*)", "model_calls m", ""
    if per_session:
        calls, source, where = "sum(m.model_calls)", "session_outcomes m", "m.model_calls > 0"
    elif rollups and (dims <= set(CALL_DIMENSIONS) or dims == {"goal"}):
        # The hourly sums (and raw rows for a range's partial hours): a few rows per hour.
        table = "unit_cost_hourly" if dims == {"goal"} else "cost_hourly"
        sql, params = hourly_source(table, p.since, p.until)
        calls, source, where = "sum(m.calls)", f"({sql}) m", "TRUE"
    if "outcome" in dims:
        # A goal's sessions take the goal's outcome; a bare session (no goal) its own.
        join = "LEFT JOIN goal_outcomes g ON g.gid = m.gid"
        if not per_session:
            # Sum the calls per goal (or bare session) first, then join the few sums.
            sessions = "session_outcomes"
            if by_unit:
                sql, params = hourly_source("unit_cost_hourly", p.since, p.until)
                inner, counted = "gid, iid", "sum(m.calls)"
                # Only bare sessions are joined (``m.iid`` is NULL for a goal's calls): a
                # small build side instead of every session.
                sessions = "(SELECT * FROM session_outcomes WHERE gid IS NULL)"
            else:
                sql = f"SELECT * FROM model_calls m WHERE {where}"
                names = sorted({_COST_COLUMN[d] for d in p.by if d != "outcome"} | {"m.gid"})
                inner = ", ".join(f"{c} AS {c[2:]}" for c in names)
                inner += ", CASE WHEN m.gid IS NULL THEN m.iid END AS iid"
                counted = "count(*)"
            source = f"""(
                SELECT {inner}, {counted} AS model_calls, sum(m.input_tokens) AS input_tokens,
                       sum(m.output_tokens) AS output_tokens,
                       sum(m.cached_tokens) AS cached_tokens, sum(m.cost_usd) AS cost_usd,
                       sum(m.reported_cost_usd) AS reported_cost_usd
                FROM ({sql}) m GROUP BY ALL
            ) m"""
            calls, where = "sum(m.model_calls)", "TRUE"
            join += f" LEFT JOIN {sessions} s ON s.iid = m.iid"
    return _answer(ds, p, columns, calls, f"{source} {join}", where, params)


def _answer(
    ds: DuckDBDatastore,
    p: CostParams,
    columns: list[str],
    calls: str,
    source: str,
    where: str,
    params: list[Any],
) -> CostAnswer:
    """Run the grouped sum over ``source`` and shape it as the answer."""
    keys = ", ".join(f"{c} AS k{i}" for i, c in enumerate(columns))
    group = ", ".join(f"k{i}" for i in range(len(columns)))
    rows = ds.rows(
        f"""
        SELECT {keys}, {calls} AS calls, sum(m.input_tokens) AS input_tokens,
               sum(m.output_tokens) AS output_tokens, sum(m.cached_tokens) AS cached_tokens,
               sum(m.cost_usd) AS cost_usd, COALESCE(sum(m.reported_cost_usd), 0) AS reported,
               count(*) OVER () AS all_groups, sum({calls}) OVER () AS all_calls,
               sum(sum(m.cost_usd)) OVER () AS all_cost
        FROM {source}
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
    first: dict[str, Any] = rows[0] if rows else {"all_groups": 0, "all_calls": 0, "all_cost": ZERO}
    return CostAnswer(
        by=list(p.by),
        rows=out,
        groups=first["all_groups"],
        calls=int(first["all_calls"]),
        total_usd=first["all_cost"],
    )


def _attributed(ds: DuckDBDatastore, p: CostParams) -> CostAnswer:
    """Cost by attribution dimensions, from the rows: the calls summed per session, then
    joined to the session's attribution (``attributed_sessions``)."""
    attributed = [d for d in p.by if d in SESSION_DIMENSIONS]
    ranged = p.since is not None or p.until is not None
    per_session = not ranged and set(p.by) <= {"goal", "outcome", *SESSION_DIMENSIONS}
    bare = "m" if per_session else "s"  # where a bare session's own outcome is found
    columns = [_COST_COLUMN[d].format(bare=bare) for d in p.by]
    where, params = p.where("m.ts")
    # Without a time range a session's row already sums its calls: a tenth of the rows.
    calls, source, join = "count(*)", "model_calls m", ""
    if per_session:
        calls, source, where = "sum(m.model_calls)", "attributed_sessions m", "m.model_calls > 0"
    else:
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
            inner = sorted({_COST_COLUMN[d] for d in p.by if d != "outcome"} | {"m.gid"})
            source = f"""(
                SELECT {_sums(inner, calls)}, CASE WHEN m.gid IS NULL THEN m.iid END AS iid
                FROM {source} WHERE {where} GROUP BY ALL
            ) m"""
            calls, where = "sum(m.model_calls)", "TRUE"
            join += " LEFT JOIN session_outcomes s ON s.iid = m.iid"
    return _answer(ds, p, columns, calls, f"{source} {join}", where, params)


def _sums(keys: list[str], calls: str) -> str:
    """Grouping columns (``m.x AS x``) and the sums of the calls under them."""
    named = ", ".join(f"{c} AS {c[2:]}" for c in keys)
    return f"""{named}, {calls} AS model_calls, sum(m.input_tokens) AS input_tokens,
        sum(m.output_tokens) AS output_tokens, sum(m.cached_tokens) AS cached_tokens,
        sum(m.cost_usd) AS cost_usd, sum(m.reported_cost_usd) AS reported_cost_usd"""

"""Activity queries: the tool-call ledger, live sessions, human intervention, the gateway cache."""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING, Any

from shoal.projections.answers import (
    CacheAnswer,
    CacheRow,
    InterventionAnswer,
    InterventionRow,
    LedgerAnswer,
    LedgerParams,
    LedgerRow,
    SessionRow,
    SessionsAnswer,
    SessionsParams,
    TimeRange,
)
from shoal.projections.ratio import ZERO, ratio
from shoal.projections.views import LEDGER_CALLS, LEDGER_REFUSALS
from shoal.schemas import utcnow

if TYPE_CHECKING:  # duckdb loads where queries run, not in every CLI process
    from shoal.projections.recorder import DuckDBDatastore


def tool_ledger(ds: DuckDBDatastore, p: LedgerParams) -> LedgerAnswer:
    """Tool calls (run or refused), newest first, filtered."""
    where, params = p.where("ts")
    for column, value in (
        ("tool", p.tool),
        ("agent", p.agent),
        ("decision", p.decision),
        ("sensitivity", p.sensitivity),
        ("iid", p.iid),
    ):
        if value is not None:
            where += f" AND {column} = ?"
            params.append(value)
    # The newest rows of each half first, then of both: a top-N per table, not a sort of
    # every matching call.
    top = f"WHERE {where} ORDER BY seq DESC, tool LIMIT {p.limit}"
    rows = ds.rows(
        f"""
        SELECT * FROM (
            (SELECT * FROM ({LEDGER_CALLS}) {top})
            UNION ALL
            (SELECT * FROM ({LEDGER_REFUSALS}) {top})
        ) {top}
        """,
        [*params, *params, *params],
    )
    return LedgerAnswer(rows=[LedgerRow(**r) for r in rows])


def sessions(ds: DuckDBDatastore, p: SessionsParams) -> SessionsAnswer:
    """Active, stuck or looping sessions, most recently active first."""
    now = p.now or utcnow()
    active = "status IN ('open', 'running')"
    condition, params = {
        "active": (active, []),
        "stuck": (f"{active} AND (stuck OR last_event_at < ?)", [now - _seconds(p.stuck_after_s)]),
        "looping": ("looping", []),
    }[p.state]
    rows = ds.rows(
        f"""
        SELECT iid, gid, fleet, agent, capability, status, opened_at, last_event_at,
               model_calls, tool_calls, cost_usd, stuck OR last_event_at < ? AS stuck, looping
        FROM sessions WHERE {condition}
        ORDER BY last_event_at DESC, iid LIMIT {p.limit}
        """,
        [now - _seconds(p.stuck_after_s), *params],
    )
    return SessionsAnswer(state=p.state, rows=[SessionRow(**r) for r in rows])


def _seconds(s: float) -> timedelta:
    return timedelta(seconds=s)


def _intervention_row(fleet: str | None, r: dict[str, Any]) -> InterventionRow:
    rate = ratio(r["sessions_needing_approval"], r["sessions"]) or ZERO
    decided = r.get("granted", 0) + r.get("denied", 0) + r.get("expired", 0)
    wait = r.get("median_wait_s")
    return InterventionRow(
        **{**r, "fleet": fleet, "median_wait_s": None if wait is None else float(wait)},
        rate=rate,
        approval_rate=ratio(r.get("granted", 0), decided),
    )


def intervention_rate(ds: DuckDBDatastore, p: TimeRange) -> InterventionAnswer:
    """Human intervention per fleet: sessions that needed an approval / sessions, and how
    the approvals went (granted, denied, expired, approval rate, median wait)."""
    where, params = p.where("opened_at")
    rows = ds.rows(
        f"""
        SELECT fleet, count(*) AS sessions,
               count(*) FILTER (approvals_requested > 0) AS sessions_needing_approval,
               COALESCE(sum(approvals_requested), 0) AS approvals_requested
        FROM sessions WHERE {where}
        GROUP BY GROUPING SETS ((fleet), ())
        ORDER BY GROUPING(fleet), sessions DESC, fleet
        """,
        params,
    )
    # One row per decided approval (its first decision), with the wait since its request.
    decided = ds.rows(
        f"""
        WITH asked AS (
            SELECT request_id, min(ts) AS at FROM approvals WHERE state = 'requested'
            GROUP BY request_id
        ), decided AS (
            SELECT request_id, any_value(iid) AS iid, min(ts) AS at,
                   arg_min(state, ts) AS state
            FROM approvals WHERE state IN ('granted', 'denied', 'expired')
            GROUP BY request_id
        )
        SELECT s.fleet,
               count(*) FILTER (d.state = 'granted') AS granted,
               count(*) FILTER (d.state = 'denied') AS denied,
               count(*) FILTER (d.state = 'expired') AS expired,
               median(epoch(d.at) - epoch(q.at)) AS median_wait_s
        FROM decided d JOIN asked q USING (request_id) JOIN sessions s ON s.iid = d.iid
        WHERE {where.replace("opened_at", "s.opened_at")}
        GROUP BY GROUPING SETS ((s.fleet), ())
        ORDER BY GROUPING(s.fleet), s.fleet
        """,
        params,
    )
    by_fleet = {r["fleet"]: r for r in decided[:-1]}
    empty = {"sessions": 0, "sessions_needing_approval": 0, "approvals_requested": 0}
    total = {**(rows[-1] if rows else empty), **_decisions(decided[-1] if decided else None)}
    return InterventionAnswer(
        rows=[
            _intervention_row(r["fleet"], {**r, **_decisions(by_fleet.get(r["fleet"]))})
            for r in rows[:-1]
        ],
        total=_intervention_row(None, total),
    )


def _decisions(r: dict[str, Any] | None) -> dict[str, Any]:
    if r is None:
        return {"granted": 0, "denied": 0, "expired": 0, "median_wait_s": None}
    return {k: r[k] for k in ("granted", "denied", "expired", "median_wait_s")}


def _cache_row(fleet: str | None, r: dict[str, Any]) -> CacheRow:
    return CacheRow(
        fleet=fleet,
        calls=r["calls"],
        hits=r["hits"],
        hit_rate=ratio(r["hits"], r["calls"]),
        saved_usd=r["saved_usd"],
    )


def cache_savings(ds: DuckDBDatastore, p: TimeRange) -> CacheAnswer:
    """The gateway's response cache: share of its calls answered from the cache, money saved.

    Gateway records have call ids ``gw-…``; a hit is recorded with provider ``cache``, no
    tokens (the core charges nothing) and the price of the reused answer as its reported cost.
    """
    where, params = p.where("ts")
    rows = ds.rows(
        f"""
        SELECT fleet, count(*) AS calls, count(*) FILTER (provider = 'cache') AS hits,
               COALESCE(sum(reported_cost_usd) FILTER (provider = 'cache'), 0) AS saved_usd
        FROM model_calls WHERE call_id LIKE 'gw-%' AND {where}
        GROUP BY GROUPING SETS ((fleet), ())
        ORDER BY GROUPING(fleet), fleet
        """,
        params,
    )
    total = rows[-1] if rows else {"calls": 0, "hits": 0, "saved_usd": ZERO}
    return CacheAnswer(
        rows=[_cache_row(r["fleet"], r) for r in rows[:-1]], total=_cache_row(None, total)
    )

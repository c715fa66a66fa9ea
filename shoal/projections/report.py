"""``report``: how much useful autonomous work agents completed, at what cost, with what
risk, under what controls — per fleet and team over a period.

Work and cost come from outcome units (goals and bare sessions, ``outcome_units``) opened in
the period; risk and controls from the sessions opened in it (``attributed_sessions``):
policy denials, approvals requested and granted, kills, and incidents (a session flagged
stuck or looping, over its budget, or sending events the core refused).
"""

from __future__ import annotations

from decimal import Decimal
from typing import TYPE_CHECKING, Any

from shoal.projections.answers import TimeRange
from shoal.projections.eval_answers import ReportAnswer, ReportRow
from shoal.projections.money import MONEY_QUANTUM

if TYPE_CHECKING:
    from shoal.projections.recorder import DuckDBDatastore

__all__ = ["report"]

_ZERO = Decimal(0)
_Key = tuple[str | None, str | None]


def report(ds: DuckDBDatastore, p: TimeRange) -> ReportAnswer:
    """Successes, cost per success, denials, approvals, kills and incidents per fleet, team."""
    where, params = p.where("opened_at")
    units = ds.rows(
        f"""
        SELECT fleet, team, count(*) AS units,
               count(*) FILTER (effective_outcome = 'success') AS successes,
               count(*) FILTER (effective_outcome IN ('failure', 'abandoned')) AS failures,
               COALESCE(sum(spend), 0) AS spend_usd
        FROM outcome_units WHERE {where} GROUP BY fleet, team
        """,
        params,
    )
    controls = ds.rows(
        f"""
        WITH granted AS (
            SELECT iid, count(DISTINCT request_id) AS n FROM approvals
            WHERE state = 'granted' GROUP BY iid
        )
        SELECT fleet, team, count(*) AS sessions,
               COALESCE(sum(denials), 0) AS denials,
               COALESCE(sum(approvals_requested), 0) AS approvals_requested,
               COALESCE(sum(granted.n), 0) AS approvals_granted,
               count(*) FILTER (status = 'killed') AS kills,
               count(*) FILTER (stuck OR looping OR budget_exceeded OR rejected > 0)
                   AS incidents
        FROM attributed_sessions LEFT JOIN granted USING (iid)
        WHERE {where} GROUP BY fleet, team
        """,
        params,
    )
    merged: dict[_Key, dict[str, Any]] = {}
    for r in (*units, *controls):
        merged.setdefault((r["fleet"], r["team"]), {}).update(r)
    rows = [_row(k, v) for k, v in merged.items()]
    rows.sort(key=lambda r: (-r.spend_usd, r.fleet or "", r.team or ""))
    total: dict[str, Any] = {}
    for v in merged.values():  # every figure is a count or a sum
        for name, value in v.items():
            if name not in ("fleet", "team"):
                total[name] = total.get(name, 0) + value
    return ReportAnswer(
        since=None if p.since is None else p.since.isoformat(),
        until=None if p.until is None else p.until.isoformat(),
        rows=rows,
        total=_row((None, None), total),
    )


def _row(key: _Key, r: dict[str, Any]) -> ReportRow:
    spend = r.get("spend_usd", _ZERO)
    successes = r.get("successes", 0)
    per_success = (spend / successes).quantize(MONEY_QUANTUM) if successes else None
    return ReportRow(
        fleet=key[0],
        team=key[1],
        units=r.get("units", 0),
        successes=successes,
        failures=r.get("failures", 0),
        spend_usd=spend,
        cost_per_success_usd=per_success,
        sessions=r.get("sessions", 0),
        denials=int(r.get("denials", 0)),
        approvals_requested=int(r.get("approvals_requested", 0)),
        approvals_granted=int(r.get("approvals_granted", 0)),
        kills=r.get("kills", 0),
        incidents=r.get("incidents", 0),
    )

"""Hourly rollups of model calls, kept by the projection in the same transaction as its rows.

At 10M events a cost query over a time range scanned and grouped ~6M ``model_calls`` rows;
the rollups hold the same sums per hour:

* ``cost_hourly`` — per hour x fleet x agent x model x provider x principal: what
  ``cost --by`` any of those dimensions reads;
* ``unit_cost_hourly`` — per hour x outcome unit (the goal, or a bare session's IID): what
  ``cost --by outcome`` / ``--by goal`` over a time range reads, joined to the unit's
  *current* effective outcome at query time (an outcome changes after its calls were made,
  so it is not a key of the rollup).

Each batch's ``model_calls`` Arrow rows are grouped and upserted (``ON CONFLICT … DO
UPDATE``, adding) by the statements of :func:`upserts`, inside the projection's one
transaction with the rows and the tracking record: a crash leaves both or neither, and a
rebuild by replay rebuilds the rollups with the rows. The raw rows stay for drill-down and
for the edges of a range that does not start or end on the hour (:func:`hourly_source`).

Key columns cannot be NULL in a DuckDB primary key: an absent value is stored as ``''`` and
read back as NULL (``NULLIF``); none of these names can be empty on the wire.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from shoal.projections.money import MONEY_SCALE

__all__ = [
    "CALL_DIMENSIONS",
    "ROLLUP_TABLES",
    "backfill_statements",
    "create_statements",
    "hour_bounds",
    "hourly_source",
    "upserts",
]

CALL_DIMENSIONS = ("fleet", "agent", "model", "provider", "principal")
"""Dimensions ``cost_hourly`` is keyed by (besides the hour)."""

_SUM = f"DECIMAL(38,{MONEY_SCALE})"
_MEASURES = (
    ("calls", "BIGINT", "count(*)"),
    ("input_tokens", "BIGINT", "sum(input_tokens)"),
    ("output_tokens", "BIGINT", "sum(output_tokens)"),
    ("cached_tokens", "BIGINT", "sum(cached_tokens)"),
    ("cost_usd", _SUM, "sum(cost_usd)"),
    ("reported_cost_usd", _SUM, "COALESCE(sum(reported_cost_usd), 0)"),
)
# The UTC hour a call falls in, whatever the connection's TimeZone setting.
_HOUR = "to_timestamp(floor(epoch(ts) / 3600) * 3600)"

_KEYS: dict[str, tuple[tuple[str, str], ...]] = {
    "cost_hourly": tuple((d, f"COALESCE({d}, '')") for d in CALL_DIMENSIONS),
    # A goal's calls roll up under its GID; a bare session's (no goal) under its IID.
    "unit_cost_hourly": (
        ("gid", "COALESCE(gid, '')"),
        ("iid", "CASE WHEN gid IS NULL THEN iid ELSE '' END"),
    ),
}
ROLLUP_TABLES = tuple(_KEYS)


def create_statements() -> list[str]:
    """DDL of the rollup tables (idempotent)."""
    out = []
    for table, keys in _KEYS.items():
        cols = ", ".join(
            ["hour TIMESTAMPTZ NOT NULL"]
            + [f"{k} VARCHAR NOT NULL" for k, _ in keys]
            + [f"{m} {t} NOT NULL" for m, t, _ in _MEASURES]
        )
        key = ", ".join(["hour", *(k for k, _ in keys)])
        out.append(f"CREATE TABLE IF NOT EXISTS {table} ({cols}, PRIMARY KEY ({key}))")
    return out


def _upsert(table: str, source: str, *, conflicts: bool = True) -> str:
    keys = _KEYS[table]
    select = ", ".join(
        [f"{_HOUR} AS hour"]
        + [f"{expr} AS {k}" for k, expr in keys]
        + [f"{agg} AS {m}" for m, _, agg in _MEASURES]
    )
    adds = ", ".join(f"{m} = {table}.{m} + excluded.{m}" for m, _, _ in _MEASURES)
    conflict = ", ".join(["hour", *(k for k, _ in keys)])
    insert = f"INSERT INTO {table} SELECT {select} FROM {source} GROUP BY ALL"
    return f"{insert} ON CONFLICT ({conflict}) DO UPDATE SET {adds}" if conflicts else insert


def upserts(source: str = "staging") -> list[str]:
    """Statements adding the model-call rows in ``source`` to every rollup."""
    return [_upsert(table, source) for table in _KEYS]


def backfill_statements() -> list[str]:
    """Statements filling *empty* rollups from ``model_calls`` (a view made before them):
    plain inserts, each key once (no conflict to look for)."""
    return [_upsert(table, "model_calls", conflicts=False) for table in _KEYS]


def hour_bounds(
    since: datetime | None, until: datetime | None
) -> tuple[datetime | None, datetime | None]:
    """The whole UTC hours inside ``[since, until)``: the first hour boundary at or after
    ``since`` and the last at or before ``until`` (``None``: unbounded on that side)."""
    first = None
    if since is not None:
        floor = since.replace(minute=0, second=0, microsecond=0)
        first = floor if floor == since else floor + timedelta(hours=1)
    last = None if until is None else until.replace(minute=0, second=0, microsecond=0)
    return first, last


def hourly_source(
    table: str, since: datetime | None, until: datetime | None
) -> tuple[str, list[Any]]:
    """A subquery with the rollup's key and measure columns covering ``[since, until)``:
    rollup rows for the whole hours, raw ``model_calls`` rows (one call each) for the
    edges. Key columns are NULL where the raw value was. Returns SQL and its parameters."""
    keys = _KEYS[table]
    first, last = hour_bounds(since, until)
    names = [k for k, _ in keys]
    measures = [m for m, _, _ in _MEASURES]
    rolled = ", ".join(
        [f"NULLIF({k}, '') AS {k}" for k in names] + [f"{m} AS {m}" for m in measures]
    )
    raw_measures = {
        "calls": "1",
        "reported_cost_usd": "COALESCE(reported_cost_usd, 0)",
    }
    raw = ", ".join(
        [f"NULLIF({expr}, '') AS {k}" for k, expr in keys]
        + [f"{raw_measures.get(m, m)} AS {m}" for m in measures]
    )
    if first is not None and last is not None and first >= last:
        # Inside one hour: the raw rows alone.
        return f"SELECT {raw} FROM model_calls WHERE ts >= ? AND ts < ?", [since, until]
    hours, params = ["TRUE"], []
    edges: list[str] = []
    edge_params: list[Any] = []
    for bound, test, edge in (
        (first, "hour >= ?", (since, first)),
        (last, "hour < ?", (last, until)),
    ):
        if bound is None:
            continue
        hours.append(test)
        params.append(bound)
        if edge[0] != edge[1]:  # a partial hour at this end: its raw rows
            edges.append("(ts >= ? AND ts < ?)")
            edge_params += list(edge)
    sql = f"SELECT {rolled} FROM {table} WHERE {' AND '.join(hours)}"
    if edges:
        sql += f" UNION ALL SELECT {raw} FROM model_calls WHERE {' OR '.join(edges)}"
    return sql, params + edge_params

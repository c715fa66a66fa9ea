"""The projection's tables: one column list per table, from which DDL and Arrow schemas come.

Fact tables (``model_calls``, ``tool_calls``, ``policy_decisions``, ``approvals``,
``outcomes``) are append-only and carry no index: exactly-once comes from the tracking row
committed in the same transaction, and appends stay at Arrow speed. ``sessions`` and
``goals`` are state tables keyed by IID and GID, upserted once per batch.

Money is ``DECIMAL(18,10)`` (see :mod:`shoal.projections.money`).
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa  # type: ignore[import-untyped]

from shoal.projections.money import MONEY_SCALE
from shoal.projections.views import VIEWS
from shoal.schemas.labels import LABEL_NAMES

__all__ = [
    "ADDED_COLUMNS",
    "FACT_TABLES",
    "MONEY",
    "STATE_TABLES",
    "TABLES",
    "Column",
    "Table",
    "create_statements",
]

MONEY = pa.decimal128(18, MONEY_SCALE)
_TS = pa.timestamp("us", tz="UTC")

_DUCK_TYPES: dict[pa.DataType, str] = {
    pa.string(): "VARCHAR",
    pa.int32(): "INTEGER",
    pa.int64(): "BIGINT",
    pa.float64(): "DOUBLE",
    pa.bool_(): "BOOLEAN",
    _TS: "TIMESTAMPTZ",
    MONEY: f"DECIMAL(18,{MONEY_SCALE})",
    pa.list_(pa.string()): "VARCHAR[]",
}


@dataclass(frozen=True)
class Column:
    """One column: its name and Arrow type (the DuckDB type follows from it)."""

    name: str
    type: pa.DataType

    @property
    def duck_type(self) -> str:
        return _DUCK_TYPES[self.type]


@dataclass(frozen=True)
class Table:
    """A table of the projection: name, columns, and primary key (state tables only)."""

    name: str
    columns: tuple[Column, ...]
    key: str | None = None

    @property
    def arrow_schema(self) -> pa.Schema:
        return pa.schema([pa.field(c.name, c.type) for c in self.columns])

    @property
    def column_names(self) -> list[str]:
        return [c.name for c in self.columns]

    def ddl(self) -> str:
        cols = ", ".join(
            f"{c.name} {c.duck_type}{' PRIMARY KEY' if c.name == self.key else ''}"
            for c in self.columns
        )
        return f"CREATE TABLE IF NOT EXISTS {self.name} ({cols})"


def _cols(*spec: tuple[str, pa.DataType]) -> tuple[Column, ...]:
    return tuple(Column(name, type_) for name, type_ in spec)


_S, _I, _L, _F, _B = pa.string(), pa.int32(), pa.int64(), pa.float64(), pa.bool_()

# Who did it: copied onto every fact row so a ledger or cost query needs no join.
_WHO = (("fleet", _S), ("agent", _S), ("instance", _S), ("principal", _S))
_WHERE = (("seq", _L), ("ts", _TS), ("iid", _S), ("gid", _S))
# Attribution labels (``shoal.schemas.labels``), on sessions and goals.
_LABELS = tuple((name, _S) for name in LABEL_NAMES)

MODEL_CALLS = Table(
    "model_calls",
    _cols(
        *_WHERE,
        *_WHO,
        ("event_id", _S),
        ("call_id", _S),
        ("model", _S),
        ("provider", _S),
        ("input_tokens", _L),
        ("output_tokens", _L),
        ("cached_tokens", _L),
        ("latency_ms", _F),
        ("finish_reason", _S),
        ("cost_usd", MONEY),
        ("reported_cost_usd", MONEY),
        ("priced_as", _S),
        ("error", _S),
    ),
)

TOOL_CALLS = Table(
    "tool_calls",
    _cols(
        *_WHERE,
        *_WHO,
        ("event_id", _S),
        ("call_id", _S),
        ("tool", _S),
        ("version", _S),
        ("arguments", _S),  # JSON text, as recorded (already redacted by the tool gateway)
        ("signature", _S),
        ("sensitivity", _S),
        ("result_class", _S),
        ("latency_ms", _F),
        ("side_effects", pa.list_(_S)),
        ("error", _S),
    ),
)

POLICY_DECISIONS = Table(
    "policy_decisions",
    _cols(
        *_WHERE,
        *_WHO,
        ("event_id", _S),
        ("action", _S),
        ("target", _S),
        ("decision", _S),
        ("rule", _S),
        ("reason", _S),
    ),
)

APPROVALS = Table(
    "approvals",
    _cols(
        *_WHERE,
        ("request_id", _S),
        ("state", _S),
        ("decided_by", _S),
        ("action", _S),
        ("target", _S),
        ("reason", _S),
    ),
)

OUTCOMES = Table(
    "outcomes",
    _cols(*_WHERE, ("outcome", _S), ("signal", _S), ("detail", _S), ("reported_by", _S)),
)

SESSIONS = Table(
    "sessions",
    _cols(
        ("iid", _S),
        ("session_id", _S),  # the Session aggregate's UUID: maps events back to their IID
        ("gid", _S),
        ("parentiid", _S),
        ("fleet", _S),
        ("principal", _S),
        ("source", _S),
        ("capability", _S),
        ("agent", _S),
        ("instance", _S),
        ("status", _S),
        ("attempts", _I),
        ("opened_at", _TS),
        ("started_at", _TS),
        ("ended_at", _TS),
        ("last_event_at", _TS),
        ("first_seq", _L),
        ("last_seq", _L),
        ("model_calls", _L),
        ("tool_calls", _L),
        ("input_tokens", _L),
        ("output_tokens", _L),
        ("cached_tokens", _L),
        ("cost_usd", MONEY),
        ("reported_cost_usd", MONEY),
        ("errors", _L),
        ("denials", _L),
        ("approvals_requested", _L),
        ("rejected", _L),
        ("budget_usd", MONEY),
        ("budget_exceeded", _B),
        ("stuck", _B),
        ("looping", _B),
        ("killed_by", _S),
        ("kill_reason", _S),
        ("outcome", _S),
        ("outcome_signal", _S),
        ("outcome_at", _TS),
        # Added for evaluations (appended, so an older file gains them by ALTER TABLE):
        *_LABELS,
        ("agent_version", _S),  # the instance's release, as the core registered it
        ("model", _S),  # the first model the session called
        ("tools", pa.list_(_S)),  # the distinct tools it called, sorted: its tool set
        ("asks", _L),  # questions it asked a person (session.asked)
    ),
    key="iid",
)

GOALS = Table(
    "goals",
    _cols(
        ("gid", _S),
        ("goal_id", _S),
        ("fleet", _S),
        ("principal", _S),
        ("text", _S),
        ("root_iid", _S),
        ("status", _S),
        ("budget_usd", MONEY),
        ("budget_exceeded", _B),
        ("sessions", _L),
        ("model_calls", _L),
        ("cost_usd", MONEY),
        ("opened_at", _TS),
        ("submitted_at", _TS),
        ("ended_at", _TS),
        ("last_event_at", _TS),
        ("first_seq", _L),
        ("last_seq", _L),
        ("summary", _S),
        ("failure_reason", _S),
        ("outcome", _S),
        ("outcome_signal", _S),
        ("root_outcome", _S),  # the root session's reported outcome: it stands for the goal
        *_LABELS,  # added for evaluations (appended)
    ),
    key="gid",
)

FACT_TABLES = (MODEL_CALLS, TOOL_CALLS, POLICY_DECISIONS, APPROVALS, OUTCOMES)
STATE_TABLES = (SESSIONS, GOALS)
TABLES = (*STATE_TABLES, *FACT_TABLES)


ADDED_COLUMNS: dict[str, tuple[str, ...]] = {
    "sessions": (*LABEL_NAMES, "agent_version", "model", "tools", "asks"),
    "goals": LABEL_NAMES,
}
"""Columns appended to a table after its first release: a file made before gains them."""


def create_statements() -> list[str]:
    """DDL for every table and view (idempotent); an older file gains the added columns."""
    by_name = {t.name: t for t in TABLES}
    added = [
        f"ALTER TABLE {table} ADD COLUMN IF NOT EXISTS {c.name} {c.duck_type}"
        for table, names in ADDED_COLUMNS.items()
        for c in by_name[table].columns
        if c.name in names
    ]
    return (
        [t.ddl() for t in TABLES]
        + added
        + [f"CREATE OR REPLACE VIEW {name} AS {sql}" for name, sql in VIEWS.items()]
    )

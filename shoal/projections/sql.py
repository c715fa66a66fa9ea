"""Ad-hoc SQL against the projection, read-only by construction.

Three locks on the door, so that one missed case does not make ``shoal sql`` a writer:

1. DuckDB's own parser classifies the text (``duckdb.extract_statements``): exactly one
   statement, and it must be a ``SELECT`` (``WITH``, ``FROM t``, ``DESCRIBE``, ``SHOW``,
   ``SUMMARIZE`` parse as selects) or an ``EXPLAIN``; anything else is refused by name.
2. The statement runs inside ``BEGIN TRANSACTION READ ONLY`` and is rolled back.
3. The query service opens its database with external access disabled, so a select cannot
   read or write files on the service's host (``read_csv``, ``COPY``, ``ATTACH``).

A DuckDB error comes back as its first line (``Parser Error: syntax error at or near …``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field

from shoal.errors import QueryFailed, Refused

if TYPE_CHECKING:  # duckdb loads where SQL runs, not in every CLI process
    from shoal.projections.recorder import DuckDBDatastore

__all__ = ["SqlAnswer", "SqlParams", "check_read_only", "run_sql"]

_READ_ONLY = ("SELECT", "EXPLAIN")


class SqlParams(BaseModel):
    """One read-only statement and how many rows to return at most."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    sql: str = Field(min_length=1)
    limit: int = Field(default=1000, ge=1, le=100_000)


class SqlAnswer(BaseModel):
    """Column names and types, rows (JSON-ready), and whether rows were cut at the limit."""

    model_config = ConfigDict(frozen=True)
    columns: list[str]
    types: list[str]
    rows: list[list[Any]]
    truncated: bool


def one_line(error: Exception) -> str:
    """DuckDB's message without the ``LINE 1: …`` excerpt and caret that follow it."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def check_read_only(sql: str) -> None:
    """Raise :class:`Refused` unless ``sql`` is exactly one read-only statement."""
    import duckdb

    try:
        statements = duckdb.extract_statements(sql)
    except duckdb.Error as e:
        raise QueryFailed(one_line(e)) from None
    if not statements:
        raise Refused("no SQL statement given")
    if len(statements) > 1:
        raise Refused(f"one statement at a time ({len(statements)} given)")
    kind = statements[0].type.name
    if kind not in _READ_ONLY:
        raise Refused(f"shoal sql is read-only: {kind} statements are refused (only SELECT runs)")


def run_sql(ds: DuckDBDatastore, params: SqlParams) -> SqlAnswer:
    """Run one read-only statement in a read-only transaction that is rolled back."""
    import duckdb

    check_read_only(params.sql)
    with ds.reader() as c:
        try:
            c.execute("BEGIN TRANSACTION READ ONLY")
            try:
                relation = c.sql(params.sql)
                names: list[str] = [] if relation is None else list(relation.columns)
                types = [] if relation is None else [str(t) for t in relation.types]
                table = None if relation is None else relation.limit(params.limit + 1)
                result = None if table is None else table.to_arrow_table()
            finally:
                c.execute("ROLLBACK")
        except duckdb.Error as e:
            raise QueryFailed(one_line(e)) from None
    columns = [] if result is None else [col.to_pylist() for col in result.columns]
    rows = [list(r) for r in zip(*columns, strict=True)]
    truncated = len(rows) > params.limit
    return SqlAnswer(columns=names, types=types, rows=rows[: params.limit], truncated=truncated)

"""``shoal sql`` is read-only, and a DuckDB error is one line."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from shoal.aggregates.application import ShoalCore
from shoal.errors import QueryFailed, Refused
from shoal.ops.cli import app
from shoal.projections.recorder import DuckDBDatastore
from shoal.projections.sql import SqlParams, run_sql
from tests.projections.conftest import build


@pytest.fixture
def db_file(core: ShoalCore, tmp_path: Path) -> Path:
    path = tmp_path / "p.duckdb"
    build(core, path).datastore.close()
    return path


@pytest.fixture
def service_like(db_file: Path) -> DuckDBDatastore:
    """The database opened as the query service opens it (external access off)."""
    return DuckDBDatastore(db_file, external_access=False)


@pytest.mark.parametrize(
    ("sql", "kind"),
    [
        ("DELETE FROM model_calls", "DELETE"),
        ("INSERT INTO outcomes SELECT * FROM outcomes", "INSERT"),
        ("UPDATE sessions SET cost_usd = 0", "UPDATE"),
        ("DROP TABLE sessions", "DROP"),
        ("CREATE TABLE x AS SELECT 1", "CREATE"),
        ("ATTACH '/tmp/other.duckdb'", "ATTACH"),
        ("COPY sessions TO '/tmp/out.csv'", "COPY"),
        ("PRAGMA version", "PRAGMA"),
        ("SET threads = 1", "SET"),
        ("CALL pragma_version()", "CALL"),
    ],
)
def test_a_statement_that_is_not_a_select_is_refused_by_name(
    service_like: DuckDBDatastore, sql: str, kind: str
) -> None:
    with pytest.raises(Refused) as refused:
        run_sql(service_like, SqlParams(sql=sql))
    assert str(refused.value) == (
        f"shoal sql is read-only: {kind} statements are refused (only SELECT runs)"
    )


def test_the_refused_delete_removed_nothing(service_like: DuckDBDatastore) -> None:
    count = "SELECT count(*) AS n FROM model_calls"
    before = run_sql(service_like, SqlParams(sql=count)).rows
    with pytest.raises(Refused):
        run_sql(service_like, SqlParams(sql="DELETE FROM model_calls"))
    assert run_sql(service_like, SqlParams(sql=count)).rows == before
    assert before[0][0] > 0


def test_a_write_hidden_after_a_select_is_refused(service_like: DuckDBDatastore) -> None:
    with pytest.raises(Refused, match="one statement at a time \\(2 given\\)"):
        run_sql(service_like, SqlParams(sql="SELECT 1; DELETE FROM sessions"))


def test_a_select_cannot_read_files_on_the_service_host(service_like: DuckDBDatastore) -> None:
    with pytest.raises(QueryFailed) as failed:
        run_sql(service_like, SqlParams(sql="SELECT * FROM read_csv('/etc/passwd')"))
    assert str(failed.value).startswith("Permission Error: Cannot access file")
    assert "\n" not in str(failed.value)


def test_a_syntax_error_is_duckdbs_message_on_one_line(service_like: DuckDBDatastore) -> None:
    with pytest.raises(QueryFailed) as failed:
        run_sql(service_like, SqlParams(sql="SELEC count(*) FROM sessions"))
    assert str(failed.value) == 'Parser Error: syntax error at or near "SELEC"'


def test_a_select_returns_typed_columns_and_stops_at_the_limit(
    service_like: DuckDBDatastore,
) -> None:
    answer = run_sql(
        service_like, SqlParams(sql="SELECT iid, cost_usd FROM sessions ORDER BY iid", limit=3)
    )
    assert answer.columns == ["iid", "cost_usd"]
    assert answer.types == ["VARCHAR", "DECIMAL(18,10)"]
    assert len(answer.rows) == 3
    assert answer.truncated is True


def test_the_cli_refuses_delete_with_one_red_line(db_file: Path) -> None:
    result = CliRunner().invoke(app, ["sql", "DELETE FROM sessions", "--db", str(db_file)])
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [
        "error: shoal sql is read-only: DELETE statements are refused (only SELECT runs)"
    ]


def test_the_cli_prints_a_syntax_error_in_one_line_without_traceback(db_file: Path) -> None:
    result = CliRunner().invoke(app, ["sql", "SELECT FROM WHERE", "--db", str(db_file)])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("error: Parser Error: syntax error at or near")
    assert "Traceback" not in result.output

"""Rebuild by replay, time travel with ``--as-of``, and the CLI's answers from a rebuilt file."""

from __future__ import annotations

import json
from collections import defaultdict
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pyarrow.parquet as pq  # type: ignore[import-untyped]
import pytest
from typer.testing import CliRunner

from shoal.aggregates.application import ShoalCore, open_core
from shoal.bus import ShoalSettings
from shoal.errors import InvalidOption
from shoal.ops.cli import app
from shoal.ops.cli.cost import parse_since
from shoal.projections.host import projection_path
from shoal.projections.queries import NAMED_QUERIES, all_answers
from shoal.projections.view import open_view
from tests.projections.conftest import NOW, WORKLOAD, build, core_settings
from tests.projections.workload import ingest


def _cli(settings: ShoalSettings, *args: str) -> str:
    result = CliRunner().invoke(app, ["--data-dir", str(settings.data_dir), *args])
    assert result.exit_code == 0, result.output
    return result.output


def test_rebuild_reproduces_every_named_query_exactly(
    core: ShoalCore, settings_with_core: ShoalSettings
) -> None:
    live = projection_path(settings_with_core)
    view = build(core, live, batch_size=700)  # built incrementally, as a live service does
    before = all_answers(view.datastore, NOW)
    view.datastore.close()

    out = json.loads(_cli(settings_with_core, "projections", "rebuild", "--json"))

    assert out["path"] == str(live)
    assert out["swapped_by"] == "rebuild"  # no query service was running
    assert out["position"] == core.recorder.max_notification_id()
    rebuilt = open_view(live, read_only=True)
    after = all_answers(rebuilt.datastore, NOW)
    assert set(before) >= set(NAMED_QUERIES)
    assert after == before


def test_as_of_builds_what_the_projection_said_at_that_sequence(
    core: ShoalCore, settings_with_core: ShoalSettings, tmp_path: Path
) -> None:
    cut = 1500
    out = json.loads(
        _cli(settings_with_core, "projections", "rebuild", "--as-of", str(cut), "--json")
    )
    assert out["path"].endswith(f"projections-asof-{cut}.duckdb")
    assert out["stopped_at_seq"] == cut + 1
    as_of = open_view(out["path"], read_only=True)

    partial = open_core(core_settings(tmp_path / "partial"))
    ingest(partial, WORKLOAD, limit=cut)
    expected = build(partial, ":memory:")
    assert all_answers(as_of.datastore, NOW) == all_answers(expected.datastore, NOW)
    assert not projection_path(settings_with_core).exists()  # the live one is untouched
    partial.close()


def test_cost_by_model_from_the_cli_equals_the_cores_costs(
    core: ShoalCore, settings_with_core: ShoalSettings
) -> None:
    db = settings_with_core.data_dir / "p.duckdb"
    build(core, db).datastore.close()
    answer = json.loads(
        _cli(settings_with_core, "cost", "--by", "model", "--db", str(db), "--json")
    )
    expected: dict[str, Decimal] = defaultdict(Decimal)
    for s in core.sessions():
        for model, cost in s.cost_by_model.items():
            expected[model] += cost
    got = {row["key"][0]: Decimal(row["cost_usd"]) for row in answer["rows"]}
    assert got == dict(expected)
    assert Decimal(answer["total_usd"]) == sum(expected.values())


def test_export_writes_every_table_as_parquet(
    core: ShoalCore, settings_with_core: ShoalSettings, tmp_path: Path
) -> None:
    db = settings_with_core.data_dir / "p.duckdb"
    view = build(core, db)
    counts = view.table_counts()
    total = view.datastore.rows("SELECT sum(cost_usd) AS s FROM model_calls")[0]["s"]
    view.datastore.close()
    target = tmp_path / "lake"
    out = json.loads(
        _cli(settings_with_core, "export", "parquet", str(target), "--db", str(db), "--json")
    )
    assert {item["table"]: item["rows"] for item in out} == counts
    model_calls = pq.read_table(target / "model_calls.parquet")
    assert model_calls.num_rows == counts["model_calls"]
    assert sum(model_calls.column("cost_usd").to_pylist()) == total


def test_since_takes_a_duration_back_from_now_or_a_time() -> None:
    now = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
    assert parse_since("24h", now) == datetime(2026, 2, 28, 12, 0, tzinfo=UTC)
    assert parse_since("90m", now) == datetime(2026, 3, 1, 10, 30, tzinfo=UTC)
    assert parse_since("7d", now) == datetime(2026, 2, 22, 12, 0, tzinfo=UTC)
    assert parse_since("2026-02-01T08:00:00", now) == datetime(2026, 2, 1, 8, 0, tzinfo=UTC)
    assert parse_since(None, now) is None
    assert parse_since("P1D", now) == datetime(2026, 2, 28, 12, 0, tzinfo=UTC)
    assert parse_since("PT1H30M", now) == datetime(2026, 3, 1, 10, 30, tzinfo=UTC)
    assert parse_since("1h30m", now) == datetime(2026, 3, 1, 10, 30, tzinfo=UTC)
    assert parse_since("11:15:30", now) == datetime(2026, 3, 1, 11, 15, 30, tzinfo=UTC)
    assert parse_since("17:49", now) == datetime(2026, 2, 28, 17, 49, tzinfo=UTC)
    with pytest.raises(InvalidOption, match="'yesterday' is neither a duration"):
        parse_since("yesterday", now)
    with pytest.raises(InvalidOption, match="'-5h': a duration back from now cannot be negative"):
        parse_since("-5h", now)
    with pytest.raises(InvalidOption, match="'99999999h' reaches back before year 1"):
        parse_since("99999999h", now)


def test_cost_since_a_time_counts_only_later_calls(
    core: ShoalCore, settings_with_core: ShoalSettings
) -> None:
    db = settings_with_core.data_dir / "p.duckdb"
    build(core, db).datastore.close()
    cut = "2026-01-05T09:10:00+00:00"
    answer = json.loads(
        _cli(settings_with_core, "cost", "--by", "fleet", "--since", cut, "--db", str(db), "--json")
    )
    view = open_view(db, read_only=True)
    expected = view.datastore.rows(
        "SELECT sum(cost_usd) AS s, count(*) AS n FROM model_calls WHERE ts >= ?", [cut]
    )[0]
    assert Decimal(answer["total_usd"]) == expected["s"]
    assert answer["calls"] == expected["n"] > 0
    everything = view.datastore.rows("SELECT count(*) AS n FROM model_calls")[0]["n"]
    assert answer["calls"] < everything

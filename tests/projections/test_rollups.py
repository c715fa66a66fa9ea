"""The hourly rollups: kept with the rows, rebuilt with them, and answering as they do."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from shoal.aggregates import open_core
from shoal.aggregates.application import ShoalCore
from shoal.projections.answers import CostParams
from shoal.projections.queries.cost import cost
from shoal.projections.rebuild import rebuild
from shoal.projections.recorder import DuckDBDatastore
from shoal.projections.rollups import ROLLUP_TABLES
from shoal.projections.view import open_view
from tests.projections.conftest import build, core_settings
from tests.projections.workload import Workload, ingest

pytestmark = pytest.mark.timeout(300)

# ~2.5 hours of traffic from 09:00: ranges below start and end inside hours and span whole ones.
LONG = Workload(goals=1000, seed=5)


def _at(hh: int, mm: int, ss: int = 0) -> datetime:
    return datetime(2026, 1, 5, hh, mm, ss, tzinfo=UTC)


RANGES = [
    (None, None),
    (_at(9, 20, 13), _at(11, 10, 7)),  # partial hour, whole hour, partial hour
    (_at(9, 20, 13), None),
    (None, _at(10, 41, 7)),
    (_at(10, 5), _at(10, 35)),  # inside one hour: raw rows only
    (_at(10, 0), _at(11, 0)),  # exactly one whole hour: rollup rows only
]
DIMENSIONS = [
    ["model"],
    ["fleet"],
    ["agent", "model"],
    ["principal"],
    ["provider"],
    ["goal"],
    ["outcome"],
    ["goal", "outcome"],
    ["outcome", "model"],  # not covered by a rollup: the raw rows
]


@pytest.fixture(scope="module")
def long_core(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ShoalCore]:
    core = open_core(core_settings(tmp_path_factory.mktemp("long")))
    ingest(core, LONG)
    yield core
    core.close()


@pytest.fixture(scope="module")
def built(long_core: ShoalCore) -> DuckDBDatastore:
    # Small batches: most hours are upserted by many transactions.
    return build(long_core, ":memory:", batch_size=700).datastore


def _rollups(ds: DuckDBDatastore) -> dict[str, list[dict[str, object]]]:
    return {t: ds.rows(f"SELECT * FROM {t} ORDER BY ALL") for t in ROLLUP_TABLES}


def test_cost_from_the_rollups_is_the_raw_rows_answer_to_the_cent(
    built: DuckDBDatastore,
) -> None:
    span = built.rows("SELECT min(ts) AS first, max(ts) AS last FROM model_calls")[0]
    assert span["first"] < _at(9, 20, 13) and span["last"] > _at(11, 10, 7)
    compared = 0
    for since, until in RANGES:
        for by in DIMENSIONS:
            p = CostParams(by=by, since=since, until=until, limit=10_000)
            from_rollups, from_rows = cost(built, p), cost(built, p, rollups=False)
            assert from_rollups == from_rows, (by, since, until)
            assert from_rows.calls > 0
            compared += 1
    assert compared == len(RANGES) * len(DIMENSIONS)


def test_the_rollups_sum_exactly_what_the_rows_sum(built: DuckDBDatastore) -> None:
    raw = built.rows(
        "SELECT count(*) AS calls, sum(cost_usd) AS cost, sum(input_tokens) AS tokens, "
        "COALESCE(sum(reported_cost_usd), 0) AS reported FROM model_calls"
    )[0]
    for table in ROLLUP_TABLES:
        rolled = built.rows(
            f"SELECT sum(calls) AS calls, sum(cost_usd) AS cost, sum(input_tokens) AS tokens, "
            f"sum(reported_cost_usd) AS reported FROM {table}"
        )[0]
        assert rolled == raw, table
    hours = built.rows("SELECT count(DISTINCT hour) AS n FROM cost_hourly")[0]["n"]
    assert hours == 3  # 09:00, 10:00, 11:00


def test_a_rebuild_by_replay_rebuilds_the_rollups(
    long_core: ShoalCore, built: DuckDBDatastore, tmp_path: Path
) -> None:
    rebuild(long_core, tmp_path / "rebuilt.duckdb", batch_size=3000)
    view = open_view(tmp_path / "rebuilt.duckdb", read_only=True)
    assert _rollups(view.datastore) == _rollups(built)
    view.datastore.close()


def test_a_view_made_before_the_rollups_gets_them_filled_on_open(
    long_core: ShoalCore, built: DuckDBDatastore, tmp_path: Path
) -> None:
    path = tmp_path / "old.duckdb"
    rebuild(long_core, path, batch_size=3000)
    view = open_view(path)
    with view.datastore.transaction() as c:
        for table in ROLLUP_TABLES:
            c.execute(f"DROP TABLE {table}")
    view.datastore.close()
    reopened = open_view(path)
    assert _rollups(reopened.datastore) == _rollups(built)
    reopened.datastore.close()

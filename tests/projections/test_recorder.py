"""The library's own tracking-recorder contract, run against the DuckDB recorder."""

from __future__ import annotations

from pathlib import Path

import pytest
from eventsourcing.persistence import IntegrityError, ProgrammingError, Tracking
from eventsourcing.tests.persistence import TrackingRecorderTestCase

from shoal.projections.recorder import DuckDBDatastore, DuckDBTrackingRecorder


class TestDuckDBTrackingRecorder(TrackingRecorderTestCase):
    def create_recorder(self) -> DuckDBTrackingRecorder:
        return DuckDBTrackingRecorder(DuckDBDatastore(":memory:"))


def test_tracking_survives_reopening_the_file(tmp_path: Path) -> None:
    path = tmp_path / "view.duckdb"
    first = DuckDBDatastore(path)
    DuckDBTrackingRecorder(first).insert_tracking(Tracking("ShoalCore", 41))
    first.close()
    second = DuckDBDatastore(path)
    recorder = DuckDBTrackingRecorder(second)
    assert recorder.max_tracking_id("ShoalCore") == 41
    with pytest.raises(IntegrityError):
        recorder.insert_tracking(Tracking("ShoalCore", 41))
    second.close()


def test_a_failed_transaction_keeps_the_old_position() -> None:
    datastore = DuckDBDatastore(":memory:")
    recorder = DuckDBTrackingRecorder(datastore)
    recorder.insert_tracking(Tracking("ShoalCore", 5))
    with pytest.raises(ProgrammingError), datastore.transaction() as c:
        recorder._insert_tracking(c, Tracking("ShoalCore", 9))
        c.execute("SELECT * FROM no_such_table")
    assert recorder.max_tracking_id("ShoalCore") == 5

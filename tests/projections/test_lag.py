"""The projection's lag counts the events it follows, not the core's other notifications."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from shoal.aggregates.application import ShoalCore
from shoal.aggregates.instance import Instance
from shoal.projections.host import behind
from tests.projections.conftest import build


def test_notifications_the_projection_does_not_follow_are_no_lag(
    core: ShoalCore, tmp_path: Path
) -> None:
    view = build(core, tmp_path / "p.duckdb")
    position = view.max_tracking_id(core.name) or 0
    assert behind(core, position) == 0
    # Instance events are the core's own registry, not projected: the position stays, and
    # the ids run on past it, yet nothing is waiting to be projected.
    for n in range(3):
        core.save(Instance(f"ghost-{n}", "f", "a", "1", [], "h", 1, 10**9 + n, datetime.now(UTC)))
    last = core.recorder.max_notification_id() or 0
    assert (last - position, behind(core, position)) == (3, 0)
    assert behind(core, position - 2) == 2

"""The core's logs the projection follows: one, or one per core partition.

A single core has one notification log, tracked in DuckDB as ``ShoalCore`` (unchanged). A
core of N partitions (docs/scale.md) has N: each is followed on its own, with its own
tracking row (``ShoalCore-p0of2``, …) written in the same transaction as the rows it
produced, so exactly-once holds per partition. A batch never mixes partitions.

Nothing the projection keeps crosses partitions: a goal and every session serving it fold
in one partition, so goal labels, root sessions and goal spend are all found in the log
that carries them; rows are keyed by IID/GID and queries order by stream sequence or time,
so the tables answer as the single core's do.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

from eventsourcing.application import Application

from shoal.aggregates.readers import open_reader
from shoal.bus import ShoalSettings
from shoal.projections.projection import DEFAULT_BATCH, CostProjection
from shoal.projections.runner import CatchUp, Progress, ProjectionFollower

__all__ = ["Followers", "Source", "core_sources"]

Source = tuple[str, Application[Any]]
"""A log to follow: its tracking name and the application whose log it is."""


def core_sources(settings: ShoalSettings, count: int | None = None) -> list[Source]:
    """The core's store(s) to follow, opened for reading (close them with the apps)."""
    reader = open_reader(settings, count)
    return [
        (app.name if part is None else f"{app.name}-{part}", app)
        for part, app in zip(reader.parts, reader.stores, strict=True)
    ]


class Followers:
    """One :class:`ProjectionFollower` per source, into one projection."""

    def __init__(
        self,
        sources: Sequence[Source],
        projection: CostProjection,
        *,
        page: int = DEFAULT_BATCH,
        as_of: int | None = None,
    ) -> None:
        self.projection = projection
        self.followers = [
            ProjectionFollower(app, projection, page=page, as_of=as_of, name=name)
            for name, app in sources
        ]

    @property
    def position(self) -> int:
        """Notifications committed, over every source."""
        return sum(f.position for f in self.followers)

    def last_notification(self) -> int:
        """Notifications recorded by the core, over every source."""
        return sum(f.app.recorder.max_notification_id() or 0 for f in self.followers)

    def positions(self) -> dict[str, dict[str, int]]:
        """Each source's position and last notification, by tracking name."""
        return {
            f.name: {
                "position": f.position,
                "core_last_notification": f.app.recorder.max_notification_id() or 0,
            }
            for f in self.followers
        }

    def catch_up(
        self, progress: Progress | None = None, stop: threading.Event | None = None
    ) -> CatchUp:
        """Catch every source up in turn; positions and counts are summed over them."""
        done = CatchUp()
        before = [f.position for f in self.followers]
        last = self.last_notification() if progress is not None else 0
        for k, follower in enumerate(self.followers):
            base = sum(before) - before[k]
            report = None
            if progress is not None:
                report = _offset(progress, base, last)
            one = follower.catch_up(report, stop)
            before[k] = one.position
            done.events += one.events
            if one.stopped_at_seq is not None:
                found = done.stopped_at_seq
                done.stopped_at_seq = min(one.stopped_at_seq, found or one.stopped_at_seq)
            if stop is not None and stop.is_set():
                break
        done.position = sum(before)
        return done

    def follow(self, stop: threading.Event, poll_s: float = 0.2) -> None:
        """Catch up, then keep polling until ``stop`` is set (or an ``as_of`` cut is hit)."""
        while not stop.is_set():
            if self.catch_up(stop=stop).stopped_at_seq is not None:
                return
            stop.wait(poll_s)


def _offset(progress: Progress, base: int, last: int) -> Progress:
    def report(position: int, _: int) -> None:
        progress(base + position, max(last, base + position))

    return report

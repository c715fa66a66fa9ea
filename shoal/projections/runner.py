"""Feeding the projection from the core's notification log: catch up, then follow.

The library's ``ProjectionRunner`` needs a recorder that supports subscriptions, which the
SQLite recorder (shoal's embedded default) does not. :class:`ProjectionFollower` does the same
job for any recorder by reading the log in pages (``select_notifications`` after the tracked
position, filtered to the projection's topics), handing each decoded event to the projection
with its ``Tracking``, and flushing once per page; when the log is drained it polls.

Everything here is synchronous (SQLite, DuckDB); the async service runs it in a thread.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from eventsourcing.application import Application
from eventsourcing.persistence import Notification, Tracking

from shoal.gcpolicy import fewer_collections
from shoal.projections.projection import DEFAULT_BATCH, CostProjection

__all__ = ["CatchUp", "Progress", "ProjectionFollower"]


log = logging.getLogger("shoal.projections")

Progress = Callable[[int, int], None]
"""Called after each page with (position, last notification id of the log)."""


@dataclass
class CatchUp:
    """What one catch-up did."""

    events: int = 0
    position: int = 0
    stopped_at_seq: int | None = None


class ProjectionFollower:
    """Reads the core's notification log into a :class:`CostProjection`."""

    def __init__(
        self,
        app: Application[Any],
        projection: CostProjection,
        *,
        page: int = DEFAULT_BATCH,
        as_of: int | None = None,
        name: str | None = None,
    ) -> None:
        self.app = app
        self.projection = projection
        self.page = page
        self.as_of = as_of
        """Stop before the first event whose stream sequence (``seq``) is above this."""
        self.name = name or app.name
        """The tracking record's name (one per core partition: ``ShoalCore-p0of2``)."""

    @property
    def position(self) -> int:
        """The last notification id the projection has committed (0 before the first)."""
        return self.projection.view.max_tracking_id(self.name) or 0

    def catch_up(
        self, progress: Progress | None = None, stop: threading.Event | None = None
    ) -> CatchUp:
        """Process every notification recorded so far (or until ``stop`` is set, checked
        between pages); return what was done."""
        with fewer_collections():
            return self._catch_up(progress, stop)

    def _catch_up(self, progress: Progress | None, stop: threading.Event | None) -> CatchUp:
        recorder, mapper, name = self.app.recorder, self.app.mapper, self.name
        done = CatchUp(position=self.position)
        last = recorder.max_notification_id() or 0
        while done.stopped_at_seq is None:
            page = recorder.select_notifications(
                start=done.position,
                limit=self.page,
                topics=self.projection.topics,
                inclusive_of_start=False,
            )
            if not page:
                break
            if self.as_of is not None:
                page = self._before_as_of(page, done)
            decode, process = mapper.to_domain_event, self.projection.process_event
            for notification in page:
                process(decode(notification), Tracking(name, notification.id))
            if page:
                done.events += len(page)
                done.position = page[-1].id
            self.projection.flush()
            if progress is not None:
                progress(done.position, max(last, done.position))
            if len(page) < self.page or (stop is not None and stop.is_set()):
                break
        self.projection.drain()  # committed before we say so
        return done

    def _before_as_of(self, page: Sequence[Notification], done: CatchUp) -> Sequence[Notification]:
        """The page cut before the first event whose stream sequence is above ``as_of``."""
        for i, notification in enumerate(page):
            seq = getattr(self.app.mapper.to_domain_event(notification), "seq", None)
            if self.as_of is not None and seq is not None and seq > self.as_of:
                done.stopped_at_seq = seq
                return page[:i]
        return page

    def follow(self, stop: threading.Event, poll_s: float = 0.2) -> None:
        """Catch up, then keep polling for new notifications until ``stop`` is set."""
        while not stop.is_set():
            done = self.catch_up(stop=stop)
            if done.events:
                log.debug("projected %d events, position %d", done.events, done.position)
            if done.stopped_at_seq is not None:
                return
            stop.wait(poll_s)

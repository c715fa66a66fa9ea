"""Rebuild by replay: a fresh projection database from the core's whole log (or up to a point).

A rebuild writes a new file next to the live one and never touches the live one: the query
service swaps it in afterwards (``ProjectionHost.swap``), or, with ``as_of``, it stays a
separate file for forensics ("what did the numbers say at stream sequence N?").
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from eventsourcing.application import Application

from shoal.projections.projection import DEFAULT_BATCH, CostProjection
from shoal.projections.runner import Progress
from shoal.projections.sources import Followers, Source
from shoal.projections.view import open_view

__all__ = ["Rebuilt", "rebuild"]


@dataclass(frozen=True)
class Rebuilt:
    """Where the rebuilt database is and what went into it."""

    path: Path
    events: int
    position: int
    as_of: int | None
    stopped_at_seq: int | None
    seconds: float


def rebuild(
    app: Application[Any] | list[Source],
    path: Path,
    *,
    as_of: int | None = None,
    progress: Progress | None = None,
    batch_size: int = DEFAULT_BATCH,
) -> Rebuilt:
    """Replay ``app``'s log into a new database at ``path`` (replaced if it exists); or, given
    sources (:func:`~shoal.projections.sources.core_sources`), every partition's log."""
    sources = app if isinstance(app, list) else [(app.name, app)]
    for stale in (path, path.with_name(path.name + ".wal")):
        stale.unlink(missing_ok=True)
    started = time.perf_counter()
    view = open_view(path)
    try:
        projection = CostProjection(view, batch_size=batch_size, pipelined=True)
        follower = Followers(sources, projection, page=batch_size, as_of=as_of)
        try:
            done = follower.catch_up(progress)
        finally:
            projection.abandon()  # catch_up committed everything it reports
    finally:
        view.datastore.close()
    return Rebuilt(
        path=path,
        events=done.events,
        position=done.position,
        as_of=as_of,
        stopped_at_seq=done.stopped_at_seq,
        seconds=time.perf_counter() - started,
    )

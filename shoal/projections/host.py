"""The one process that owns the projection's DuckDB file.

DuckDB lets one process write a database file. :class:`ProjectionHost` is that process's
synchronous half: it opens the file, runs the follower in a thread (catching up with the
core's notification log, then polling it; with a partitioned core, every partition's log,
each with its own tracking row: :mod:`shoal.projections.sources`), and lends the datastore
to readers. Catch-ups are
serialised by a lock, so :meth:`sync` (catch up *now*, before answering a query) and the
follower thread never write at the same time. :meth:`swap` replaces the file with a rebuilt
one without restarting the process.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from eventsourcing.application import Application
from eventsourcing.persistence import OperationalError, PersistenceError

from shoal.aggregates.application import CORE_APPLICATION_NAME
from shoal.aggregates.readers import core_partitions, first_dbname
from shoal.bus import ShoalSettings
from shoal.errors import Refused, ServiceUnavailable
from shoal.projections.projection import DEFAULT_BATCH, CostProjection
from shoal.projections.recorder import DuckDBDatastore
from shoal.projections.runner import CatchUp
from shoal.projections.sources import Followers, Source, core_sources
from shoal.projections.view import DuckDBCostView

__all__ = ["ProjectionHost", "answer_locally", "projection_path"]

log = logging.getLogger("shoal.projections")

T = TypeVar("T")


def projection_path(settings: ShoalSettings) -> Path:
    """Where the projection's database lives: ``<store dir>/projections.duckdb``.

    The store dir is the data dir for the default prefix, ``<data dir>/tenants/<prefix>``
    for any other (one projection per tenant, as one core store per tenant).
    """
    return settings.store_dir / "projections.duckdb"


_BEHIND_COUNTED = 1000
"""Up to this many unprojected notifications are counted; past it, the id difference."""


def behind(app: Application[Any], position: int) -> int:
    """Notifications of the topics the projection follows recorded after ``position``.

    Not the difference of ids: the core records notifications the projection does not follow
    (fleet and instance events), and the position only moves on those it does, so after the
    last followed event the difference stays above 0 for good.
    """
    page = app.recorder.select_notifications(
        start=position,
        limit=_BEHIND_COUNTED,
        topics=CostProjection.topics,
        inclusive_of_start=False,
    )
    if len(page) < _BEHIND_COUNTED:
        return len(page)
    return max((app.recorder.max_notification_id() or 0) - position, len(page))


class ProjectionHost:
    """Owns the DuckDB file: follows the core's log into it and hands out readers."""

    def __init__(
        self,
        settings: ShoalSettings,
        *,
        path: Path | None = None,
        app_factory: Callable[[], Application[Any]] | None = None,
        sources_factory: Callable[[], list[Source]] | None = None,
        batch_size: int = DEFAULT_BATCH,
        poll_s: float = 0.2,
    ) -> None:
        self.settings = settings
        self.path = path or projection_path(settings)
        # What to follow: the core's store(s) for these settings, one given application
        # (benches, tests), or given sources.
        self._sources_factory = sources_factory or (lambda: core_sources(settings))
        if app_factory is not None:
            self._sources_factory = _single(app_factory)
        # Following the settings' core: a change of its layout (N) is reported, not followed.
        self._follows_layout = sources_factory is None and app_factory is None
        self.batch_size = batch_size
        self.poll_s = poll_s
        self.last_error: str | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._sources: list[Source] | None = None
        self._view: DuckDBCostView | None = None
        self._follower: Followers | None = None

    # -- lifecycle ------------------------------------------------------------------------------
    def open(self) -> None:
        """Open the core (read side) and the database; do not start following yet."""
        self._sources = self._sources_factory()
        self._open_view()

    def _open_view(self) -> None:
        assert self._sources is not None
        try:
            datastore = DuckDBDatastore(self.path, external_access=False)
        except OperationalError as e:
            # DuckDB's file lock: another process (a query service) owns the database.
            raise Refused(f"cannot open {self.path}: {str(e).split(' See also')[0]}") from e
        self._view = DuckDBCostView(datastore)
        try:
            self._check_layout(self._view)
        except Refused:
            datastore.close()
            self._view = None
            raise
        self._open_follower()

    def _check_layout(self, view: DuckDBCostView) -> None:
        """Refuse a database built from another core layout (1 core, or N partitions): its
        tracking rows would not match, and following the new logs would count events twice."""
        assert self._sources is not None
        names = {name for name, _ in self._sources}
        with view.datastore.reader() as c:
            rows = c.execute(f"SELECT application_name FROM {view.tracking_table}").fetchall()
        stale = sorted(
            r[0] for r in rows if r[0].startswith(CORE_APPLICATION_NAME) and r[0] not in names
        )
        if stale:
            raise Refused(
                f"{self.path} was built from another core layout (tracking {', '.join(stale)}; "
                f"the core now has {len(names)} store(s)): "
                "run 'shoal projections rebuild'"
            )

    def _open_follower(self) -> None:
        assert self._sources is not None and self._view is not None
        projection = CostProjection(self._view, batch_size=self.batch_size, pipelined=True)
        self._follower = Followers(self._sources, projection, page=self.batch_size)

    def start(self) -> None:
        """Open if needed, then follow the core's log in a background thread."""
        if self._sources is None:
            self.open()
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="shoal-projection", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop following, close the database (checkpointed) and the core."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None
        with self._lock:
            if self._follower is not None:
                self._follower.projection.abandon()
                self._follower = None
            if self._view is not None:
                self._view.datastore.close()
                self._view = None
            for _, app in self._sources or []:
                app.close()
            self._sources = None

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.sync()
            except Exception as e:  # keep following: the core's store may be briefly locked
                self.last_error = f"{type(e).__name__}: {e}"
                log.exception("projection catch-up failed; retrying")
                self._reset()
                self._stop.wait(1.0)
                continue
            self._stop.wait(self.poll_s)

    def _reset(self) -> None:
        # Drop the half-built batch: the projection restarts from the committed position.
        with self._lock:
            if self._follower is not None:
                self._follower.projection.abandon()
            if self._view is not None:
                self._open_follower()

    # -- use --------------------------------------------------------------------------------------
    @property
    def datastore(self) -> DuckDBDatastore:
        """The open database, for readers."""
        if self._view is None:
            raise RuntimeError("the projection host is not open")
        return self._view.datastore

    def sync(self) -> CatchUp:
        """Catch up with everything the core has recorded so far (serialised with the thread)."""
        with self._lock:
            if self._follower is None:
                raise RuntimeError("the projection host is not open")
            done = self._follower.catch_up(stop=self._stop)
        self.last_error = self._layout_changed()
        return done

    def _layout_changed(self) -> str | None:
        """Why this host no longer follows the whole core, if the core's N changed (re-map)."""
        if not self._follows_layout or self._sources is None:
            return None
        now = core_partitions(self.settings)
        if now == len(self._sources):
            return None
        why = (
            f"the core now folds in {now} partition(s), this projection follows "
            f"{len(self._sources)} store(s): stop the query service, run 'shoal projections "
            "rebuild' and start it again"
        )
        if why != self.last_error:
            log.error("%s", why)
        return why

    def status(self) -> dict[str, Any]:
        """Position, rows per table, the database path and the last error."""
        # Readers only, without the catch-up lock: status answers while a catch-up runs.
        view, sources = self._view, self._sources
        if view is None or sources is None:
            raise RuntimeError("the projection host is not open")
        # Summed over the core's partitions (one source for a single core).
        parts = {}
        for name, app in sources:
            position = view.max_tracking_id(name) or 0
            parts[name] = {
                "position": position,
                "core_last_notification": app.recorder.max_notification_id() or 0,
                "behind": behind(app, position),
            }
        answer: dict[str, Any] = {
            "path": str(self.path),
            "position": sum(p["position"] for p in parts.values()),
            "core_last_notification": sum(p["core_last_notification"] for p in parts.values()),
            "behind": sum(p["behind"] for p in parts.values()),
            "tables": view.table_counts(),
            "last_error": self.last_error,
        }
        if len(parts) > 1:
            answer["partitions"] = parts
        return answer

    def swap(self, rebuilt: Path) -> None:
        """Replace the database file with ``rebuilt`` (from a rebuild) and carry on following."""
        if not rebuilt.exists():
            raise FileNotFoundError(f"no rebuilt database at {rebuilt}")
        with self._lock:
            assert self._view is not None and self._follower is not None
            self._follower.projection.abandon()
            self._view.datastore.close()
            os.replace(rebuilt, self.path)
            _remove_wal(rebuilt)
            self._open_view()


def _single(app_factory: Callable[[], Application[Any]]) -> Callable[[], list[Source]]:
    def sources() -> list[Source]:
        app = app_factory()
        return [(app.name, app)]

    return sources


def _remove_wal(path: Path) -> None:
    wal = path.with_name(path.name + ".wal")
    if wal.exists():
        wal.unlink()


def answer_locally(settings: ShoalSettings, ask: Callable[[DuckDBDatastore], T]) -> T:
    """Own the projection for one answer: open it, catch up with the core, ask, close.

    What the CLI does when no query service runs (the embedded default after ``shoal demo``):
    the answer is as fresh as the core's store. Refused (:class:`ServiceUnavailable`) when
    there is no core store here, or another process owns the database file.
    """
    core_file = settings.store_dir / f"{first_dbname(core_partitions(settings))}.sqlite"
    if settings.persistence_module == "eventsourcing.sqlite" and not core_file.exists():
        raise ServiceUnavailable(
            f"no query service answers and there is no core store at {core_file}; "
            "run 'shoal core' and 'shoal projections serve'"
        )
    host = ProjectionHost(settings)
    try:
        try:
            host.open()
            host.sync()
        except (PersistenceError, Refused) as e:
            raise ServiceUnavailable(
                f"no query service answers, and the projection here cannot be used: {e}"
            ) from e
        # The question's own refusal (a write in `shoal sql`…) is the answer: not wrapped.
        return ask(host.datastore)
    finally:
        host.close()

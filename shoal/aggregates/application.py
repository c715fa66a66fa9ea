"""The core's eventsourcing application: where Sessions, Goals, Instances and spend live.

:class:`ShoalCore` records through the library's *process recorder*, so aggregate events and
the JetStream position they came from (``Tracking``) are written in one transaction. It is
an ordinary :class:`~eventsourcing.application.Application` to readers: the projections
follow its notification log (``ShoalCore(env=application_env(settings))`` or, with the
library's projection runner, ``application_class=ShoalCore``), and the CLI reads sessions
and goals through :meth:`session`, :meth:`goal` and :meth:`sessions`.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from decimal import Decimal
from typing import Any, TypeVar
from uuid import UUID

from eventsourcing.application import AggregateNotFoundError, Application, ProcessingEvent
from eventsourcing.domain import Aggregate, DomainEventProtocol
from eventsourcing.persistence import (
    IntegrityError,
    Notification,
    ProcessRecorder,
    Transcoder,
)
from eventsourcing.utils import get_topic

from shoal.aggregates.budgets import FleetSpend, fleet_spend_id
from shoal.aggregates.cohorts import Cohorts, cohorts_id
from shoal.aggregates.goal import Goal, goal_id
from shoal.aggregates.instance import Instance, instance_id
from shoal.aggregates.persistence import application_env
from shoal.aggregates.session import Session, session_id
from shoal.aggregates.transcoder import OrjsonTranscoder
from shoal.bus import ShoalSettings
from shoal.errors import NotFound

__all__ = ["CORE_APPLICATION_NAME", "CoreLookups", "ShoalCore", "open_application", "open_core"]

CORE_APPLICATION_NAME = "ShoalCore"
"""The application's name (the PostgreSQL tables are ``shoalcore_events`` and so on)."""

_App = TypeVar("_App", bound=Application[UUID])

SNAPSHOT_EVERY = 200
"""Snapshot a Session or Goal every this many events, so a long session loads fast."""


class CoreLookups:
    """Sessions and goals by id, over whatever :meth:`find` searches (one store, or every
    partition's: :class:`~shoal.aggregates.readers.CoreReader`)."""

    def find(self, aggregate_id: UUID) -> Any | None:
        raise NotImplementedError

    def session(self, iid: str) -> Session:
        """The session with this IID; :class:`NotFound` if the core never saw it."""
        found = self.find(session_id(iid))
        if not isinstance(found, Session):
            raise NotFound(f"no session {iid!r} in the core's store")
        return found

    def goal(self, gid: str) -> Goal:
        """The goal with this GID; :class:`NotFound` if the core never saw it."""
        found = self.find(goal_id(gid))
        if not isinstance(found, Goal):
            raise NotFound(f"no goal {gid!r} in the core's store")
        return found

    def goal_sessions(self, goal: Goal) -> list[Session]:
        """Every session of a goal, in the order they appeared."""
        return [self.session(iid) for iid in goal.iids]

    def goal_cost(self, goal: Goal) -> Decimal:
        """The goal's total server-side cost: the sum of its sessions' costs."""
        return sum((s.cost_usd for s in self.goal_sessions(goal)), Decimal(0))


class ShoalCore(CoreLookups, Application[UUID]):
    """Sessions, goals, instances and fleet spend, recorded with the stream position."""

    name = CORE_APPLICATION_NAME
    is_snapshotting_enabled = True
    log_section_size = 1000

    def __init__(self, env: dict[str, str] | None = None) -> None:
        super().__init__(env)
        self.recorder: ProcessRecorder

    def construct_recorder(self) -> ProcessRecorder:
        # A process recorder accepts ``tracking=`` with the events: the atomic write that
        # makes ingestion exactly once.
        return self.factory.process_recorder()

    def construct_transcoder(self) -> Transcoder:
        # The library's format, encoded by orjson (shoal.aggregates.transcoder): the same
        # stored bytes, a fraction of the CPU per event.
        transcoder = OrjsonTranscoder()
        self.register_transcodings(transcoder)
        return transcoder

    # -- writing (used by the ingestion) ------------------------------------------------------
    def record(
        self, processing_event: ProcessingEvent[UUID], snapshot_from: dict[UUID, int]
    ) -> None:
        """Write the batch's events and tracking atomically, then take due snapshots.

        ``snapshot_from`` maps each touched aggregate to its version before the batch; a
        snapshot is taken from the in-memory aggregate when the batch crossed a multiple of
        :data:`SNAPSHOT_EVERY` (snapshots are a cache: writing them after the commit is safe).
        """
        # What Application._record does, minus building a Recording per event (unused here).
        stored = [self.mapper.to_stored_event(e) for e in processing_event.events]
        self.recorder.insert_events(stored, tracking=processing_event.tracking)
        assert self.snapshots is not None
        snapshots = []
        for aggregate_id, before in snapshot_from.items():
            aggregate = processing_event.aggregates.get(aggregate_id)
            if aggregate is None or not isinstance(aggregate, Session | Goal | Cohorts):
                continue
            if aggregate.version // SNAPSHOT_EVERY > before // SNAPSHOT_EVERY:
                snapshots.append(Aggregate.Snapshot.take(aggregate))
        if snapshots:
            self.snapshots.put(snapshots)

    def max_tracking_id(self, upstream: str) -> int:
        """The last stream sequence recorded from ``upstream`` (0 if none)."""
        return self.recorder.max_tracking_id(upstream) or 0

    # -- reading ----------------------------------------------------------------------------
    def find(self, aggregate_id: UUID) -> Any | None:
        """An aggregate by id, or ``None``."""
        try:
            return self.repository.get(aggregate_id)
        except AggregateNotFoundError:
            return None

    def notifications(
        self, topics: Sequence[str], batch: int = 1000
    ) -> Iterator[tuple[Notification, DomainEventProtocol[UUID]]]:
        """Every recorded event of the given topics, decoded, in recording order."""
        start = 1
        while True:
            page = self.notification_log.select(start=start, limit=batch, topics=topics)
            for n in page:
                yield n, self.mapper.to_domain_event(n)
            if len(page) < batch:
                return
            start = page[-1].id + 1

    def session_iids(self) -> list[str]:
        """The IID of every session, oldest first."""
        topic = get_topic(Session.Opened)
        return [e.iid for _, e in self.notifications([topic])]  # type: ignore[attr-defined]

    def sessions(self) -> list[Session]:
        """Every session (loaded from snapshots and events), oldest first."""
        return [self.session(iid) for iid in self.session_iids()]

    def instance(self, instance: str) -> Instance | None:
        """The registered instance with this id, or ``None``."""
        found = self.find(instance_id(instance))
        return found if isinstance(found, Instance) else None

    def cohorts(self, fleet: str, agent: str) -> Cohorts | None:
        """The agent's outcome counts per version and verdicts, or ``None`` (no outcome yet)."""
        found = self.find(cohorts_id(fleet, agent))
        return found if isinstance(found, Cohorts) else None

    def fleet_spend(self, fleet: str) -> FleetSpend | None:
        """The fleet's spend record (created at its first budget crossing), or ``None``."""
        found = self.find(fleet_spend_id(fleet))
        return found if isinstance(found, FleetSpend) else None


def open_core(
    settings: ShoalSettings, *, dbname: str = "core", part: str | None = None
) -> ShoalCore:
    """The core application on the persistence the settings name (SQLite file or PostgreSQL);
    with ``part`` (``p0of2``), one core partition's store.

    Two processes opening a fresh store at once (the core starting, a CLI reading) both
    create its tables; the loser of that race sees an integrity error and simply retries.
    """
    return open_application(ShoalCore, application_env(settings, dbname, part))


def open_application(cls: type[_App], env: dict[str, str]) -> _App:
    """``cls(env=env)``, retried when another process creates the same tables at once."""
    for attempt in range(3):
        try:
            return cls(env=env)
        except IntegrityError:
            if attempt == 2:
                raise
            time.sleep(0.05 * (attempt + 1))
    raise AssertionError("unreachable")

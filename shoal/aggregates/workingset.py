"""The core's working set: the aggregates a fold touches, held in memory between batches.

Recently used sessions (an LRU of ``cache_size``), goals and the IIDs listed on them,
registered instances, fleet spend records, outcome cohorts per agent, which IIDs and GIDs
exist at all, running sessions with the time of their last event (the watchdog's input)
and spend totals. It is rebuilt from the store at start and after any failed batch
(:meth:`WorkingSet.load`), so what is in memory is always what the store holds plus the
batch being folded.

Every aggregate a step changes is handed to :meth:`WorkingSet.collect`, which appends its
new events to the batch in the order they happened (the notification log then keeps the
stream's order).
"""

from __future__ import annotations

from collections import OrderedDict
from datetime import datetime
from typing import Any
from uuid import UUID

from eventsourcing.domain import Aggregate
from eventsourcing.utils import get_topic

from shoal.aggregates.application import ShoalCore
from shoal.aggregates.batch import FoldResult
from shoal.aggregates.budgets import FleetSpend, SpendTotals
from shoal.aggregates.cohorts import Cohorts, cohorts_id
from shoal.aggregates.fold import open_session
from shoal.aggregates.goal import Goal, goal_id
from shoal.aggregates.instance import Instance
from shoal.aggregates.session import Session, session_id
from shoal.schemas import CloudEvent

__all__ = ["WorkingSet"]

_RUNNING_TOPICS = {
    get_topic(Session.Opened): "open",
    get_topic(Session.TaskStarted): "running",
    get_topic(Session.TaskCompleted): "ended",
    get_topic(Session.Closed): "ended",
    get_topic(Session.Killed): "ended",
}


class WorkingSet:
    """Aggregates in memory, loaded on demand from the core's store."""

    def __init__(self, app: ShoalCore, cache_size: int = 20_000) -> None:
        self.app = app
        self.cache_size = cache_size
        self.load()

    # -- lifecycle ------------------------------------------------------------------------------
    def load(self) -> None:
        """Forget everything and rebuild the indexes from the store."""
        self.sessions: OrderedDict[str, Session] = OrderedDict()
        self.goals: dict[str, Goal] = {}
        self.goal_iids: dict[str, set[str]] = {}
        self.instances: dict[str, Instance] = {}
        self.fleet_spend: dict[str, FleetSpend] = {}
        self.cohorts: dict[tuple[str, str], Cohorts] = {}
        self.known_iids: set[str] = set()
        self.known_gids: set[str] = set()
        self.totals = SpendTotals()
        self.active: dict[str, datetime] = {}
        self.batch = FoldResult()
        self._warm_up()

    def begin(self, result: FoldResult) -> None:
        """Collect into ``result`` from now on."""
        self.batch = result

    def trim(self) -> None:
        """Drop the least recently used sessions beyond the cache size (after a commit)."""
        while len(self.sessions) > self.cache_size:
            self.sessions.popitem(last=False)

    def _warm_up(self) -> None:
        topics = [
            get_topic(Session.ModelCalled),
            get_topic(Goal.Opened),
            get_topic(Instance.Registered),
            *_RUNNING_TOPICS,
        ]
        opened, model_called = get_topic(Session.Opened), get_topic(Session.ModelCalled)
        goal_opened, registered = get_topic(Goal.Opened), get_topic(Instance.Registered)
        iid_of: dict[UUID, str] = {}
        for n, e in self.app.notifications(topics):
            ev: Any = e
            if n.topic == model_called:
                self.totals.add(ev.gid, ev.fleet, ev.cost_usd)
            elif n.topic == goal_opened:
                self.known_gids.add(ev.gid)
            elif n.topic == registered:
                instance = self.app.instance(ev.instance)
                if instance is not None:
                    self.instances[ev.instance] = instance
            else:
                if n.topic == opened:
                    self.known_iids.add(ev.iid)
                    iid_of[e.originator_id] = ev.iid
                iid = iid_of.get(e.originator_id)
                if iid is None:
                    continue
                state = _RUNNING_TOPICS[n.topic]
                if state == "ended":
                    self.active.pop(iid, None)
                elif state == "running":
                    self.active[iid] = ev.timestamp
        for spend_fleet in list(self.totals.fleets):
            spend = self.app.fleet_spend(spend_fleet)
            if spend is not None:
                self.fleet_spend[spend_fleet] = spend

    # -- sessions -------------------------------------------------------------------------------
    def has_session(self, iid: str) -> bool:
        """True when a session with this IID exists (in memory or in the store)."""
        return iid in self.sessions or iid in self.known_iids

    def session(self, ev: CloudEvent, seq: int) -> Session:
        """The event's session, opened by this event if its IID is new."""
        s = self.sessions.get(ev.iid)
        if s is not None:
            self.sessions.move_to_end(ev.iid)
            self.batch.snapshot_from.setdefault(s.id, s.version)
            return s
        if ev.iid in self.known_iids:
            s = self._load_session(ev.iid)
        else:
            s = open_session(ev, seq)
            self.known_iids.add(ev.iid)
            self.batch.snapshot_from.setdefault(s.id, 0)
            if ev.parentiid and not ev.gid:
                # A child with a GID is listed (with its parent) on the Goal; only a bare
                # task's children need recording on the parent itself.
                self._child_of(ev.parentiid, ev.iid, seq, ev.time)
        self.sessions[ev.iid] = s
        self.batch.snapshot_from.setdefault(s.id, s.version)
        return s

    def _load_session(self, iid: str) -> Session:
        loaded = self.app.find(session_id(iid))
        assert isinstance(loaded, Session)
        return loaded

    def _child_of(self, parentiid: str, iid: str, seq: int, at: datetime) -> None:
        parent = self.sessions.get(parentiid)
        if parent is None and parentiid in self.known_iids:
            parent = self.sessions[parentiid] = self._load_session(parentiid)
        if parent is not None:
            self.batch.snapshot_from.setdefault(parent.id, parent.version)
            parent.child_added(seq, iid, timestamp=at)
            self.collect(parent)

    def cached_session(self, iid: str) -> Session | None:
        """The in-memory session, if held."""
        return self.sessions.get(iid)

    # -- goals ----------------------------------------------------------------------------------
    def goal(self, gid: str, seq: int, at: datetime) -> Goal:
        """The goal with this GID, opened now if new."""
        g = self.goals.get(gid)
        if g is None:
            if gid in self.known_gids:
                loaded = self.app.find(goal_id(gid))
                assert isinstance(loaded, Goal)
                g = loaded
            else:
                g = Goal(gid=gid, seq=seq, timestamp=at)
                self.known_gids.add(gid)
            self.goals[gid] = g
        self.batch.snapshot_from.setdefault(g.id, g.version)
        return g

    def iids_of_goal(self, gid: str, seq: int, at: datetime) -> set[str]:
        """The IIDs listed on the goal (cached as a set)."""
        iids = self.goal_iids.get(gid)
        if iids is None:
            iids = self.goal_iids[gid] = set(self.goal(gid, seq, at).iids)
        return iids

    # -- fleets ---------------------------------------------------------------------------------
    def spend_of(self, fleet: str, at: datetime) -> FleetSpend:
        """The fleet's spend record, created at its first need."""
        spend = self.fleet_spend.get(fleet) or self.app.fleet_spend(fleet)
        if spend is None:
            spend = FleetSpend(fleet=fleet, timestamp=at)
        self.fleet_spend[fleet] = spend
        return spend

    def cohorts_of(self, fleet: str, agent: str, at: datetime) -> Cohorts:
        """The agent's outcome counts per version, created at its first outcome."""
        c = self.cohorts.get((fleet, agent))
        if c is None:
            found = self.app.find(cohorts_id(fleet, agent))
            c = (
                found
                if isinstance(found, Cohorts)
                else Cohorts(fleet=fleet, agent=agent, timestamp=at)
            )
            self.cohorts[(fleet, agent)] = c
        self.batch.snapshot_from.setdefault(c.id, c.version)
        return c

    # -- the batch ------------------------------------------------------------------------------
    def collect(self, aggregate: Aggregate) -> None:
        """Append ``aggregate``'s new events to the batch, keeping the stream's order.

        (What ProcessingEvent.collect_events does, minus its runtime-protocol isinstance
        checks, which cost more than the rest of the fold.)
        """
        pending = aggregate.collect_events()
        if pending:
            self.batch.processing.events.extend(pending)
        self.batch.processing.aggregates[aggregate.id] = aggregate

    def note_activity(self, s: Session, at: datetime) -> None:
        """Track whether ``s`` runs, for the stuck-session watchdog."""
        if s.ended:
            self.active.pop(s.iid, None)
        elif s.status == "running":
            self.active[s.iid] = at

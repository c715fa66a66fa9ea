"""The synchronous half of ingestion: fold a batch of stream messages into aggregates.

:class:`CoreProcessor` owns the in-memory working set (recently used sessions, goals,
instances, spend totals). :meth:`CoreProcessor.fold` turns one batch of raw messages into
one :class:`~eventsourcing.application.ProcessingEvent` (every new aggregate event plus one
``Tracking`` = the batch's last stream sequence) and a list of side effects (dead letters,
budget crossings, flags) for the async half to carry out *before* the write is committed.
If anything fails between fold and commit, :meth:`reset` drops the working set: aggregates
held in memory are then exactly what the store holds again.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any
from uuid import UUID

from eventsourcing.application import ProcessingEvent
from eventsourcing.domain import Aggregate
from eventsourcing.persistence import Tracking
from eventsourcing.utils import get_topic

from shoal.aggregates.application import ShoalCore
from shoal.aggregates.budgets import BudgetCrossing, FleetSpend, SpendTotals
from shoal.aggregates.fold import apply_event, open_session
from shoal.aggregates.goal import Goal, goal_id
from shoal.aggregates.instance import Instance
from shoal.aggregates.pricing import PriceTable
from shoal.aggregates.session import Session, session_id
from shoal.bus import Subjects
from shoal.errors import InvalidEvent, InvalidName
from shoal.schemas import (
    AgentKilled,
    AgentStarted,
    AgentStopped,
    BudgetExceeded,
    CloudEvent,
    GoalCompleted,
    GoalFailed,
    GoalPlanned,
    GoalSubmitted,
    OutcomeReported,
    ToolCalled,
    parse_event,
)

__all__ = ["CoreProcessor", "DeadLetter", "Flag", "FoldResult", "PoisonMessage", "RawMessage"]

CORE_SOURCE = "shoal://core"
_TRUSTED_PREFIXES = (CORE_SOURCE, "shoal://cli/")
_GOAL_TYPES = frozenset(
    {
        GoalSubmitted.type,
        GoalPlanned.type,
        GoalCompleted.type,
        GoalFailed.type,
        OutcomeReported.type,
        BudgetExceeded.type,
    }
)
_RUNNING_TOPICS = {
    get_topic(Session.Opened): "open",
    get_topic(Session.TaskStarted): "running",
    get_topic(Session.TaskCompleted): "ended",
    get_topic(Session.Closed): "ended",
    get_topic(Session.Killed): "ended",
}


@dataclass(frozen=True)
class RawMessage:
    """One message as fetched: stream sequence, subject, payload."""

    seq: int
    subject: str
    data: bytes


class PoisonMessage(Exception):
    """A valid-looking message the fold raised on (a bug): it will be dead-lettered."""

    def __init__(self, seq: int, reason: str) -> None:
        super().__init__(f"#{seq}: {reason}")
        self.seq, self.reason = seq, reason


@dataclass(frozen=True)
class DeadLetter:
    """A message that failed validation, and why."""

    seq: int
    subject: str
    data: bytes
    reason: str


@dataclass(frozen=True)
class Flag:
    """A session the core found looping (published as ``session.flagged``)."""

    iid: str
    gid: str | None
    flag: str
    reason: str
    seq: int

    @property
    def event_id(self) -> str:
        return f"core-flag-{self.flag}-{self.iid}"


@dataclass
class FoldResult:
    """What one batch produced."""

    processing: ProcessingEvent[UUID]
    snapshot_from: dict[UUID, int]
    dead_letters: list[DeadLetter] = field(default_factory=list)
    crossings: list[BudgetCrossing] = field(default_factory=list)
    flags: list[Flag] = field(default_factory=list)
    applied: int = 0
    rejected: int = 0
    skipped: int = 0


@dataclass
class CoreLimits:
    """Loop-detection thresholds (from settings)."""

    loop_repeats: int = 5
    loop_model_calls: int = 25


class CoreProcessor:
    """Folds batches of raw event-log messages into the core's aggregates."""

    def __init__(
        self,
        app: ShoalCore,
        prices: PriceTable,
        subjects: Subjects,
        upstream: str,
        limits: CoreLimits | None = None,
        cache_size: int = 20_000,
    ) -> None:
        self.app = app
        self.prices = prices
        self.subjects = subjects
        self.upstream = upstream
        self.limits = limits or CoreLimits()
        self.cache_size = cache_size
        # Messages the fold raised on, by sequence, with the reason: folded again, the batch
        # dead-letters them instead of failing forever on the same message.
        self.poisoned: dict[int, str] = {}
        self.reset()

    # -- working set ---------------------------------------------------------------------------
    def reset(self) -> None:
        """Forget everything held in memory and rebuild it from the store."""
        self._sessions: OrderedDict[str, Session] = OrderedDict()
        self._batch = FoldResult(ProcessingEvent(), {})
        self._goals: dict[str, Goal] = {}
        self._goal_iids: dict[str, set[str]] = {}
        self._instances: dict[str, Instance] = {}
        self._fleet_spend: dict[str, FleetSpend] = {}
        self.known_iids: set[str] = set()
        self.known_gids: set[str] = set()
        self.totals = SpendTotals()
        # Running sessions, with the time of their last event (the watchdog's input).
        self.active: dict[str, datetime] = {}
        self.position = self.app.max_tracking_id(self.upstream)
        self._warm_up()

    def _warm_up(self) -> None:
        topics = [
            get_topic(Session.ModelCalled),
            get_topic(Goal.Opened),
            get_topic(Instance.Registered),
            *_RUNNING_TOPICS,
        ]
        opened, model_called = get_topic(Session.Opened), get_topic(Session.ModelCalled)
        iid_of: dict[UUID, str] = {}
        for n, e in self.app.notifications(topics):
            ev: Any = e
            if n.topic == model_called:
                self.totals.add(ev.gid, ev.fleet, ev.cost_usd)
            elif n.topic == get_topic(Goal.Opened):
                self.known_gids.add(ev.gid)
            elif n.topic == get_topic(Instance.Registered):
                instance = self.app.instance(ev.instance)
                if instance is not None:
                    self._instances[ev.instance] = instance
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
                self._fleet_spend[spend_fleet] = spend

    # -- the fold ---------------------------------------------------------------------------
    def fold(self, batch: list[RawMessage]) -> FoldResult:
        """Fold a batch sorted by sequence; what is at or below :attr:`position` is skipped."""
        result = FoldResult(ProcessingEvent(), {})
        self._batch = result
        last = self.position
        for msg in batch:
            # At or below the recorded position, or a redelivered copy inside this batch.
            if msg.seq <= last:
                result.skipped += 1
                continue
            last = msg.seq
            poisoned = self.poisoned.get(msg.seq)
            if poisoned is not None:
                result.dead_letters.append(DeadLetter(msg.seq, msg.subject, msg.data, poisoned))
                continue
            try:
                self._fold_one(msg, result)
            except Exception as e:
                raise PoisonMessage(
                    msg.seq, f"the core failed on it: {type(e).__name__}: {e}"
                ) from e
        if last > self.position:
            result.processing.tracking = Tracking(self.upstream, last)
        return result

    def committed(self, result: FoldResult) -> None:
        """The batch is in the store: advance the position."""
        if result.processing.tracking is not None:
            self.position = result.processing.tracking.notification_id
        while len(self._sessions) > self.cache_size:
            self._sessions.popitem(last=False)

    def _fold_one(self, msg: RawMessage, result: FoldResult) -> None:
        try:
            ev = parse_event(msg.data)
            self._check_subject(msg.subject, ev)
        except (InvalidEvent, InvalidName) as e:
            result.dead_letters.append(DeadLetter(msg.seq, msg.subject, msg.data, str(e)))
            return
        reason = self._distrust(ev)
        if reason is not None:
            s = self._session(ev, msg.seq)
            s.trigger_event(
                Session.EventRejected,
                seq=msg.seq,
                event_id=ev.id,
                type=ev.type,
                source=ev.source,
                instance=ev.instance,
                reason=reason,
                timestamp=ev.time,
            )
            self._collect(s)
            result.rejected += 1
            return
        self._apply(ev, msg.seq, result)
        result.applied += 1

    def _check_subject(self, subject: str, ev: CloudEvent) -> None:
        parts = self.subjects.parse_event(subject)
        if parts.iid != ev.iid or parts.gid != ev.gid or parts.short_type != ev.short_type:
            raise InvalidEvent(
                f"subject {subject!r} does not match the event "
                f"(iid {ev.iid!r}, gid {ev.gid!r}, type {ev.type!r})"
            )
        # Attribution: the broker let only the holder of this identity publish this subject.
        wrong = self.subjects.misattributed(
            parts.publisher, ev.source, ev.fleet, ev.agent, ev.instance
        )
        if wrong is not None:
            raise InvalidEvent(f"forged attribution: {wrong}")

    def _distrust(self, ev: CloudEvent) -> str | None:
        """Why the core refuses this event, or ``None`` if it is believed."""
        if ev.source.startswith(_TRUSTED_PREFIXES):
            return None
        if not ev.instance:
            return f"source {ev.source!r} is neither an instance, the CLI nor the core"
        known = self._instances.get(ev.instance)
        if ev.type == AgentStarted.type:
            return (
                "instance was killed; a killed id cannot start again"
                if (known is not None and not known.trusted)
                else None
            )
        if known is None:
            return f"unknown instance {ev.instance!r} (no agent.started seen)"
        if not known.trusted:
            return f"instance {ev.instance!r} was killed"
        return None

    # -- applying ---------------------------------------------------------------------------
    def _apply(self, ev: CloudEvent, seq: int, result: FoldResult) -> None:
        t = ev.type
        if t in (AgentStarted.type, AgentStopped.type, AgentKilled.type):
            if ev.instance:  # an agent event naming no instance has nothing to apply to
                self._instance_event(ev, seq)
            return
        s = self._session(ev, seq)
        if ev.gid and (t in _GOAL_TYPES or ev.iid not in self._iids_of_goal(ev.gid, seq, ev)):
            self._goal_event(ev, seq)
        cost = apply_event(s, ev, seq, self.prices)
        if cost is not None:
            self._spent(s, ev, seq, cost, result)
        elif t == ToolCalled.type:
            self._check_repeats(s, ev, seq, result)
        if s.ended:
            self.active.pop(s.iid, None)
        elif s.status == "running":
            self.active[s.iid] = ev.time
        self._collect(s)

    def _session(self, ev: CloudEvent, seq: int) -> Session:
        s = self._sessions.get(ev.iid)
        if s is not None:
            self._sessions.move_to_end(ev.iid)
            self._batch.snapshot_from.setdefault(s.id, s.version)
            return s
        if ev.iid in self.known_iids:
            loaded = self.app.find(session_id(ev.iid))
            assert isinstance(loaded, Session)
            s = loaded
        else:
            s = open_session(ev, seq)
            self.known_iids.add(ev.iid)
            self._batch.snapshot_from.setdefault(s.id, 0)
            if ev.parentiid and not ev.gid:
                # A child with a GID is listed (with its parent) on the Goal; only a bare
                # task's children need recording on the parent itself.
                self._child_of(ev.parentiid, ev.iid, seq, ev.time)
        self._sessions[ev.iid] = s
        self._batch.snapshot_from.setdefault(s.id, s.version)
        return s

    def _child_of(self, parentiid: str, iid: str, seq: int, at: datetime) -> None:
        parent = self._sessions.get(parentiid)
        if parent is None and parentiid in self.known_iids:
            loaded = self.app.find(session_id(parentiid))
            assert isinstance(loaded, Session)
            parent = self._sessions[parentiid] = loaded
        if parent is not None:
            self._batch.snapshot_from.setdefault(parent.id, parent.version)
            parent.child_added(seq, iid, timestamp=at)
            self._collect(parent)

    def _goal(self, gid: str, seq: int, at: datetime) -> Goal:
        g = self._goals.get(gid)
        if g is None:
            if gid in self.known_gids:
                loaded = self.app.find(goal_id(gid))
                assert isinstance(loaded, Goal)
                g = loaded
            else:
                g = Goal(gid=gid, seq=seq, timestamp=at)
                self.known_gids.add(gid)
            self._goals[gid] = g
        self._batch.snapshot_from.setdefault(g.id, g.version)
        return g

    def _iids_of_goal(self, gid: str, seq: int, ev: CloudEvent) -> set[str]:
        iids = self._goal_iids.get(gid)
        if iids is None:
            iids = self._goal_iids[gid] = set(self._goal(gid, seq, ev.time).iids)
        return iids

    def _goal_event(self, ev: CloudEvent, seq: int) -> None:
        assert ev.gid is not None
        g = self._goal(ev.gid, seq, ev.time)
        d = ev.data
        iids = self._iids_of_goal(ev.gid, seq, ev)
        if ev.iid not in iids:
            g.session_added(seq, ev.iid, ev.parentiid, timestamp=ev.time)
            iids.add(ev.iid)
        if isinstance(d, GoalSubmitted):
            g.submitted(
                seq,
                d.fleet,
                d.text,
                ev.principal,
                ev.iid,
                d.budget_usd,
                ev.source,
                timestamp=ev.time,
            )
        elif isinstance(d, GoalPlanned):
            tasks = [{"iid": t.iid, "capability": t.capability} for t in d.tasks]
            g.planned(seq, tasks, timestamp=ev.time)
        elif isinstance(d, GoalCompleted):
            g.completed(seq, d.summary[:500], timestamp=ev.time)
        elif isinstance(d, GoalFailed):
            g.failed(seq, d.reason[:500], list(d.failed_iids), timestamp=ev.time)
        elif isinstance(d, OutcomeReported):
            g.outcome_reported(seq, ev.iid, d.outcome, d.signal, timestamp=ev.time)
        elif isinstance(d, BudgetExceeded) and d.scope == "goal" and not g.budget_exceeded:
            g.record_budget_exceeded(seq, d.budget_usd, d.spent_usd, timestamp=ev.time)
        self._collect(g)

    def _instance_event(self, ev: CloudEvent, seq: int) -> None:
        assert ev.instance is not None
        known = self._instances.get(ev.instance)
        d = ev.data
        if isinstance(d, AgentStarted):
            if known is None:
                known = Instance(
                    instance=ev.instance,
                    fleet=ev.fleet,
                    agent=ev.agent,
                    version=d.version,
                    capabilities=list(d.capabilities),
                    host=d.host,
                    pid=d.pid,
                    seq=seq,
                    timestamp=ev.time,
                )
                self._instances[ev.instance] = known
            else:
                known.restarted(
                    seq, d.version, list(d.capabilities), d.host, d.pid, timestamp=ev.time
                )
        elif known is None:
            if not isinstance(d, AgentKilled):
                return
            # A kill for an instance the core never saw start: remember it, so it cannot start.
            known = Instance(
                instance=ev.instance,
                fleet=ev.fleet,
                agent=ev.agent,
                version="",
                capabilities=[],
                host="",
                pid=0,
                seq=seq,
                timestamp=ev.time,
            )
            self._instances[ev.instance] = known
            known.killed(seq, d.by, d.reason, timestamp=ev.time)
        elif isinstance(d, AgentStopped):
            known.stopped(seq, d.reason, timestamp=ev.time)
        elif isinstance(d, AgentKilled) and known.trusted:
            known.killed(seq, d.by, d.reason, timestamp=ev.time)
        self._collect(known)

    # -- budgets and loops --------------------------------------------------------------------
    def _spent(
        self, s: Session, ev: CloudEvent, seq: int, cost: Decimal, result: FoldResult
    ) -> None:
        gid, fleet = s.gid or ev.gid, s.fleet or ev.fleet
        self.totals.add(gid, fleet, cost)

        def crossing(scope: Any, key: str, budget: Decimal, spent: Decimal) -> None:
            result.crossings.append(
                BudgetCrossing(scope, key, budget, spent, seq, s.iid, gid, fleet)
            )

        if s.budget_usd is not None and not s.budget_exceeded and s.cost_usd > s.budget_usd:
            s.record_budget_exceeded(
                seq, "session", s.iid, s.budget_usd, s.cost_usd, timestamp=ev.time
            )
            crossing("session", s.iid, s.budget_usd, s.cost_usd)
        if gid:
            g = self._goal(gid, seq, ev.time)
            spent = self.totals.goals[gid]
            if g.budget_usd is not None and not g.budget_exceeded and spent > g.budget_usd:
                g.record_budget_exceeded(seq, g.budget_usd, spent, timestamp=ev.time)
                self._collect(g)
                crossing("goal", gid, g.budget_usd, spent)
        cap = self.prices.fleet_budgets.get(fleet) if fleet else None
        if fleet and cap is not None and self.totals.fleets[fleet] > cap:
            spend = self._fleet_spend.get(fleet) or self.app.fleet_spend(fleet)
            if spend is None:
                spend = FleetSpend(fleet=fleet, timestamp=ev.time)
            self._fleet_spend[fleet] = spend
            if not spend.budget_exceeded:
                spent = self.totals.fleets[fleet]
                spend.record_budget_exceeded(seq, cap, spent, timestamp=ev.time)
                self._collect(spend)
                crossing("fleet", fleet, cap, spent)
        if s.calls_since_progress >= self.limits.loop_model_calls:
            self._flag(s, ev, seq, f"{s.calls_since_progress} model calls without progress", result)

    def _check_repeats(self, s: Session, ev: CloudEvent, seq: int, result: FoldResult) -> None:
        d = ev.data
        assert isinstance(d, ToolCalled)
        last = s.pending_events[-1] if s.pending_events else None
        signature = getattr(last, "signature", None)
        repeats = s.tool_signatures.get(signature, 0) if signature else 0
        if repeats >= self.limits.loop_repeats:
            reason = f"tool {d.tool} called {repeats}x with the same arguments"
            self._flag(s, ev, seq, reason, result)

    def _flag(self, s: Session, ev: CloudEvent, seq: int, reason: str, result: FoldResult) -> None:
        if "looping" in s.flags:
            return
        s.flagged(seq, "looping", reason, timestamp=ev.time)
        result.flags.append(Flag(s.iid, s.gid, "looping", reason, seq))

    def _collect(self, aggregate: Aggregate) -> None:
        # Collect after every bus event, so the notification log keeps the stream's order.
        # (What ProcessingEvent.collect_events does, minus its runtime-protocol isinstance
        # checks, which cost more than the rest of the fold.)
        pending = aggregate.collect_events()
        if pending:
            self._batch.processing.events.extend(pending)
        self._batch.processing.aggregates[aggregate.id] = aggregate

    # -- queries for the watchdog -------------------------------------------------------------
    def silent_since(self, older_than: datetime) -> list[str]:
        """IIDs of running sessions whose last event is before ``older_than``."""
        return [iid for iid, at in self.active.items() if at < older_than]

    def forget_silent(self, iid: str) -> None:
        """Stop watching a session until its next event (flagged, or found not running)."""
        self.active.pop(iid, None)

    def cached_session(self, iid: str) -> Session | None:
        """The in-memory session, if held."""
        return self._sessions.get(iid)

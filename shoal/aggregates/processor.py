"""The synchronous half of ingestion: fold a batch of stream messages into aggregates.

:meth:`CoreProcessor.fold` turns one batch of raw messages into one
:class:`~eventsourcing.application.ProcessingEvent` (every new aggregate event plus one
``Tracking`` = the batch's last stream sequence) and a list of side effects (dead letters,
budget crossings, flags) for the async half to carry out *before* the write is committed.
If anything fails between fold and commit, :meth:`reset` reloads the working set: aggregates
held in memory are then exactly what the store holds again.

Each message goes through the same steps, in order:

1. **parse** it and check its subject (:mod:`~shoal.aggregates.trust`) — else dead-letter;
2. **trust** its sender — else record the refusal on its session, or dead-letter it when it
   belongs to no session (a refused event never opens one);
3. **route**: instance lifecycle events go to the registry (:mod:`~shoal.aggregates.registry`);
   an event that only refers to a session (kill, flag, outcome, budget) needs one that exists
   — only interactions open sessions;
4. **fold** into the goal (:mod:`~shoal.aggregates.goals`) and the session
   (:mod:`~shoal.aggregates.fold`);
5. **charge** a model call's cost against the budgets (:mod:`~shoal.aggregates.spending`);
6. **watch** for loops (:mod:`~shoal.aggregates.loops`) and note activity for the watchdog;
7. **evaluate**: a session that ended counts for its instance's version, and the comparison
   the fleet's desired state calls for is judged (:mod:`~shoal.aggregates.evaluate`).

``evaluation.*`` events are the core's own verdicts coming back from the log: recorded
already (on :class:`~shoal.aggregates.cohorts.Cohorts`), they change nothing; from any
other source they are dead-lettered.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from eventsourcing.persistence import Tracking

from shoal.aggregates.application import ShoalCore
from shoal.aggregates.batch import (
    CoreLimits,
    DeadLetter,
    Flag,
    FoldResult,
    PoisonMessage,
    RawMessage,
)
from shoal.aggregates.comparisons import Comparison
from shoal.aggregates.evaluate import OUTCOME_TYPES, evaluate
from shoal.aggregates.fold import apply_event
from shoal.aggregates.goals import apply_goal_event, touches_goal
from shoal.aggregates.loops import after_model_call, after_tool_call
from shoal.aggregates.partitions import Owner, Partition
from shoal.aggregates.pricing import PriceTable
from shoal.aggregates.registry import LIFECYCLE_TYPES, apply_lifecycle
from shoal.aggregates.session import Session
from shoal.aggregates.spending import charge
from shoal.aggregates.trust import CORE_SOURCE, check_subject, distrust
from shoal.aggregates.workingset import WorkingSet
from shoal.bus import Subjects
from shoal.errors import InvalidEvent, InvalidName
from shoal.schemas import (
    BudgetExceeded,
    CloudEvent,
    EvaluationPassed,
    EvaluationRegressed,
    OutcomeReported,
    SessionFlagged,
    SessionKilled,
    SessionMessage,
    ToolCalled,
)
from shoal.schemas.decode import decode_event

__all__ = [
    "CORE_SOURCE",
    "CoreLimits",
    "CoreProcessor",
    "DeadLetter",
    "Flag",
    "FoldResult",
    "PoisonMessage",
    "RawMessage",
]

REFERRING_TYPES = frozenset(
    {
        SessionKilled.type,
        SessionFlagged.type,
        SessionMessage.type,
        BudgetExceeded.type,
        OutcomeReported.type,
    }
)
"""Types that say something about an existing session and never open one."""

EVALUATION_TYPES = frozenset({EvaluationRegressed.type, EvaluationPassed.type})
"""The core's verdicts (source ``shoal://core`` only): never a session."""


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
        partition: Partition | None = None,
    ) -> None:
        self.app = app
        # None: the whole log is this core's (one partition, today's behaviour).
        self.partition = partition
        self._owners: dict[str, Owner] = {}
        self.prices = prices
        self.subjects = subjects
        self.upstream = upstream
        self.limits = limits or CoreLimits()
        # Messages the fold raised on, by sequence, with the reason: folded again, the batch
        # dead-letters them instead of failing forever on the same message.
        self.poisoned: dict[int, str] = {}
        # Fleet spend caps: the price table's, overridden by fleet specs' (kept by FleetCaps).
        self.fleet_caps: dict[str, Decimal] = dict(prices.fleet_budgets)
        # What to compare per (fleet, agent), from desired state (kept by FleetComparisons).
        self.comparisons: dict[tuple[str, str], Comparison] = {}
        self.ws = WorkingSet(app, cache_size)
        self.position = app.max_tracking_id(upstream)

    def reset(self) -> None:
        """Forget everything held in memory and rebuild it from the store."""
        self.ws.load()
        self.position = self.app.max_tracking_id(self.upstream)

    # -- the fold ---------------------------------------------------------------------------
    def fold(self, batch: list[RawMessage]) -> FoldResult:
        """Fold a batch sorted by sequence; what is at or below :attr:`position` is skipped."""
        result = FoldResult()
        self.ws.begin(result)
        last = self.position
        for msg in batch:
            # At or below the recorded position, or a redelivered copy inside this batch.
            if msg.seq <= last:
                result.skipped += 1
                continue
            last = msg.seq
            owner = Owner.MINE if self.partition is None else self._owner(msg.subject)
            if owner is Owner.FOREIGN:
                result.foreign += 1  # another partition's: its seq still advances tracking
                continue
            letters = len(result.dead_letters)
            poisoned = self.poisoned.get(msg.seq)
            if poisoned is not None:
                result.dead_letters.append(DeadLetter(msg.seq, msg.subject, msg.data, poisoned))
            else:
                try:
                    self._fold_one(msg, result)
                except Exception as e:
                    raise PoisonMessage(
                        msg.seq, f"the core failed on it: {type(e).__name__}: {e}"
                    ) from e
            if owner is Owner.SHARED and not self._primary:
                del result.dead_letters[letters:]  # partition 0 sends a shared event's letters
        if last > self.position:
            result.processing.tracking = Tracking(self.upstream, last)
        return result

    def advance(self, seq: int) -> FoldResult:
        """Nothing of this partition's is in the log up to ``seq``: record that as folded.

        A partition's consumer receives only its share, so a quiet partition would keep an
        old position while the others move on (and hold the spend aggregator's watermark).
        """
        result = FoldResult()
        if seq > self.position:
            result.processing.tracking = Tracking(self.upstream, seq)
        return result

    @property
    def _primary(self) -> bool:
        return self.partition is None or self.partition.primary

    def _owner(self, subject: str) -> Owner:
        assert self.partition is not None
        owner = self._owners.get(subject)
        if owner is None:
            if len(self._owners) >= 100_000:
                self._owners.clear()
            owner = self._owners[subject] = self.partition.owner(subject)
        return owner

    def committed(self, result: FoldResult) -> None:
        """The batch is in the store: advance the position."""
        if result.processing.tracking is not None:
            self.position = result.processing.tracking.notification_id
        self.ws.trim()

    def _fold_one(self, msg: RawMessage, result: FoldResult) -> None:
        # 1. parse
        try:
            ev = decode_event(msg.data)
            check_subject(self.subjects, msg.subject, ev)
        except (InvalidEvent, InvalidName) as e:
            result.dead_letters.append(DeadLetter(msg.seq, msg.subject, msg.data, str(e)))
            return
        # 2. trust
        reason = distrust(ev, self.ws.instances)
        if reason is not None:
            self._refuse(msg, ev, reason, result)
            return
        # 3. route
        if ev.type in LIFECYCLE_TYPES:
            apply_lifecycle(self.ws, ev, msg.seq)
        elif ev.type in EVALUATION_TYPES:
            if ev.source != CORE_SOURCE:
                why = f"{ev.type} is recorded by the core only, not {ev.source!r}"
                result.dead_letters.append(DeadLetter(msg.seq, msg.subject, msg.data, why))
                return
        elif ev.type in REFERRING_TYPES and not self.ws.has_session(ev.iid):
            why = f"{ev.type} names session {ev.iid!r}, which the core has never seen"
            result.dead_letters.append(DeadLetter(msg.seq, msg.subject, msg.data, why))
            return
        else:
            self._interaction(ev, msg.seq, result)
        result.applied += 1

    def _refuse(self, msg: RawMessage, ev: CloudEvent, reason: str, result: FoldResult) -> None:
        """Record a refused event on its session; with no session, dead-letter it."""
        result.rejected += 1
        if not self.ws.has_session(ev.iid):
            why = f"refused: {reason}"
            result.dead_letters.append(DeadLetter(msg.seq, msg.subject, msg.data, why))
            return
        s = self.ws.session(ev, msg.seq)
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
        self.ws.collect(s)

    def _interaction(self, ev: CloudEvent, seq: int, result: FoldResult) -> None:
        # 4. fold into the goal and the session
        s = self.ws.session(ev, seq)
        if touches_goal(self.ws, ev, seq):
            apply_goal_event(self.ws, ev, seq)
        was_ended = s.ended
        known = self.ws.instances.get(ev.instance) if ev.instance else None
        version = known.agent_version if known is not None else None
        cost = apply_event(s, ev, seq, self.prices, agent_version=version)
        # 5. charge, 6. watch
        flag: Flag | None = None
        if cost is not None:
            result.crossings += charge(self.ws, s, ev, seq, cost, self.fleet_caps)
            flag = after_model_call(s, ev, seq, self.limits)
        elif ev.type == ToolCalled.type:
            flag = after_tool_call(s, ev, seq, self.limits)
        if flag is not None:
            result.flags.append(flag)
        self.ws.note_activity(s, ev.time)
        self.ws.collect(s)
        # 7. evaluate
        if not was_ended and ev.type in OUTCOME_TYPES and s.status in ("completed", "failed"):
            succeeded = s.status == "completed"
            verdict = evaluate(self.ws, ev, seq, succeeded, self.comparisons)
            if verdict is not None:
                result.verdicts.append(verdict)

    # -- queries for the watchdog -------------------------------------------------------------
    def silent_since(self, older_than: datetime) -> list[str]:
        """IIDs of running sessions whose last event is before ``older_than``."""
        return [iid for iid, at in self.ws.active.items() if at < older_than]

    def forget_silent(self, iid: str) -> None:
        """Stop watching a session until its next event (flagged, or found not running)."""
        self.ws.active.pop(iid, None)

    def cached_session(self, iid: str) -> Session | None:
        """The in-memory session, if held."""
        return self.ws.cached_session(iid)

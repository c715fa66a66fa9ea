"""Spend above the goal when the core runs as partitions: one small aggregator, exactly once.

A goal and its sessions fold in one partition, so session and goal budgets stay where they
were. A fleet's sessions are spread over every partition, so its spend is summed here, from
the partitions' notification logs: every ``Session.ModelCalled`` (the server-side cost, the
fleet, the stream sequence it came from).

To cross a fleet's cap at exactly the event a single core would, the aggregator folds in
**stream order**, and only up to the *watermark*: the lowest tracking position over all
partitions. Every partition's position is a sequence of the log itself (its share
arrives with the log's sequences, and a partition with nothing pending records its position
up to the log its share has seen), and a partition writes its events with its tracking in
one transaction, so once the watermark is read, every model call at or below it is already
readable. The aggregator's own store (:class:`ShoalSpend`) records the crossings
(``FleetSpend.BudgetExceeded``) together with ``Tracking(<stream>, watermark)``: restarted,
it re-reads the partitions' calls, sums those at or below its recorded watermark without
acting on them, and goes on from there.

Its side effects (``budget.exceeded``, the fleet's kill switch) are carried out before its
write, with the same deterministic ids as the single core's, like the partitions' own.
"""

from __future__ import annotations

import heapq
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any
from uuid import UUID

from eventsourcing.application import AggregateNotFoundError, Application, ProcessingEvent
from eventsourcing.persistence import ProcessRecorder, Tracking
from eventsourcing.utils import get_topic

from shoal.aggregates.application import ShoalCore
from shoal.aggregates.budgets import BudgetCrossing, FleetSpend, fleet_spend_id
from shoal.aggregates.session import Session

__all__ = ["SPEND_APPLICATION_NAME", "Call", "ShoalSpend", "SpendAggregator", "SpendStep"]

SPEND_APPLICATION_NAME = "ShoalSpend"

_OPENED = get_topic(Session.Opened)
_MODEL_CALLED = get_topic(Session.ModelCalled)


class ShoalSpend(Application[UUID]):
    """Fleet spend records of a partitioned core, recorded with the merged stream position."""

    name = SPEND_APPLICATION_NAME

    def __init__(self, env: dict[str, str] | None = None) -> None:
        super().__init__(env)
        self.recorder: ProcessRecorder

    def construct_recorder(self) -> ProcessRecorder:
        return self.factory.process_recorder()

    def fleet_spend(self, fleet: str) -> FleetSpend | None:
        """The fleet's spend record (created at its first crossing), or ``None``."""
        try:
            found: Any = self.repository.get(fleet_spend_id(fleet))
        except AggregateNotFoundError:
            return None
        return found if isinstance(found, FleetSpend) else None

    def max_tracking_id(self, upstream: str) -> int:
        return self.recorder.max_tracking_id(upstream) or 0


@dataclass(frozen=True, order=True)
class Call:
    """One priced model call, as a partition recorded it."""

    seq: int
    fleet: str = field(compare=False)
    cost: Decimal = field(compare=False)
    iid: str = field(compare=False)
    gid: str | None = field(compare=False)
    at: datetime = field(compare=False)


@dataclass
class SpendStep:
    """What one step produced: the write (crossings + tracking) and the crossings to act on."""

    processing: ProcessingEvent[UUID] = field(default_factory=ProcessingEvent)
    crossings: list[BudgetCrossing] = field(default_factory=list)
    folded: int = 0


class SpendAggregator:
    """Sums fleet spend over the partitions in stream order; crosses each cap once."""

    def __init__(
        self,
        spend: ShoalSpend,
        partitions: list[ShoalCore],
        upstream: str,
        caps: dict[str, Decimal],
        page: int = 1000,
    ) -> None:
        self.spend = spend
        self.partitions = partitions
        self.upstream = upstream
        self.caps = caps
        self.page = page
        self.load()

    def load(self) -> None:
        """Forget what is in memory; re-read the partitions up to the recorded position."""
        self.position = self.spend.max_tracking_id(self.upstream)
        self.totals: defaultdict[str, Decimal] = defaultdict(Decimal)
        self.records: dict[str, FleetSpend] = {}
        self.pending: list[Call] = []
        self.cursors = [0] * len(self.partitions)
        self._iids: list[dict[UUID, str]] = [{} for _ in self.partitions]
        self._read()
        while self.pending and self.pending[0].seq <= self.position:
            call = heapq.heappop(self.pending)
            self.totals[call.fleet] += call.cost

    def watermark(self) -> int:
        """The lowest stream position every partition has recorded."""
        return min(p.max_tracking_id(self.upstream) for p in self.partitions)

    def _read(self) -> None:
        for k, app in enumerate(self.partitions):
            iids = self._iids[k]
            while True:
                page = app.notification_log.select(
                    start=self.cursors[k] + 1, limit=self.page, topics=[_OPENED, _MODEL_CALLED]
                )
                for n in page:
                    e: Any = app.mapper.to_domain_event(n)
                    if n.topic == _OPENED:
                        iids[e.originator_id] = e.iid
                    elif e.fleet:
                        call = Call(
                            e.seq,
                            e.fleet,
                            e.cost_usd,
                            iids.get(e.originator_id, ""),
                            e.gid,
                            e.timestamp,
                        )
                        heapq.heappush(self.pending, call)
                if page:
                    self.cursors[k] = page[-1].id
                if len(page) < self.page:
                    break

    def step(self) -> SpendStep:
        """Fold every call at or below the watermark; the step's tracking is the watermark.

        The watermark is read before the calls, so every call at or below it is in the logs
        read after it.
        """
        mark = self.watermark()
        self._read()
        result = SpendStep()
        while self.pending and self.pending[0].seq <= mark:
            call = heapq.heappop(self.pending)
            result.folded += 1
            self.totals[call.fleet] += call.cost
            cap = self.caps.get(call.fleet)
            if cap is None or self.totals[call.fleet] <= cap:
                continue
            record = self._record(call.fleet, call.at)
            if record.budget_exceeded:
                continue
            spent = self.totals[call.fleet]
            record.record_budget_exceeded(call.seq, cap, spent, timestamp=call.at)
            result.processing.events.extend(record.collect_events())
            result.processing.aggregates[record.id] = record
            result.crossings.append(
                BudgetCrossing(
                    "fleet", call.fleet, cap, spent, call.seq, call.iid, call.gid, call.fleet
                )
            )
        if mark > self.position:
            result.processing.tracking = Tracking(self.upstream, mark)
        return result

    def _record(self, fleet: str, at: datetime) -> FleetSpend:
        record = self.records.get(fleet) or self.spend.fleet_spend(fleet)
        if record is None:
            record = FleetSpend(fleet=fleet, timestamp=at)
        self.records[fleet] = record
        return record

    def record(self, result: SpendStep) -> None:
        """Write the step's crossings with its tracking, atomically; advance the position."""
        if result.processing.tracking is None:
            return
        stored = [self.spend.mapper.to_stored_event(e) for e in result.processing.events]
        self.spend.recorder.insert_events(stored, tracking=result.processing.tracking)
        self.position = result.processing.tracking.notification_id

    def caught_up(self) -> bool:
        """The position is the watermark: every call the partitions recorded is summed."""
        return self.position >= self.watermark()

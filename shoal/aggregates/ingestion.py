"""The core's ingestion: the event log, folded into aggregates exactly once.

A durable JetStream pull consumer on ``SHOAL_EVENTS`` hands over batches. Each batch is
folded (:class:`~shoal.aggregates.processor.CoreProcessor`, in a worker thread), its side
effects are carried out, and then every new aggregate event plus one
``Tracking(<stream>, <last seq of the batch>)`` is written in **one transaction** by the
library's process recorder; only then is the batch acknowledged (``AckPolicy.ALL``: one ack
for the batch). The store, not the consumer, is the source of truth: at start the consumer
is re-created at ``max_tracking_id + 1`` whenever its ack floor disagrees with the store,
and any message at or below the recorded position is skipped. So a crash at any point —
before the write, between write and ack — loses nothing and applies nothing twice.

Side effects (dead letters, ``budget.exceeded`` / ``session.flagged`` /
``evaluation.regressed|passed`` on the bus, kill switches, a canary's promotion or roll-back)
happen *before* the write: a batch folded again after a crash produces them again
with the same deterministic ids, which JetStream de-duplicates, a kill switch written
twice is the same switch, and a canary already promoted or rolled back refuses a second
verdict.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from nats.aio.msg import Msg
from nats.js import JetStreamContext, api
from nats.js.errors import NotFoundError

from shoal.aggregates.application import ShoalCore
from shoal.aggregates.effects import SideEffects, VerdictHandler
from shoal.aggregates.pricing import PriceTable
from shoal.aggregates.processor import (
    CoreLimits,
    CoreProcessor,
    FoldResult,
    PoisonMessage,
    RawMessage,
)
from shoal.aggregates.watchdog import flag_stuck
from shoal.bus import Bus, ShoalSettings
from shoal.gcpolicy import YOUNG_GC_THRESHOLD, raise_gc_threshold
from shoal.schemas import (
    utcnow,
)

__all__ = ["CORE_CONSUMER", "CoreStats", "Ingestion", "processor_for"]


log = logging.getLogger("shoal.core")

CORE_CONSUMER = "core"
"""Durable name of the core's consumer on the events stream."""

STALL_AFTER_IDLE = 3
"""Idle receive rounds with messages still pending before the core re-attaches."""

QUIET_S = 0.02
"""A batch closes when no message arrived for this long (a trickle is not held back)."""

BATCH_WINDOW_S = 0.02
"""A batch closes at the latest this long after its first message arrived, whatever the rate:
the bound on arrival-to-fold time that keeps budget kills prompt under steady load."""

REFETCH_LIMIT = 2000
"""Most missing sequences fetched one by one to close a gap; past it the core re-attaches."""

CONSUMING_GC_THRESHOLD = YOUNG_GC_THRESHOLD
"""Young-generation threshold of the cyclic GC while the core consumes (see ``attach``)."""


class ConsumerStalled(Exception):
    """The consumer holds messages but delivers none (e.g. after a server restart)."""


class DeliveryGap(Exception):
    """Too many deliveries were lost to fetch one by one: re-attach at the store's position."""


@dataclass
class CoreStats:
    """Counters of one ingestion run."""

    batches: int = 0
    messages: int = 0
    applied: int = 0
    rejected: int = 0
    dead_lettered: int = 0
    skipped: int = 0
    budget_crossings: int = 0
    flags: int = 0
    verdicts: int = 0
    position: int = 0
    failures: int = 0
    refetched: int = 0

    def add(self, result: FoldResult) -> None:
        self.batches += 1
        self.applied += result.applied
        self.rejected += result.rejected
        self.dead_lettered += len(result.dead_letters)
        self.skipped += result.skipped
        self.budget_crossings += len(result.crossings)
        self.flags += len(result.flags)
        self.verdicts += len(result.verdicts)


@dataclass(frozen=True)
class Fetched:
    """One fetched batch and the message whose ack acknowledges all of it."""

    messages: list[RawMessage]
    last: Msg


class Ingestion:
    """One core's consumption loop over the event log."""

    def __init__(
        self,
        bus: Bus,
        app: ShoalCore,
        processor: CoreProcessor,
        *,
        batch: int = 1000,
        consumer: str = CORE_CONSUMER,
        stuck_after_s: float = 300.0,
        clock: Callable[[], datetime] = utcnow,
        on_verdicts: VerdictHandler | None = None,
    ) -> None:
        self.bus = bus
        self.effects = SideEffects(bus, on_verdicts)
        self.app = app
        self.processor = processor
        self.batch = batch
        self.consumer = consumer
        self.stuck_after_s = stuck_after_s
        self.clock = clock
        self.stats = CoreStats()
        self.stream = bus.topology.events.name
        self._sub: JetStreamContext.PushSubscription | None = None
        self._buffer: list[Msg] = []
        self._first_at = 0.0
        self._arrived = asyncio.Event()
        self.window = BATCH_WINDOW_S
        self._last_watch = 0.0
        self._gc_threshold: tuple[int, int, int] | None = None

    # -- the consumer ---------------------------------------------------------------------------
    async def attach(self) -> None:
        """(Re)create the durable consumer at the store's position and start receiving.

        The store is the source of truth, the consumer only a cursor: it is created afresh at
        ``max_tracking_id + 1`` on every start, whatever an earlier run left acknowledged. It
        is a push consumer with flow control (measured 3-5x faster here than pull ``fetch``);
        ``max_ack_pending`` bounds what JetStream sends ahead of the acknowledged batch.

        Until :meth:`detach`, the cyclic GC's young generation may grow to
        :data:`CONSUMING_GC_THRESHOLD` objects: every message received and folded allocates
        a dozen short-lived objects (``Msg``, parsed CloudEvent, aggregate events, their
        dicts, stored rows), all freed by reference counting; at the default 700 the
        collector ran every few dozen events and rescanned the cached sessions each time.
        Measured +20-40 % events/s (docs/core.md).
        """
        await self.detach()
        self._gc_threshold = raise_gc_threshold(CONSUMING_GC_THRESHOLD)
        js, position = self.bus.js, self.processor.position
        try:
            await js.delete_consumer(self.stream, self.consumer)
        except NotFoundError:
            pass
        config = api.ConsumerConfig(
            durable_name=self.consumer,
            description="shoal core ingestion",
            deliver_subject=self.bus.nc.new_inbox(),
            filter_subject=self.bus.subjects.all_events,
            ack_policy=api.AckPolicy.ALL,
            deliver_policy=api.DeliverPolicy.BY_START_SEQUENCE
            if position
            else api.DeliverPolicy.ALL,
            opt_start_seq=position + 1 if position else None,
            max_ack_pending=self.batch * 2,
            ack_wait=60.0,
            flow_control=True,
            idle_heartbeat=5.0,
        )
        await js.add_consumer(self.stream, config)
        self._buffer.clear()
        self._sub = await js.subscribe_bind(
            self.stream, config, self.consumer, cb=self._receive, manual_ack=True
        )
        log.info("core consumer %s created at seq %d", self.consumer, position + 1)

    async def _receive(self, msg: Msg) -> None:
        if not self._buffer:
            self._first_at = time.monotonic()
            self._buffer.append(msg)
            self._arrived.set()
            return
        self._buffer.append(msg)
        if len(self._buffer) >= self.batch:
            self._arrived.set()

    async def fetch(self, timeout: float = 1.0) -> Fetched | None:
        """The next batch, sorted by sequence and gap-free; ``None`` if nothing came in ``timeout``.

        A batch closes when ``batch`` messages are buffered, when the flow pauses for
        :data:`QUIET_S`, or :attr:`window` after its first message arrived — so under a steady
        rate that never pauses, an event still waits at most ``window`` before it is folded.
        """
        deadline = time.monotonic() + timeout
        while True:
            held = len(self._buffer)
            if held >= self.batch:
                break
            now = time.monotonic()
            if held:
                left = self._first_at + self.window - now
                if left <= 0:
                    break
                pause = min(QUIET_S, left)
            else:
                pause = deadline - now
                if pause <= 0:
                    return None
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), pause)
            except TimeoutError:
                if held and len(self._buffer) == held:
                    break  # quiet: nothing more arrived
        msgs, self._buffer = self._buffer, []
        raw = sorted(
            (RawMessage(m.metadata.sequence.stream, m.subject, m.data) for m in msgs),
            key=lambda r: r.seq,
        )
        last = max(msgs, key=lambda m: m.metadata.sequence.stream)
        return Fetched(await self._close_gaps(raw), last)

    async def _close_gaps(self, raw: list[RawMessage]) -> list[RawMessage]:
        """Fetch from the stream every sequence missing between the store's position and the
        batch's last message.

        The consumer acknowledges with ``AckPolicy.ALL``: acking the batch's last message also
        acknowledges any delivery that was lost on the way (a connection cut while messages
        were in flight), so a gap left unfilled would be a lost event. The core's consumer
        sees the whole stream (its filter is every event subject), so every sequence in the
        range is either stored — fetched here — or was deleted (limits, purge), which the
        ``next`` lookup steps over.
        """
        expected = self.processor.position + 1
        have = {r.seq for r in raw if r.seq >= expected}
        top = raw[-1].seq
        if len(have) == top - expected + 1:
            return raw  # contiguous: the usual case, at no cost
        filled: list[RawMessage] = []
        seq = expected
        while seq < top:
            if seq in have:
                seq += 1
                continue
            if len(filled) >= REFETCH_LIMIT:
                raise DeliveryGap(
                    f"more than {REFETCH_LIMIT} events missing between #{expected} and #{top}"
                )
            try:
                found = await self.bus.js.get_msg(
                    self.stream, seq=seq, subject=self.bus.subjects.all_events, next=True
                )
            except NotFoundError:
                break  # nothing stored from here to the end of the stream
            if found.seq is None or found.seq >= top:
                break  # the rest of the range was deleted (limits or purge)
            filled.append(RawMessage(found.seq, found.subject or "", found.data or b""))
            have.add(found.seq)
            seq = found.seq + 1
        if filled:
            log.warning(
                "core delivery gap: fetched %d lost events between #%d and #%d from the stream",
                len(filled),
                expected,
                top,
            )
        self.stats.refetched += len(filled)
        return sorted(raw + filled, key=lambda r: r.seq)

    # -- one batch ------------------------------------------------------------------------------
    async def process(self, fetched: Fetched) -> FoldResult:
        """Fold, carry out side effects, commit, ack. On failure the working set is reset.

        A message the fold raises on is remembered and the batch folded again without it
        (it is dead-lettered with the error): one bad message cannot stall the core.
        """
        result = await self._commit(fetched)
        # AckPolicy.ALL: acknowledging the highest sequence acknowledges the whole batch.
        await fetched.last.ack()
        self.stats.messages += len(fetched.messages)
        self.stats.add(result)
        self.stats.position = self.processor.position
        return result

    async def _commit(self, fetched: Fetched) -> FoldResult:
        """Fold the batch, carry out its side effects and write it with its tracking."""
        try:
            while True:
                try:
                    result = await asyncio.to_thread(self.processor.fold, fetched.messages)
                    break
                except PoisonMessage as e:
                    log.error("core failed on message #%d; dead-lettering it: %s", e.seq, e)
                    self.processor.poisoned[e.seq] = e.reason
                    await asyncio.to_thread(self.processor.reset)
            await self.effects.carry_out(result)
            if result.processing.tracking is not None:
                await asyncio.to_thread(self.app.record, result.processing, result.snapshot_from)
            self.processor.committed(result)
        except BaseException:
            await asyncio.to_thread(self.processor.reset)
            raise
        return result

    # -- the watchdog --------------------------------------------------------------------------
    async def watch(self) -> int:
        """Flag running sessions silent for longer than ``stuck_after_s``; return how many."""
        return await flag_stuck(
            self.bus, self.app, self.processor, self.clock(), self.stuck_after_s
        )

    # -- the loop ---------------------------------------------------------------------------------
    async def run(
        self, stop: asyncio.Event, *, until_idle: bool = False, ready: asyncio.Event | None = None
    ) -> CoreStats:
        """Consume until ``stop`` is set (or, with ``until_idle``, until nothing is pending).

        Batches are received, then folded and written, one after the other (taking the next
        batch during the fold was measured slower: the event loop and the fold thread fight
        over the GIL). A failure (NATS or the store unreachable, a stalled delivery) is logged
        and counted; the loop then re-attaches at the store's position, with back-off, so the
        consumer never dies of one bad moment.
        """
        await self.attach()
        if ready is not None:
            ready.set()
        watch_every = min(max(self.stuck_after_s / 4, 0.5), 30.0)
        timeout = 0.5 if until_idle else 1.0
        idle = 0
        try:
            while not stop.is_set():
                try:
                    fetched = await self.fetch(timeout)
                    if fetched:
                        idle = 0
                        await self.process(fetched)
                    else:
                        idle += 1
                        if await self._drained(stalled=idle >= STALL_AFTER_IDLE):
                            idle = 0
                            if until_idle:
                                break
                    if time.monotonic() - self._last_watch >= watch_every:
                        self._last_watch = time.monotonic()
                        await self.watch()
                except Exception:
                    self.stats.failures += 1
                    log.exception("core batch failed; restarting from the store's position")
                    await self._recover(stop)
                    idle = 0
        finally:
            await self.detach()
        return self.stats

    async def _recover(self, stop: asyncio.Event) -> None:
        """Re-attach at the store's position, retrying with back-off while NATS is away."""
        delay = 0.5
        while not stop.is_set():
            await asyncio.sleep(delay)
            try:
                await self.attach()
                return
            except Exception as e:
                log.warning("core cannot re-attach yet (%s); retrying in %.1fs", e, delay)
                delay = min(delay * 2, 10.0)

    async def _drained(self, *, stalled: bool) -> bool:
        """True when nothing is left to deliver; raise if delivery stalled with work pending.

        A push subscription can go quiet after a server restart while the consumer still
        holds messages: after a few idle rounds with work pending, re-attaching fixes it.
        """
        info = await self.bus.js.consumer_info(self.stream, self.consumer)
        if not info.num_pending and not info.num_ack_pending and not self._buffer:
            return True
        if stalled:
            raise ConsumerStalled(
                f"{info.num_pending} pending and {info.num_ack_pending} unacknowledged, "
                "nothing delivered"
            )
        return False

    async def detach(self) -> None:
        """Stop receiving (un-acknowledged messages are read again by the next run)."""
        if self._gc_threshold is not None:
            gc.set_threshold(*self._gc_threshold)
            self._gc_threshold = None
        if self._sub is not None:
            psub, self._sub = self._sub, None
            try:
                timeout = self.bus.settings.request_timeout
                await asyncio.wait_for(psub.unsubscribe(), timeout=timeout)
            except Exception as e:  # the connection may already be gone; the run is over
                log.debug("core consumer unsubscribe failed: %s", e)


def processor_for(app: ShoalCore, settings: ShoalSettings, bus: Bus) -> CoreProcessor:
    """A processor configured from the settings (price table, loop thresholds)."""
    return CoreProcessor(
        app,
        PriceTable.load(settings.price_table),
        bus.subjects,
        bus.topology.events.name,
        CoreLimits(loop_repeats=settings.loop_repeats, loop_model_calls=settings.loop_model_calls),
    )

"""The core's ingestion: the event log, folded into aggregates exactly once.

A durable JetStream consumer on ``SHOAL_EVENTS`` hands over batches
(:class:`~shoal.aggregates.receiver.Receiver`). Each batch is folded
(:class:`~shoal.aggregates.processor.CoreProcessor`, in a worker thread), its side effects are
carried out (:class:`~shoal.aggregates.effects.SideEffects`), and then every new aggregate
event plus one ``Tracking(<stream>, <last seq of the batch>)`` is written in **one
transaction** by the library's process recorder; only then is the batch acknowledged
(``AckPolicy.ALL``: one ack for the batch). The store, not the consumer, is the source of
truth: at start the consumer is re-created at ``max_tracking_id + 1`` whatever its ack floor,
and any message at or below the recorded position is skipped. So a crash at any point —
before the write, between write and ack — loses nothing and applies nothing twice.

Side effects (dead letters, ``budget.exceeded`` / ``session.flagged`` /
``evaluation.regressed|passed`` on the bus, kill switches, a canary's promotion or roll-back)
happen *before* the write: a batch folded again after a crash produces them again
with the same deterministic ids, which JetStream de-duplicates, a kill switch written
twice is the same switch, and a canary already promoted or rolled back refuses a second
verdict.

One core runs one :class:`Ingestion` over the whole log (:func:`shoal.aggregates.service.run_core`);
a partitioned core runs one per partition it holds (:mod:`shoal.aggregates.partitioned`), each
over its share of the partition stream (:mod:`shoal.aggregates.partstream`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from shoal.aggregates.application import ShoalCore
from shoal.aggregates.effects import SideEffects, VerdictHandler
from shoal.aggregates.partitions import Partition
from shoal.aggregates.pricing import PriceTable
from shoal.aggregates.processor import CoreLimits, CoreProcessor, FoldResult, PoisonMessage
from shoal.aggregates.receiver import Fetched, Receiver
from shoal.aggregates.sharefeed import Share, ShareReceiver
from shoal.aggregates.watchdog import flag_stuck
from shoal.bus import Bus, ShoalSettings
from shoal.schemas import utcnow

__all__ = ["CORE_CONSUMER", "CoreStats", "Fetched", "Ingestion", "processor_for"]

log = logging.getLogger("shoal.core")

CORE_CONSUMER = "core"
"""Durable name of the core's consumer on the events stream."""

STALL_AFTER_IDLE = 3
"""Idle receive rounds with messages still pending before the core re-attaches."""


@dataclass
class CoreStats:
    """Counters of one ingestion run."""

    batches: int = 0
    messages: int = 0
    applied: int = 0
    rejected: int = 0
    dead_lettered: int = 0
    skipped: int = 0
    foreign: int = 0
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
        self.foreign += result.foreign
        self.budget_crossings += len(result.crossings)
        self.flags += len(result.flags)
        self.verdicts += len(result.verdicts)


class Ingestion:
    """One core's (or one partition's) consumption loop over the event log."""

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
        share: Share | None = None,
    ) -> None:
        self.bus = bus
        self.effects = SideEffects(bus, on_verdicts)
        self.app = app
        self.processor = processor
        self.consumer = consumer
        self.stuck_after_s = stuck_after_s
        self.clock = clock
        self.stats = CoreStats()
        position = lambda: processor.position  # noqa: E731
        self.receiver: Receiver | ShareReceiver = (
            Receiver(bus, position, batch=batch, consumer=consumer)
            if share is None
            else ShareReceiver(bus, position, batch=batch, consumer=consumer, share=share)
        )
        self._last_watch = 0.0

    async def attach(self) -> None:
        """(Re)create the durable consumer at the store's position and start receiving."""
        await self.receiver.attach()

    async def fetch(self, timeout: float = 1.0) -> Fetched | None:
        """The next gap-free batch, or ``None`` if nothing came in ``timeout``."""
        fetched = await self.receiver.fetch(timeout)
        self.stats.refetched = self.receiver.refetched
        return fetched

    async def detach(self) -> None:
        """Stop receiving (un-acknowledged messages are read again by the next run)."""
        await self.receiver.detach()

    # -- one batch ------------------------------------------------------------------------------
    async def process(self, fetched: Fetched) -> FoldResult:
        """Fold, carry out side effects, commit, ack. On failure the working set is reset.

        A message the fold raises on is remembered and the batch folded again without it
        (it is dead-lettered with the error): one bad message cannot stall the core.
        """
        result = await self._commit(fetched)
        # AckPolicy.ALL: acknowledging the highest sequence acknowledges the whole batch.
        await fetched.last.ack()
        for msg in fetched.also:
            await msg.ack()
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
        try:
            await self.attach()
        except Exception:  # a cut connection, a lost reply: as a failed batch, with back-off
            self.stats.failures += 1
            log.exception("core could not attach; retrying from the store's position")
            await self._recover(stop)
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
                        if await self.idle(stalled=idle >= STALL_AFTER_IDLE):
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

    async def idle(self, *, stalled: bool = False) -> bool:
        """True when nothing is left to deliver; a partition's position is then recorded up to
        the log its share has seen (:meth:`CoreProcessor.advance`)."""
        if not await self.receiver.drained(stalled=stalled):
            return False
        if not isinstance(self.receiver, ShareReceiver):
            return True  # the whole log: its position moves with its batches
        result = self.processor.advance(self.receiver.idle_upto)
        if result.processing.tracking is not None:
            await asyncio.to_thread(self.app.record, result.processing, result.snapshot_from)
            self.processor.committed(result)
            self.stats.position = self.processor.position
        return True

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


def processor_for(
    app: ShoalCore, settings: ShoalSettings, bus: Bus, partition: Partition | None = None
) -> CoreProcessor:
    """A processor configured from the settings (price table, loop thresholds)."""
    return CoreProcessor(
        app,
        PriceTable.load(settings.price_table),
        bus.subjects,
        bus.topology.events.name,
        CoreLimits(loop_repeats=settings.loop_repeats, loop_model_calls=settings.loop_model_calls),
        partition=partition,
    )

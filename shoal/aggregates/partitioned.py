"""The core as N partitions: leases decide which process folds which partition.

``shoal core --partitions N`` (``SHOAL_CORE_PARTITIONS``) runs :func:`run_partitioned` in every
core process. Each process announces itself, claims its fair share of the leases
(:mod:`shoal.aggregates.ownership`) and runs, for each held partition, an ordinary
:class:`~shoal.aggregates.ingestion.Ingestion` with its own durable consumer
(``core-p0of2``), its own store (``core-p0of2.sqlite``, or schema ``..._p0of2`` on PostgreSQL)
and a processor that folds only what :class:`~shoal.aggregates.partitions.Partition` says is its
own. One process also holds the spend aggregator's lease (:mod:`shoal.aggregates.spendagg`):
fleet caps are enforced there, not in the partitions.

When a lease is lost, that partition stops at once; when a process dies, its leases expire
and the others claim them: the new owner re-attaches at the partition store's position, so
nothing is lost or applied twice. With one partition (the default) none of this runs: the
core is :func:`~shoal.aggregates.service.run_core`, exactly as before.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
import uuid
from decimal import Decimal

from shoal.aggregates.application import ShoalCore, open_application, open_core
from shoal.aggregates.effects import SideEffects
from shoal.aggregates.fleet_caps import FleetCaps
from shoal.aggregates.ingestion import CORE_CONSUMER, CoreStats, Ingestion, processor_for
from shoal.aggregates.interactions import InteractionsService
from shoal.aggregates.ownership import CoreLeases
from shoal.aggregates.partitions import Partition
from shoal.aggregates.partstream import PartitionStream
from shoal.aggregates.persistence import application_env
from shoal.aggregates.pricing import PriceTable
from shoal.aggregates.readers import record_layout
from shoal.aggregates.sharefeed import Share
from shoal.aggregates.spendagg import ShoalSpend, SpendAggregator
from shoal.bus import Bus, ShoalSettings
from shoal.bus.kvmirror import KvMirror

__all__ = ["open_partitions", "open_spend", "run_partitioned", "spend_name"]

log = logging.getLogger("shoal.core")

SPEND_EVERY_S = 0.1
"""How often the spend aggregator looks for new model calls in the partitions."""


def spend_name(count: int) -> str:
    """The aggregator's lease and store name for ``count`` partitions (``spendof2``)."""
    return f"spendof{count}"


def open_partitions(settings: ShoalSettings, count: int) -> list[ShoalCore]:
    """Every partition's store, in partition order (for reading)."""
    return [open_core(settings, part=Partition(k, count).name) for k in range(count)]


def open_spend(settings: ShoalSettings, count: int) -> ShoalSpend:
    """The spend aggregator's store (fleet spend records of a partitioned core)."""
    return open_application(ShoalSpend, application_env(settings, "core", spend_name(count)))


class PartitionedCore:
    """One core process's share of a partitioned core."""

    def __init__(
        self, bus: Bus, settings: ShoalSettings, count: int, *, until_idle: bool = False
    ) -> None:
        self.bus = bus
        self.settings = settings
        self.count = count
        self.until_idle = until_idle
        self.stats = CoreStats()
        self.caps: dict[str, Decimal] = dict(PriceTable.load(settings.price_table).fleet_budgets)
        self.names = [Partition(k, count).name for k in range(count)] + [spend_name(count)]
        self.tasks: dict[str, tuple[asyncio.Event, asyncio.Task[None]]] = {}
        self.done: set[str] = set()
        self.id = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.stream = PartitionStream(bus.topology.events, bus.subjects.prefix, count)

    async def run(self, stop: asyncio.Event, ready: asyncio.Event | None = None) -> CoreStats:
        bus = self.bus
        await self.stream.ensure(bus.js)
        leases_kv = await bus.kv(bus.topology.leases.name)
        mirror = KvMirror(leases_kv)
        await mirror.start(self.settings.request_timeout)
        leases = CoreLeases(leases_kv, mirror, self.id, self.settings.lease_ttl_s, self.names)
        caps = FleetCaps(await bus.kv(bus.topology.fleets.name), self.caps, dict(self.caps))
        await caps.start(self.settings.request_timeout)
        interactions = InteractionsService(bus)
        await interactions.start()
        if ready is not None:
            ready.set()
        tick = min(self.settings.lease_ttl_s / 6, 1.0)
        try:
            while not stop.is_set():
                now = time.monotonic()
                await leases.announce(now)
                for name in await leases.renew(now):
                    await self._stop(name)  # fencing: another process may start it now
                share = len(self.names) if self.until_idle else leases.share(now)
                while len(leases.held) > share:  # a new process came: hand a lease over
                    name = sorted(leases.held)[-1]
                    await self._stop(name)
                    await leases.release(name)
                for name in await leases.claim(now, share):
                    self._start(name)
                self._reap()
                if self.until_idle and self.done == set(self.names):
                    if not await self._log_grew():
                        break
                    # The aggregator published (budget.exceeded) after the partitions went
                    # idle: one more round folds it.
                    self.done.clear()
                    for name in self.names:
                        self._start(name)
                try:
                    await asyncio.wait_for(stop.wait(), tick)
                except TimeoutError:
                    pass
        finally:
            for name in list(self.tasks):
                await self._stop(name)
            await leases.release_all()
            await interactions.stop()
            await caps.stop()
            await mirror.stop()
        return self.stats

    def _start(self, name: str) -> None:
        halt = asyncio.Event()
        if name == spend_name(self.count):
            work = self._aggregate(halt)
        else:
            index = self.names.index(name)
            work = self._partition(Partition(index, self.count), halt)
        self.tasks[name] = (halt, asyncio.create_task(work, name=f"core-{name}"))

    async def _stop(self, name: str) -> None:
        entry = self.tasks.pop(name, None)
        if entry is None:
            return
        halt, task = entry
        halt.set()
        try:
            await task
        except Exception:
            log.exception("core %s failed while stopping", name)

    def _reap(self) -> None:
        for name, (_, task) in list(self.tasks.items()):
            if task.done():
                del self.tasks[name]
                if task.exception() is not None:
                    log.error("core %s stopped: %s", name, task.exception())
                    raise RuntimeError(f"core {name} failed") from task.exception()
                self.done.add(name)

    async def _partition(self, partition: Partition, halt: asyncio.Event) -> None:
        app = await asyncio.to_thread(open_core, self.settings, part=partition.name)
        try:
            processor = await asyncio.to_thread(
                processor_for, app, self.settings, self.bus, partition
            )
            processor.fleet_caps.clear()  # fleet caps are the aggregator's
            ingestion = Ingestion(
                self.bus,
                app,
                processor,
                batch=self.settings.core_batch,
                consumer=partition.consumer(CORE_CONSUMER),
                stuck_after_s=self.settings.stuck_after_s,
                share=Share(self.stream, partition.index),
            )
            log.info("core %s: folding partition %s", self.id, partition.name)
            stats = await ingestion.run(halt, until_idle=self.until_idle)
            self._count(stats)
        finally:
            await asyncio.to_thread(app.close)

    def _count(self, stats: CoreStats) -> None:
        for field, value in vars(stats).items():
            if field != "position":
                setattr(self.stats, field, getattr(self.stats, field) + value)

    async def _aggregate(self, halt: asyncio.Event) -> None:
        """Fold fleet spend from the partitions' logs until halted (or, idle, caught up)."""
        spend = await asyncio.to_thread(open_spend, self.settings, self.count)
        parts = await asyncio.to_thread(open_partitions, self.settings, self.count)
        upstream = self.bus.topology.events.name
        effects = SideEffects(self.bus)
        try:
            agg = await asyncio.to_thread(SpendAggregator, spend, parts, upstream, self.caps)
            while not halt.is_set():
                try:
                    step = await asyncio.to_thread(agg.step)
                    await effects.budget_exceeded(step.crossings)
                    await asyncio.to_thread(agg.record, step)
                    self.stats.budget_crossings += len(step.crossings)
                except Exception:
                    self.stats.failures += 1
                    log.exception("core spend aggregator failed; reloading from its store")
                    await asyncio.sleep(0.5)
                    await asyncio.to_thread(agg.load)
                    continue
                if self.until_idle and self._partitions_done() and agg.caught_up():
                    return
                try:
                    await asyncio.wait_for(halt.wait(), SPEND_EVERY_S)
                except TimeoutError:
                    pass
        finally:
            for app in parts:
                await asyncio.to_thread(app.close)
            await asyncio.to_thread(spend.close)

    async def _log_grew(self) -> bool:
        """True when the stream holds events past some partition's position."""
        last = (await self.bus.js.stream_info(self.bus.topology.events.name)).state.last_seq

        def lowest() -> int:
            parts = open_partitions(self.settings, self.count)
            try:
                return min(p.max_tracking_id(self.bus.topology.events.name) for p in parts)
            finally:
                for p in parts:
                    p.close()

        return last > await asyncio.to_thread(lowest)

    def _partitions_done(self) -> bool:
        return all(n in self.done for n in self.names[:-1])


async def run_partitioned(
    settings: ShoalSettings,
    url: str,
    stop: asyncio.Event,
    count: int,
    *,
    until_idle: bool = False,
    ready: asyncio.Event | None = None,
) -> CoreStats:
    """Run this process's share of a core of ``count`` partitions until ``stop`` is set.

    With ``until_idle`` the process claims every partition and the aggregator (waiting for
    any another process holds) and returns once all of them have caught up with the log.
    """
    async with Bus.connect(url, settings, name="shoal-core") as bus:
        await bus.provision()
        # Readers (the CLI, the projection, status) find N here without the variable.
        await asyncio.to_thread(record_layout, settings, count)
        core = PartitionedCore(bus, settings, count, until_idle=until_idle)
        return await core.run(stop, ready)

"""The core as a service: ingestion plus what it watches and serves, until told to stop.

:func:`run_core` is what ``shoal core`` runs (and ``shoal demo`` beside its agents): the
ingestion (:mod:`~shoal.aggregates.ingestion`), the fleets' spend caps and comparisons
mirrored from desired state, and the interactions service.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from shoal.aggregates.application import open_core
from shoal.aggregates.comparisons import FleetComparisons
from shoal.aggregates.effects import VerdictHandler
from shoal.aggregates.fleet_caps import FleetCaps
from shoal.aggregates.ingestion import CORE_CONSUMER, CoreStats, Ingestion, processor_for
from shoal.aggregates.interactions import InteractionsService
from shoal.aggregates.readers import record_layout
from shoal.bus import Bus, ShoalSettings

__all__ = ["run_core"]


async def run_core(
    settings: ShoalSettings,
    url: str,
    stop: asyncio.Event,
    *,
    consumer: str = CORE_CONSUMER,
    until_idle: bool = False,
    ready: asyncio.Event | None = None,
    verdicts: Callable[[Bus], VerdictHandler] | None = None,
) -> CoreStats:
    """Run the core in this event loop until ``stop`` is set; return its counters.

    This is what ``shoal core`` runs; ``shoal demo`` can run it as a task beside the agents.
    ``verdicts`` makes the handler of the core's verdicts (``shoal core`` passes the canary
    controller of :mod:`shoal.ops.canary`).
    """
    async with Bus.connect(url, settings, name="shoal-core") as bus:
        await bus.provision()
        await asyncio.to_thread(record_layout, settings, 1)  # readers: one store
        app = await asyncio.to_thread(open_core, settings)
        try:
            processor = await asyncio.to_thread(processor_for, app, settings, bus)
            ingestion = Ingestion(
                bus,
                app,
                processor,
                batch=settings.core_batch,
                consumer=consumer,
                stuck_after_s=settings.stuck_after_s,
                on_verdicts=verdicts(bus) if verdicts is not None else None,
            )
            # Fleet specs' budget_usd, read before the first fold and followed after.
            fleets = await bus.kv(bus.topology.fleets.name)
            caps = FleetCaps(fleets, processor.fleet_caps, processor.prices.fleet_budgets)
            await caps.start(settings.request_timeout)
            comparisons = FleetComparisons(
                fleets, processor.comparisons, settings.regression_min_samples
            )
            await comparisons.start(settings.request_timeout)
            interactions = InteractionsService(bus)
            await interactions.start()
            try:
                return await ingestion.run(stop, until_idle=until_idle, ready=ready)
            finally:
                await interactions.stop()
                await comparisons.stop()
                await caps.stop()
        finally:
            app.close()

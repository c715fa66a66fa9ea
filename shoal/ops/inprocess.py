"""The core and the query service inside one command's process (what ``shoal demo`` uses).

When ``shoal up`` already runs them as local services for this data dir, they are reused:
two cores on one store, or two owners of one DuckDB file, would fight. Otherwise the core
runs as a task on this event loop and the query service answers on the command's own
connection, both for the life of the ``async with``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

from shoal.aggregates import run_core
from shoal.aggregates.partitioned import run_partitioned
from shoal.aggregates.readers import open_reader
from shoal.bus import Bus
from shoal.errors import Refused
from shoal.ops.canary import canary_controller
from shoal.ops.connect import resolve_url
from shoal.ops.services import CORE, QUERY
from shoal.projections.service import serving

__all__ = ["LocalPlatform", "local_platform"]


class LocalPlatform:
    """Handle on the core serving this command: wait until it has ingested the log."""

    def __init__(self, bus: Bus) -> None:
        self.bus = bus

    async def caught_up(self, timeout: float = 30.0) -> int:
        """Wait until the core's recorded position reaches the event log's last sequence."""
        info = await self.bus.js.stream_info(self.bus.topology.events.name)
        target = info.state.last_seq
        # Every partition of a partitioned core (``shoal up`` with SHOAL_CORE_PARTITIONS).
        core = await asyncio.to_thread(open_reader, self.bus.settings)
        upstream = self.bus.topology.events.name
        try:
            deadline = time.monotonic() + timeout
            while True:
                position = await asyncio.to_thread(
                    lambda: min(s.max_tracking_id(upstream) for s in core.stores)
                )
                if position >= target:
                    return position
                if time.monotonic() > deadline:
                    raise Refused(
                        f"the core ingested up to seq {position} of {target} within {timeout:g}s"
                    )
                await asyncio.sleep(0.05)
        finally:
            await asyncio.to_thread(core.close)


@asynccontextmanager
async def local_platform(bus: Bus) -> AsyncIterator[LocalPlatform]:
    """The core and the query service for this command: reused if running, else in-process."""
    settings = bus.settings
    async with AsyncExitStack() as stack:
        if CORE.pid(settings) is None:
            stop, ready = asyncio.Event(), asyncio.Event()
            url, count = resolve_url(settings), settings.core_partitions
            # The core as ``shoal core`` would run it with these settings (docs/scale.md).
            run = (
                run_partitioned(settings, url, stop, count, ready=ready)
                if count > 1
                else run_core(settings, url, stop, ready=ready, verdicts=canary_controller)
            )
            core = asyncio.create_task(run)

            async def stop_core() -> None:
                stop.set()
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.wait_for(core, settings.request_timeout * 2)

            stack.push_async_callback(stop_core)
            started = asyncio.create_task(ready.wait())
            await asyncio.wait([core, started], return_when=asyncio.FIRST_COMPLETED)
            if core.done():  # it failed to start: say why
                started.cancel()
                core.result()
        if QUERY.pid(settings) is None:
            await stack.enter_async_context(serving(settings, bus.nc))
        yield LocalPlatform(bus)

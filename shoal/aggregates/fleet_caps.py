"""Fleet spend caps as fleet specs set them, for the core to enforce.

A fleet spec's ``budget_usd`` reaches the fleets KV bucket in the fleet's desired document
(:class:`~shoal.schemas.fleet.FleetDesired`), written on every fleet command. The core
watches that bucket with :class:`FleetCaps` and keeps ``fleet → cap`` in a dict the
processor reads on every priced model call (:attr:`CoreProcessor.fleet_caps
<shoal.aggregates.processor.CoreProcessor.fleet_caps>`): when a fleet's spend goes over it,
the core records ``FleetSpend.BudgetExceeded``, publishes ``budget.exceeded`` and sets the
kill switch ``fleet.<name>``. A spec's cap wins over the price table's ``fleet_budgets``
entry for the same fleet; a spec without ``budget_usd`` leaves the price table's in force.

The dict is changed key by key from the event loop while the fold thread reads it: single
dict operations are atomic in CPython, so the fold sees the old cap or the new one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from decimal import Decimal

from nats.js.kv import KV_DEL, KV_PURGE, KeyValue
from pydantic import ValidationError

from shoal.schemas.fleet import FleetDesired

__all__ = ["FleetCaps"]

log = logging.getLogger("shoal.core")


class FleetCaps:
    """Keeps ``caps`` equal to the ``budget_usd`` of every fleet document in the bucket."""

    def __init__(self, kv: KeyValue, caps: dict[str, Decimal]) -> None:
        self.kv = kv
        self.caps = caps
        self._ready = asyncio.Event()
        self._watcher: KeyValue.KeyWatcher | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self, timeout: float) -> None:
        """Watch the bucket; return once every current document has been read."""
        self._watcher = await self.kv.watchall()
        self._task = asyncio.create_task(self._follow(self._watcher), name="fleet-caps")
        await asyncio.wait_for(self._ready.wait(), timeout)

    async def stop(self) -> None:
        if self._watcher is not None:
            with contextlib.suppress(Exception):
                await self._watcher.stop()  # type: ignore[no-untyped-call]
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _follow(self, watcher: KeyValue.KeyWatcher) -> None:
        async for entry in watcher:
            if entry is None:
                self._ready.set()
                continue
            if entry.operation in (KV_DEL, KV_PURGE):
                self.caps.pop(entry.key, None)
                continue
            try:
                doc = FleetDesired.model_validate_json(entry.value or b"")
            except ValidationError as e:
                log.error("fleet %s: desired state unreadable, cap unchanged: %s", entry.key, e)
                continue
            if doc.budget_usd is None:
                self.caps.pop(doc.fleet, None)
            elif self.caps.get(doc.fleet) != doc.budget_usd:
                self.caps[doc.fleet] = doc.budget_usd
                log.info("fleet %s: spend cap $%s (from its spec)", doc.fleet, doc.budget_usd)

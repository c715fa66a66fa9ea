"""Fleet spend caps as fleet specs set them, for the core to enforce.

A fleet spec's ``budget_usd`` reaches the fleets KV bucket in the fleet's desired document
(:class:`~shoal.schemas.fleet.FleetDesired`), written on every fleet command. The core
mirrors that bucket with :class:`FleetCaps` and keeps ``fleet → cap`` in the dict the
processor reads on every priced model call (``CoreProcessor.fleet_caps``, which starts as
the price table's ``fleet_budgets``): when a fleet's
spend goes over it, the core records ``FleetSpend.BudgetExceeded``, publishes
``budget.exceeded`` and sets the kill switch ``fleet.<name>``. A spec's cap wins over the
price table's ``fleet_budgets`` entry for the same fleet; a spec without ``budget_usd``
leaves the price table's in force.

The dict is changed key by key from the event loop while the fold thread reads it: single
dict operations are atomic in CPython, so the fold sees the old cap or the new one.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from decimal import Decimal

from nats.js.kv import KeyValue
from pydantic import ValidationError

from shoal.bus.kvmirror import KvMirror
from shoal.schemas.fleet import FleetDesired

__all__ = ["FleetCaps"]

log = logging.getLogger("shoal.core")


class FleetCaps:
    """Keeps ``caps`` equal to each fleet document's ``budget_usd``, else ``base``'s cap."""

    def __init__(self, kv: KeyValue, caps: dict[str, Decimal], base: Mapping[str, Decimal]) -> None:
        self.caps = caps
        self.base = dict(base)
        self.mirror = KvMirror(kv, self._changed)

    async def start(self, timeout: float) -> None:
        """Watch the bucket; return once every current document has been read."""
        await self.mirror.start(timeout)

    async def stop(self) -> None:
        await self.mirror.stop()

    def _changed(self, fleet: str) -> None:
        entry = self.mirror.entries.get(fleet)
        budget: Decimal | None = None
        if entry is not None:  # else deleted: the table's cap, if any, applies again
            try:
                budget = FleetDesired.model_validate_json(entry.value).budget_usd
            except ValidationError as e:
                log.error("fleet %s: desired state unreadable, cap unchanged: %s", fleet, e)
                return
        cap = budget if budget is not None else self.base.get(fleet)
        if cap is None:
            self.caps.pop(fleet, None)
        elif self.caps.get(fleet) != cap:
            self.caps[fleet] = cap
            source = "its spec" if budget is not None else "the price table"
            log.info("fleet %s: spend cap $%s (from %s)", fleet, cap, source)

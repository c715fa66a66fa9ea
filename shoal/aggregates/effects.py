"""What a folded batch does outside the store: dead letters, budget events, kill switches.

Side effects happen *before* the batch's write: a batch folded again after a crash produces
them again with the same deterministic ids, which JetStream de-duplicates, and a kill switch
written twice is the same switch. Used by the ingestion of each core (or partition) and by
the cross-partition spend aggregator (:mod:`shoal.aggregates.spendagg`).
"""

from __future__ import annotations

import logging

from shoal.aggregates.batch import DeadLetter, Flag
from shoal.aggregates.budgets import BudgetCrossing
from shoal.aggregates.trust import CORE_SOURCE
from shoal.bus import Bus, KillSwitch, kill_key
from shoal.schemas import BudgetExceeded, CloudEvent, SessionFlagged

__all__ = ["SideEffects"]

log = logging.getLogger("shoal.core")


class SideEffects:
    """Carries out a batch's dead letters, budget crossings and flags on the bus."""

    def __init__(self, bus: Bus) -> None:
        self.bus = bus

    async def apply(
        self, dead_letters: list[DeadLetter], crossings: list[BudgetCrossing], flags: list[Flag]
    ) -> None:
        for dl in dead_letters:
            log.warning("dead-lettered #%d on %s: %s", dl.seq, dl.subject, dl.reason)
            await self.bus.deadletter("events", dl.data, dl.reason, dl.subject)
        await self.budget_exceeded(crossings)
        for f in flags:
            data = SessionFlagged(flag="looping", reason=f.reason)
            await self.bus.publish(
                CloudEvent.new(data, iid=f.iid, gid=f.gid, source=CORE_SOURCE, id=f.event_id)
            )

    async def budget_exceeded(self, crossings: list[BudgetCrossing]) -> None:
        """Publish ``budget.exceeded`` and set the scope's kill switch, for each crossing."""
        if not crossings:
            return
        kill = await self.bus.kv(self.bus.topology.kill.name)
        for c in crossings:
            log.warning(
                "budget exceeded: %s %s (%s > %s)", c.scope, c.key, c.spent_usd, c.budget_usd
            )
            data = BudgetExceeded(
                scope=c.scope, key=c.key, budget_usd=c.budget_usd, spent_usd=c.spent_usd
            )
            event = CloudEvent.new(
                data, iid=c.iid, gid=c.gid, fleet=c.fleet, source=CORE_SOURCE, id=c.event_id
            )
            await self.bus.publish(event)
            switch = KillSwitch(
                scope=c.scope,
                name=c.key,
                reason=f"budget ${c.budget_usd} exceeded: spent ${c.spent_usd}",
                by=CORE_SOURCE,
                at=event.time,
            )
            await kill.put(kill_key(c.scope, c.key), switch.model_dump_json().encode())

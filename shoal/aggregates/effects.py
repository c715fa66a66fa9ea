"""The side effects of a folded batch, carried out before it is written.

Dead letters, ``budget.exceeded`` and the scope's kill switch, ``session.flagged``, the
core's verdicts (``evaluation.regressed|passed``) and whatever acts on them (the canary
controller). Each is idempotent: a batch folded again after a crash produces the same
events with the same deterministic ids, which JetStream de-duplicates; a kill switch
written twice is the same switch; a canary already promoted or rolled back refuses a
second verdict. Used by the ingestion of each core (or partition) and by the
cross-partition spend aggregator (:mod:`shoal.aggregates.spendagg`).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from shoal.aggregates.batch import FoldResult
from shoal.aggregates.budgets import BudgetCrossing
from shoal.aggregates.cohorts import Verdict
from shoal.aggregates.trust import CORE_SOURCE
from shoal.bus import Bus, KillSwitch, kill_key
from shoal.schemas import (
    BudgetExceeded,
    CloudEvent,
    EvaluationPassed,
    EvaluationRegressed,
    SessionFlagged,
)

__all__ = ["SideEffects", "VerdictHandler"]

log = logging.getLogger("shoal.core")

VerdictHandler = Callable[[list[Verdict]], Awaitable[None]]
"""Acts on a batch's verdicts before it is written (the canary controller); must be
idempotent: after a crash the same verdicts come again."""


class SideEffects:
    """Carries out what a batch's fold asked for, on the bus."""

    def __init__(self, bus: Bus, on_verdicts: VerdictHandler | None = None) -> None:
        self.bus = bus
        self.on_verdicts = on_verdicts

    async def carry_out(self, result: FoldResult) -> None:
        """Every side effect of ``result``, in order; raises if one cannot be carried out."""
        for dl in result.dead_letters:
            log.warning("dead-lettered #%d on %s: %s", dl.seq, dl.subject, dl.reason)
            await self.bus.deadletter("events", dl.data, dl.reason, dl.subject)
        await self.budget_exceeded(result.crossings)
        for f in result.flags:
            data = SessionFlagged(flag="looping", reason=f.reason)
            await self.bus.publish(
                CloudEvent.new(data, iid=f.iid, gid=f.gid, source=CORE_SOURCE, id=f.event_id)
            )
        for v in result.verdicts:
            await self._verdict(v)
        if result.verdicts and self.on_verdicts is not None:
            await self.on_verdicts(result.verdicts)

    async def _verdict(self, v: Verdict) -> None:
        e = v.evidence
        log.warning(
            "evaluation %s: %s/%s %s -> %s (%d/%d against %d/%d, p=%s)",
            v.verdict, v.fleet, v.agent, e["from_version"], e["to_version"],
            e["successes_a"], e["n_a"], e["successes_b"], e["n_b"], e["p_value"],
        )  # fmt: skip
        kind = EvaluationRegressed if v.verdict == "regressed" else EvaluationPassed
        data = kind(fleet=v.fleet, agent=v.agent, **e)
        await self.bus.publish(
            CloudEvent.new(data, iid=v.event_id, source=CORE_SOURCE, id=v.event_id)
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

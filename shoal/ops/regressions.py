"""Open regressions: what the core flagged (``evaluation.regressed``) that still runs.

Read over NATS, like the rest of ``shoal status`` and the console: the core's verdicts from
the event log, the fleets' desired state from their bucket. A regression is open while the
fleet still runs the worse version (as its version, or as its canary); a roll-back, a canary
rolled back by the core, or any later upgrade closes it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from nats.js.errors import NotFoundError
from pydantic import ValidationError

from shoal.bus import Bus
from shoal.schemas import EvaluationRegressed
from shoal.schemas.fleet import FleetDesired

__all__ = ["Regression", "open_regressions"]

CORE_SOURCE = "shoal://core"


@dataclass(frozen=True)
class Regression:
    """One open regression: the core's verdict with its figures, and when it was made."""

    verdict: EvaluationRegressed
    at: datetime

    def line(self) -> str:
        v = self.verdict
        p = "n/a" if v.p_value is None else f"{v.p_value:.2g}"
        return (
            f"{v.fleet}/{v.agent} {v.to_version}: {v.successes_b}/{v.n_b} succeeded against "
            f"{v.from_version} {v.successes_a}/{v.n_a} (p={p})"
        )

    def to_json(self) -> dict[str, Any]:
        return {**self.verdict.model_dump(mode="json"), "at": self.at.isoformat()}


async def open_regressions(bus: Bus) -> list[Regression]:
    """Every ``evaluation.regressed`` whose worse version its fleet still runs."""
    from shoal.ops.fleets import kv_snapshot

    try:
        stored = await bus.read(bus.subjects.events_filter(short_type="evaluation.regressed"))
        docs = await kv_snapshot(await bus.kv(bus.topology.fleets.name))
    except NotFoundError:  # nothing provisioned yet: nothing flagged
        return []
    running: dict[tuple[str, str], set[str]] = {}
    for name, entry in docs.items():
        try:
            doc = FleetDesired.model_validate_json(entry.value or b"")
        except ValidationError:
            continue
        for agent, want in doc.agents.items():
            versions = {want.version} | ({want.canary.version} if want.canary else set())
            running[(name, agent)] = versions
    out = []
    for s in stored:
        ev = s.event
        if ev is None or ev.source != CORE_SOURCE or not isinstance(ev.data, EvaluationRegressed):
            continue  # only the core's own verdicts (the core dead-letters any other)
        d = ev.data
        if d.to_version not in running.get((d.fleet, d.agent), set()):
            continue  # rolled back or upgraded since
        out.append(Regression(d, ev.time))
    return out

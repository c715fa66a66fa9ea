"""Open regressions: what the core flagged (``evaluation.regressed``) that still runs.

Read over NATS, like the rest of ``shoal status`` and the console: the core's verdicts from
the event log, the fleets' desired state from their bucket. A regression is open while the
fleet still runs the worse version (as its version, or as its canary); a roll-back, a canary
rolled back by the core, or any later upgrade closes it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

from nats.js.errors import NotFoundError
from pydantic import ValidationError

from shoal.bus import Bus
from shoal.schemas import EvaluationRegressed
from shoal.schemas.fleet import FleetDesired

__all__ = ["Regression", "open_regressions"]

CORE_SOURCE = "shoal://core"
_FIGURES = (
    "fleet", "agent", "from_version", "to_version", "successes_a", "n_a", "successes_b", "n_b",
    "p_value", "canary",
)  # fmt: skip


@dataclass(frozen=True)
class Regression:
    """One open regression, with the figures the core decided on."""

    fleet: str
    agent: str
    from_version: str
    to_version: str
    successes_a: int
    n_a: int
    successes_b: int
    n_b: int
    p_value: float | None
    canary: bool
    at: datetime

    def line(self) -> str:
        return (
            f"{self.fleet}/{self.agent} {self.to_version}: {self.successes_b}/{self.n_b} "
            f"succeeded against {self.from_version} {self.successes_a}/{self.n_a} "
            f"(p={self.p_value:.2g})"
            if self.p_value is not None
            else f"{self.fleet}/{self.agent} {self.to_version}"
        )

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "at": self.at.isoformat()}


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
        figures = d.model_dump(include=set(_FIGURES))
        out.append(Regression(**figures, at=ev.time))
    return out

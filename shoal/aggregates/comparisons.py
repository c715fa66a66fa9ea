"""Which versions the core compares, from the fleets' desired state.

The fleets KV bucket holds each fleet's desired document (written from the Fleet
aggregate). For every agent the core compares at most one pair of versions:

- a canary in progress (``fleet upgrade --canary``): the agent's version (A) against the
  canary's (B), judged once both have the canary's ``min_samples`` outcomes;
- otherwise, after an upgrade: the previous version (A) against the current one (B), with
  ``settings.regression_min_samples``.

:class:`FleetComparisons` keeps ``(fleet, agent) → Comparison`` equal to the bucket, in the
dict the fold reads (``CoreProcessor.comparisons``); like the fleet caps, it is changed key
by key from the event loop while the fold thread reads it (single dict operations are atomic
in CPython).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from nats.js.kv import KeyValue
from pydantic import ValidationError

from shoal.bus.kvmirror import KvMirror
from shoal.schemas.fleet import DesiredAgent, FleetDesired

__all__ = ["Comparison", "FleetComparisons", "comparison_of"]

log = logging.getLogger("shoal.core")


@dataclass(frozen=True)
class Comparison:
    """Cohort A (``from_version``) against cohort B (``to_version``) of one agent."""

    fleet: str
    agent: str
    from_version: str
    to_version: str
    min_samples: int
    canary: bool


def comparison_of(fleet: str, agent: str, d: DesiredAgent, min_samples: int) -> Comparison | None:
    """What the core compares for one agent's desired state, if anything."""
    if d.canary is not None:
        return Comparison(fleet, agent, d.version, d.canary.version, d.canary.min_samples, True)
    if d.previous_version is not None and d.previous_version != d.version:
        return Comparison(fleet, agent, d.previous_version, d.version, min_samples, False)
    return None


class FleetComparisons:
    """Keeps ``comparisons`` equal to what every fleet document calls for."""

    def __init__(
        self, kv: KeyValue, comparisons: dict[tuple[str, str], Comparison], min_samples: int
    ) -> None:
        self.comparisons = comparisons
        self.min_samples = min_samples
        self.mirror = KvMirror(kv, self._changed)

    async def start(self, timeout: float) -> None:
        """Watch the bucket; return once every current document has been read."""
        await self.mirror.start(timeout)

    async def stop(self) -> None:
        await self.mirror.stop()

    def desired(self) -> list[FleetDesired]:
        """Every readable fleet document, as last seen."""
        out = []
        for fleet, entry in sorted(self.mirror.entries.items()):
            try:
                out.append(FleetDesired.model_validate_json(entry.value))
            except ValidationError as e:
                log.error("fleet %s: desired state unreadable: %s", fleet, e)
        return out

    def _changed(self, fleet: str) -> None:
        entry = self.mirror.entries.get(fleet)
        wanted: dict[tuple[str, str], Comparison] = {}
        if entry is not None:
            try:
                doc = FleetDesired.model_validate_json(entry.value)
            except ValidationError as e:
                log.error("fleet %s: desired state unreadable, comparisons unchanged: %s", fleet, e)
                return
            for agent, d in doc.agents.items():
                c = comparison_of(fleet, agent, d, self.min_samples)
                if c is not None:
                    wanted[(fleet, agent)] = c
        for key in [k for k in self.comparisons if k[0] == fleet and k not in wanted]:
            self.comparisons.pop(key, None)
        for key, c in wanted.items():
            if self.comparisons.get(key) != c:
                self.comparisons[key] = c
                kind = "canary" if c.canary else "upgrade"
                log.info(
                    "fleet %s/%s: comparing %s %s -> %s",
                    fleet,
                    key[1],
                    kind,
                    c.from_version,
                    c.to_version,
                )

"""What the Fleet aggregate knows of each of its agents: run, replicas, history, canary.

Plain state changed only by :class:`~shoal.aggregates.fleet.Fleet`'s event methods.
"""

from __future__ import annotations

from dataclasses import dataclass

from shoal.schemas.fleet import DesiredCanary
from shoal.schemas.manifest import CapabilityManifest

__all__ = ["DEFAULT_CANARY_SAMPLES", "AgentState", "CanaryState", "canary_count"]

DEFAULT_CANARY_SAMPLES = 20
"""Outcomes each cohort needs before the core judges a canary: below about 20 a success rate
of 1.0 against 0.4 is still too few expected failures for the normal test (shoal.stats)."""


@dataclass(frozen=True)
class CanaryState:
    """A canary in progress: ``replicas`` slots run ``version`` until the core's verdict."""

    version: str
    target: str
    replicas: int
    min_samples: int

    def desired(self) -> DesiredCanary:
        return DesiredCanary(
            version=self.version,
            target=self.target,
            replicas=self.replicas,
            min_samples=self.min_samples,
        )


class AgentState:
    """What the fleet knows of one of its agents: run target, version, replicas, manifest
    override, history, and the canary in progress, if any."""

    def __init__(
        self,
        target: str,
        version: str,
        replicas: int,
        concurrency: int,
        manifest: CapabilityManifest | None = None,
    ) -> None:
        self.target = target
        self.version = version
        self.replicas = replicas
        self.concurrency = concurrency
        self.manifest = manifest
        # (version, target) pairs this agent ran before, oldest first: rollback pops the last.
        self.previous: list[tuple[str, str]] = []
        self.canary: CanaryState | None = None


def canary_count(canary: str, replicas: int) -> int:
    """``"2"`` or ``"25%"`` of ``replicas`` as a slot count (a percentage rounds up).

    Raises :class:`ValueError` naming the value when it is neither.
    """
    text = canary.strip()
    try:
        if text.endswith("%"):
            pct = float(text[:-1])
            if not 0 < pct < 100:
                raise ValueError
            return max(1, -(-int(pct * replicas) // 100))
        return int(text)
    except ValueError:
        raise ValueError(f"--canary {canary!r} is not a count (2) or a percentage (25%)") from None

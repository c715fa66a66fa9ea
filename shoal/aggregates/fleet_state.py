"""What the Fleet aggregate knows of each of its agents: run, replicas, history, canary.

Plain state changed only by :class:`~shoal.aggregates.fleet.Fleet`'s event methods.
"""

from __future__ import annotations

from dataclasses import dataclass

from shoal.schemas.fleet import DEFAULT_CANARY_SAMPLES, DesiredCanary, canary_count
from shoal.schemas.manifest import CapabilityManifest

__all__ = ["DEFAULT_CANARY_SAMPLES", "AgentState", "CanaryState", "canary_count"]


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
        command: tuple[str, ...] | None = None,
    ) -> None:
        self.target = target
        self.version = version
        self.replicas = replicas
        self.concurrency = concurrency
        self.manifest = manifest
        self.command = command  # a non-Python agent's argv (then target is "")
        self.capabilities: tuple[str, ...] = ()
        # (version, target, command) this agent ran before, oldest first: rollback pops the
        # last. The events carry version and target; the command comes from the spec applied.
        self.previous: list[tuple[str, str, tuple[str, ...] | None]] = []
        self.canary: CanaryState | None = None

    def remember(self) -> None:
        """Keep what runs now as the version a rollback returns to."""
        self.previous.append((self.version, self.target, self.command))

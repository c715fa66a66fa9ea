"""The event-sourced Fleet: every lifecycle command an operator gives a fleet, as an event.

Commands (apply, start, stop, scale, upgrade, rollback, and a canary's promote or abort) are
validated against the fleet's
current state first and refused with :class:`~shoal.errors.Refused` when they cannot apply;
only then is an event triggered. Each event carries who (``by``) and why (``reason``); the
library stamps when. The fleets KV document that supervisors watch is derived from this
aggregate's state (:meth:`Fleet.desired`), never written from anywhere else.
"""

from __future__ import annotations

from typing import Any
from uuid import NAMESPACE_URL, UUID, uuid5

from eventsourcing.domain import Aggregate, event

from shoal.aggregates.fleet_state import DEFAULT_CANARY_SAMPLES, AgentState, CanaryState
from shoal.errors import Refused
from shoal.schemas.fleet import (
    DesiredAgent,
    FleetDesired,
    FleetSpec,
    check_replicas,
    check_target,
    check_version,
)

__all__ = ["AgentState", "Fleet"]


class Fleet(Aggregate):
    """A named group of agents and the operator commands that shaped it."""

    class Registered(Aggregate.Created):
        name: str
        spec: dict[str, Any]
        by: str
        reason: str

    class Applied(Aggregate.Event):
        spec: dict[str, Any]
        by: str
        reason: str

    class Started(Aggregate.Event):
        by: str
        reason: str

    class Stopped(Aggregate.Event):
        by: str
        reason: str

    class Scaled(Aggregate.Event):
        replicas: dict[str, int]
        by: str
        reason: str

    class Upgraded(Aggregate.Event):
        agent: str
        version: str
        target: str
        by: str
        reason: str

    class RolledBack(Aggregate.Event):
        agent: str
        version: str
        target: str
        by: str
        reason: str

    class CanaryStarted(Aggregate.Event):
        """``replicas`` slots of ``agent`` run ``version``; the rest keep theirs."""

        agent: str
        version: str
        target: str
        replicas: int
        min_samples: int
        by: str
        reason: str

    class CanaryPromoted(Aggregate.Event):
        """The canary cohort was not worse: every slot runs ``version`` now."""

        agent: str
        version: str
        evidence: dict[str, Any]
        by: str
        reason: str

    class CanaryRolledBack(Aggregate.Event):
        """The canary of ``version`` ended (worse, or an operator's rollback): its slots run
        the agent's version again."""

        agent: str
        version: str
        evidence: dict[str, Any]
        by: str
        reason: str

    @staticmethod
    def create_id(name: str, **_: Any) -> UUID:
        """One aggregate per fleet name, so applying a spec twice finds the same fleet."""
        return uuid5(NAMESPACE_URL, f"shoal:fleet:{name}")

    @event(Registered)
    def __init__(self, name: str, spec: dict[str, Any], by: str, reason: str) -> None:
        self.name = name
        self.running = True
        self.agents: dict[str, AgentState] = {}
        self.spec = FleetSpec.model_validate(spec)
        self._take_spec(self.spec)
        self.updated_by = by

    # -- commands: validate against state, then trigger ------------------------------------
    def apply(self, spec: FleetSpec, by: str, reason: str = "") -> None:
        """Replace the spec: agents added or removed, replicas and versions as written."""
        if spec.fleet != self.name:
            raise Refused(f"spec is for fleet {spec.fleet!r}, not {self.name!r}")
        self._applied(spec=spec.model_dump(mode="json"), by=by, reason=reason)

    def start(self, by: str, reason: str = "") -> None:
        if self.running:
            raise Refused(f"fleet {self.name} is already running")
        self._started(by=by, reason=reason)

    def stop(self, by: str, reason: str = "") -> None:
        if not self.running:
            raise Refused(f"fleet {self.name} is already stopped")
        self._stopped(by=by, reason=reason)

    def scale(self, replicas: dict[str, int], by: str, reason: str = "") -> None:
        if not replicas:
            raise Refused("scale needs at least one AGENT=N")
        if not self.running:
            raise Refused(f"fleet {self.name} is stopped: start it before scaling")
        for agent, count in replicas.items():
            self._agent(agent)
            check_replicas(agent, count)  # the spec's limit: scale cannot exceed what apply may
        self._scaled(replicas=dict(replicas), by=by, reason=reason)

    def upgrade(
        self,
        agent: str,
        version: str,
        by: str,
        reason: str = "",
        target: str | None = None,
        canary: int | None = None,
        min_samples: int = DEFAULT_CANARY_SAMPLES,
    ) -> None:
        """Roll ``agent`` to ``version``; with ``canary``, only that many slots until the
        core's verdict (docs/canary.md)."""
        state = self._agent(agent)
        check_version(version)
        if target is not None:
            if state.command is not None:
                raise Refused(
                    f"{self.name}/{agent} runs a command, not a Python target: "
                    "apply a spec to change what it runs"
                )
            check_target(target)
        if state.canary is not None:
            raise Refused(
                f"{self.name}/{agent} has a canary of {state.canary.version} in progress: "
                f"wait for its verdict or 'shoal fleet rollback {self.name} {agent}'"
            )
        if version == state.version and (target is None or target == state.target):
            raise Refused(f"{self.name}/{agent} already runs version {version}")
        if canary is not None:
            if not 1 <= canary < state.replicas:
                raise Refused(
                    f"a canary of {self.name}/{agent} needs 1 to {state.replicas - 1} slots "
                    f"(it has {state.replicas} replicas), not {canary}"
                )
            if min_samples < 1:
                raise Refused(f"--min-samples must be at least 1, not {min_samples}")
            self._canary_started(
                agent=agent,
                version=version,
                target=target or state.target,
                replicas=canary,
                min_samples=min_samples,
                by=by,
                reason=reason,
            )
            return
        self._upgraded(
            agent=agent, version=version, target=target or state.target, by=by, reason=reason
        )

    def promote(
        self, agent: str, version: str, evidence: dict[str, Any], by: str, reason: str = ""
    ) -> None:
        """End the canary of ``version`` by rolling every slot to it."""
        self._open_canary(agent, version)
        self._canary_promoted(agent=agent, version=version, evidence=evidence, by=by, reason=reason)

    def abort_canary(
        self, agent: str, version: str, evidence: dict[str, Any], by: str, reason: str = ""
    ) -> None:
        """End the canary of ``version``: its slots go back to the agent's version."""
        self._open_canary(agent, version)
        self._canary_rolled_back(
            agent=agent, version=version, evidence=evidence, by=by, reason=reason
        )

    def _open_canary(self, agent: str, version: str) -> CanaryState:
        canary = self._agent(agent).canary
        if canary is None or canary.version != version:
            raise Refused(f"{self.name}/{agent} has no canary of {version} in progress")
        return canary

    def rollback(self, agent: str, by: str, reason: str = "") -> None:
        state = self._agent(agent)
        if state.canary is not None:  # rolling back a canary ends it; the rest never moved
            version = state.canary.version
            self._canary_rolled_back(
                agent=agent, version=version, evidence={}, by=by, reason=reason
            )
            return
        if not state.previous:
            raise Refused(f"{self.name}/{agent} has no previous version to roll back to")
        version, target, _ = state.previous[-1]
        self._rolled_back(agent=agent, version=version, target=target, by=by, reason=reason)

    # -- events: the only place state changes -----------------------------------------------
    @event(Applied)
    def _applied(self, spec: dict[str, Any], by: str, reason: str) -> None:
        self.spec = FleetSpec.model_validate(spec)
        self._take_spec(self.spec)
        self.updated_by = by

    @event(Started)
    def _started(self, by: str, reason: str) -> None:
        self.running = True
        self.updated_by = by

    @event(Stopped)
    def _stopped(self, by: str, reason: str) -> None:
        self.running = False
        self.updated_by = by

    @event(Scaled)
    def _scaled(self, replicas: dict[str, int], by: str, reason: str) -> None:
        for agent, count in replicas.items():
            self.agents[agent].replicas = count
        self.updated_by = by

    @event(Upgraded)
    def _upgraded(self, agent: str, version: str, target: str, by: str, reason: str) -> None:
        state = self.agents[agent]
        state.remember()
        state.version, state.target = version, target
        self.updated_by = by

    @event(RolledBack)
    def _rolled_back(self, agent: str, version: str, target: str, by: str, reason: str) -> None:
        state = self.agents[agent]
        _, _, state.command = state.previous.pop()
        state.version, state.target = version, target
        self.updated_by = by

    @event(CanaryStarted)
    def _canary_started(
        self,
        agent: str,
        version: str,
        target: str,
        replicas: int,
        min_samples: int,
        by: str,
        reason: str,
    ) -> None:
        self.agents[agent].canary = CanaryState(version, target, replicas, min_samples)
        self.updated_by = by

    @event(CanaryPromoted)
    def _canary_promoted(
        self, agent: str, version: str, evidence: dict[str, Any], by: str, reason: str
    ) -> None:
        state = self.agents[agent]
        assert state.canary is not None
        state.remember()
        state.version, state.target, state.canary = version, state.canary.target, None
        self.updated_by = by

    @event(CanaryRolledBack)
    def _canary_rolled_back(
        self, agent: str, version: str, evidence: dict[str, Any], by: str, reason: str
    ) -> None:
        self.agents[agent].canary = None
        self.updated_by = by

    # -- derived ------------------------------------------------------------------------------
    def desired(self) -> FleetDesired:
        """The fleets-bucket document supervisors reconcile to."""
        return FleetDesired(
            fleet=self.name,
            running=self.running,
            generation=self.version,
            agents={
                name: DesiredAgent(
                    target=s.target,
                    version=s.version,
                    replicas=s.replicas,
                    concurrency=s.concurrency,
                    manifest=s.manifest,
                    previous_version=s.previous[-1][0] if s.previous else None,
                    canary=s.canary.desired() if s.canary else None,
                    command=s.command,
                    capabilities=s.capabilities,
                )
                for name, s in self.agents.items()
            },
            description=self.spec.description,
            rollout=self.spec.rollout,
            budget_usd=self.spec.budget_usd,
            updated_by=self.updated_by,
            updated_at=self.modified_on,
        )

    def _agent(self, agent: str) -> AgentState:
        try:
            return self.agents[agent]
        except KeyError:
            known = ", ".join(sorted(self.agents)) or "none"
            raise Refused(f"fleet {self.name} has no agent {agent!r} (agents: {known})") from None

    def _take_spec(self, spec: FleetSpec) -> None:
        # Applying a spec is declarative: replicas and versions become what it says; a
        # changed version, target or command counts as an upgrade (the old one can be rolled
        # back to).
        agents: dict[str, AgentState] = {}
        for a in spec.agents:
            target = a.target or ""
            state = self.agents.get(a.name) or AgentState(
                target, a.version, a.replicas, a.concurrency, command=a.command
            )
            if (state.version, state.target, state.command) != (a.version, target, a.command):
                state.remember()
            state.version, state.target, state.command = a.version, target, a.command
            state.replicas, state.concurrency = a.replicas, a.concurrency
            state.manifest, state.capabilities = a.manifest, a.capabilities or ()
            state.canary = None  # the spec says what runs: applying it ends a canary
            agents[a.name] = state
        self.agents = agents

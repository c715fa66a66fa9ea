"""The event-sourced Fleet: every lifecycle command an operator gives a fleet, as an event.

Commands (apply, start, stop, scale, upgrade, rollback) are validated against the fleet's
current state first and refused with :class:`~shoal.errors.Refused` when they cannot apply;
only then is an event triggered. Each event carries who (``by``) and why (``reason``); the
library stamps when. The fleets KV document that supervisors watch is derived from this
aggregate's state (:meth:`Fleet.desired`), never written from anywhere else.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import NAMESPACE_URL, UUID, uuid5

from eventsourcing.application import AggregateNotFoundError, Application
from eventsourcing.domain import Aggregate, event
from eventsourcing.persistence import IntegrityError

from shoal.errors import NotFound, Refused
from shoal.schemas.fleet import (
    DesiredAgent,
    FleetDesired,
    FleetSpec,
    check_replicas,
    check_target,
    check_version,
)
from shoal.schemas.manifest import CapabilityManifest

__all__ = ["AgentState", "Fleet", "FleetApplication", "FleetHistoryEntry"]


class AgentState:
    """What the fleet knows of one of its agents: run target, version, replicas, manifest
    override, history."""

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

    def remember(self) -> None:
        """Keep what runs now as the version a rollback returns to."""
        self.previous.append((self.version, self.target, self.command))


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
        self, agent: str, version: str, by: str, reason: str = "", target: str | None = None
    ) -> None:
        state = self._agent(agent)
        check_version(version)
        if target is not None:
            if state.command is not None:
                raise Refused(
                    f"{self.name}/{agent} runs a command, not a Python target: "
                    "apply a spec to change what it runs"
                )
            check_target(target)
        if version == state.version and (target is None or target == state.target):
            raise Refused(f"{self.name}/{agent} already runs version {version}")
        self._upgraded(
            agent=agent, version=version, target=target or state.target, by=by, reason=reason
        )

    def rollback(self, agent: str, by: str, reason: str = "") -> None:
        state = self._agent(agent)
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
            agents[a.name] = state
        self.agents = agents


@dataclass(frozen=True)
class FleetHistoryEntry:
    """One recorded command: what, who, when, why, and its details."""

    version: int
    at: datetime
    command: str
    by: str
    reason: str
    detail: dict[str, Any]


_COMMANDS: dict[type[Aggregate.Event], str] = {
    Fleet.Registered: "apply",
    Fleet.Applied: "apply",
    Fleet.Started: "start",
    Fleet.Stopped: "stop",
    Fleet.Scaled: "scale",
    Fleet.Upgraded: "upgrade",
    Fleet.RolledBack: "rollback",
}


class FleetApplication(Application[UUID]):
    """Fleets, persisted with the ``eventsourcing`` library (SQLite or PostgreSQL).

    Synchronous, like the library; async callers cross with ``asyncio.to_thread``.
    """

    name = "fleets"

    def get_fleet(self, name: str) -> Fleet:
        """The fleet called ``name``; :class:`NotFound` if it was never applied."""
        try:
            fleet: Aggregate = self.repository.get(Fleet.create_id(name))
        except AggregateNotFoundError:
            raise NotFound(f"no fleet named {name!r}: apply a spec first") from None
        assert isinstance(fleet, Fleet)
        return fleet

    def exists(self, name: str) -> bool:
        return Fleet.create_id(name) in self.repository

    def apply_spec(self, spec: FleetSpec, by: str, reason: str = "") -> Fleet:
        """Register a new fleet, or apply the spec to the existing one."""

        def change() -> Fleet:
            if not self.exists(spec.fleet):
                return Fleet(spec.fleet, spec.model_dump(mode="json"), by, reason)
            fleet = self.get_fleet(spec.fleet)
            fleet.apply(spec, by, reason)
            return fleet

        return self._save_fresh(spec.fleet, change)

    def command(self, name: str, verb: str, by: str, reason: str = "", **args: Any) -> Fleet:
        """Run one lifecycle command (start, stop, scale, upgrade, rollback) and save it."""

        def change() -> Fleet:
            fleet = self.get_fleet(name)
            if verb == "start":
                fleet.start(by, reason)
            elif verb == "stop":
                fleet.stop(by, reason)
            elif verb == "scale":
                fleet.scale(args["replicas"], by, reason)
            elif verb == "upgrade":
                target = args.get("target")
                fleet.upgrade(args["agent"], args["version"], by, reason, target=target)
            elif verb == "rollback":
                fleet.rollback(args["agent"], by, reason)
            else:
                raise ValueError(f"unknown fleet command {verb!r}")
            return fleet

        return self._save_fresh(name, change)

    def _save_fresh(self, name: str, change: Callable[[], Fleet], attempts: int = 10) -> Fleet:
        # Two operators commanding one fleet at once: the second save conflicts on the
        # aggregate's version. Re-read and re-validate against the new state, then retry
        # after a jittered back-off, so two retrying writers stop colliding in lockstep.
        for attempt in range(attempts):
            fleet = change()
            try:
                self.save(fleet)
            except IntegrityError:
                time.sleep(random.uniform(0, 0.002 * 2**attempt))
                continue
            return fleet
        raise Refused(f"fleet {name} kept changing under this command; try again")

    def history(self, name: str) -> list[FleetHistoryEntry]:
        """Every command recorded on the fleet, oldest first."""
        fleet_id = Fleet.create_id(name)
        entries = []
        for e in self.events.get(fleet_id):
            assert isinstance(e, Aggregate.Event)
            data = {k: v for k, v in e.__dict__.items() if k not in _ENVELOPE}
            entries.append(
                FleetHistoryEntry(
                    version=e.originator_version,
                    at=e.timestamp,
                    command=_COMMANDS.get(type(e), type(e).__name__),
                    by=str(data.pop("by", "")),
                    reason=str(data.pop("reason", "")),
                    detail=data,
                )
            )
        if not entries:
            raise NotFound(f"no fleet named {name!r}: apply a spec first")
        return entries


_ENVELOPE = frozenset({"originator_id", "originator_version", "timestamp", "originator_topic"})

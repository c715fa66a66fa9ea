"""The fleets application: Fleet aggregates persisted with the ``eventsourcing`` library,
the commands that change them and the history they keep.

The aggregate itself is :mod:`shoal.aggregates.fleet_aggregate` (re-exported here).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

from eventsourcing.application import AggregateNotFoundError, Application
from eventsourcing.domain import Aggregate
from eventsourcing.persistence import IntegrityError

from shoal.aggregates.fleet_aggregate import AgentState, Fleet
from shoal.aggregates.fleet_state import DEFAULT_CANARY_SAMPLES
from shoal.errors import NotFound, Refused
from shoal.schemas.fleet import FleetSpec

__all__ = ["AgentState", "Fleet", "FleetApplication", "FleetHistoryEntry"]


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
    Fleet.CanaryStarted: "canary",
    Fleet.CanaryPromoted: "promote",
    Fleet.CanaryRolledBack: "rollback",
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
        """Run one lifecycle command (start, stop, scale, upgrade, rollback, promote,
        abort_canary) and save it."""

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
                canary = args.get("canary")
                samples = args.get("min_samples") or DEFAULT_CANARY_SAMPLES
                fleet.upgrade(
                    args["agent"],
                    args["version"],
                    by,
                    reason,
                    target=target,
                    canary=canary,
                    min_samples=samples,
                )
            elif verb == "promote":
                fleet.promote(args["agent"], args["version"], args["evidence"], by, reason)
            elif verb == "abort_canary":
                fleet.abort_canary(args["agent"], args["version"], args["evidence"], by, reason)
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

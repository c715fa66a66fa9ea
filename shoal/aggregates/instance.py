"""The Instance aggregate: the core's registry of agent instances it will believe.

An instance exists for the core once its ``agent.started`` has been ingested; events from an
instance the core never saw start, or saw killed, are refused (recorded as rejected on their
session, or dead-lettered when they belong to no session) and not applied. A kill is final
for that instance id: announcing itself again does not bring it back (the operator starts a
new instance instead).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

from eventsourcing.domain import Aggregate, event

from shoal.aggregates.session import stable_id

__all__ = ["Instance", "instance_id"]


def instance_id(instance: str) -> UUID:
    """The aggregate id of the instance with this id (deterministic)."""
    return stable_id("instance", instance)


class Instance(Aggregate):
    """One agent instance: its identity, whether it runs, and whether it was killed."""

    @staticmethod
    def create_id(instance: str) -> UUID:
        return instance_id(instance)

    class Registered(Aggregate.Created):
        """The instance announced itself (``agent.started``)."""

        instance: str
        fleet: str | None
        agent: str | None
        version: str
        capabilities: list[str]
        host: str
        pid: int
        seq: int

    @event(Registered)
    def __init__(
        self,
        instance: str,
        fleet: str | None,
        agent: str | None,
        version: str,
        capabilities: list[str],
        host: str,
        pid: int,
        seq: int,
        timestamp: datetime,
    ) -> None:
        self.instance = instance
        self.fleet, self.agent = fleet, agent
        # ``version`` is the aggregate's own; the agent's release is ``agent_version``.
        self.agent_version, self.capabilities = version, capabilities
        self.host, self.pid = host, pid
        self.status = "running"
        self.starts = 1
        self.killed_by: str | None = None

    class Restarted(Aggregate.Event):
        """The same instance id announced itself again (a restart after a stop or crash)."""

        seq: int
        version: str
        capabilities: list[str]
        host: str
        pid: int

    @event(Restarted)
    def restarted(
        self,
        seq: int,
        version: str,
        capabilities: list[str],
        host: str,
        pid: int,
        timestamp: datetime,
    ) -> None:
        self.agent_version, self.capabilities = version, capabilities
        self.host, self.pid = host, pid
        self.status = "running"
        self.starts += 1

    class Stopped(Aggregate.Event):
        """The instance shut down."""

        seq: int
        reason: str

    @event(Stopped)
    def stopped(self, seq: int, reason: str, timestamp: datetime) -> None:
        self.status = "stopped"

    class Killed(Aggregate.Event):
        """The instance was killed: the core rejects its events from now on."""

        seq: int
        by: str
        reason: str

    @event(Killed)
    def killed(self, seq: int, by: str, reason: str, timestamp: datetime) -> None:
        self.status, self.killed_by = "killed", by

    class CrashLooping(Aggregate.Event):
        """Its supervisor gave up restarting it: it exits at start every time."""

        seq: int
        exits: int
        exit_code: int | None
        message: str

    @event(CrashLooping)
    def crash_looping(
        self, seq: int, exits: int, exit_code: int | None, message: str, timestamp: datetime
    ) -> None:
        self.status = "crashlooping"

    @property
    def trusted(self) -> bool:
        """True unless killed."""
        return self.status != "killed"

    def summary(self) -> dict[str, Any]:
        return {
            "instance": self.instance,
            "fleet": self.fleet,
            "agent": self.agent,
            "version": self.agent_version,
            "status": self.status,
            "starts": self.starts,
        }

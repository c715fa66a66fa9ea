"""Instance slots: the unit supervisors claim, the lease value that reports their state, and
the supervisor's own record of a slot it holds.

A fleet's agent with ``replicas=N`` has slots ``0..N-1``; lease key ``<fleet>.<agent>.<slot>``
in the leases bucket. A supervisor owns a slot while it keeps the lease alive (KV create,
then update with the last revision: compare-and-set) and runs at most one instance in it.
The lease value is a :class:`~shoal.bus.Lease` plus the slot's state, so ``fleet describe``
shows a crash loop or a failed rollout wherever the supervisor runs. Each live supervisor
also renews ``_supervisor.<id>`` (:class:`SupervisorLease`): its capacity and how much of it
is used, so other supervisors share slots fairly and ``fleet describe`` can say why a slot
is still pending.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict

from shoal.bus import Lease, lease_key

__all__ = [
    "SUPERVISOR_KEY_PREFIX",
    "HeldSlot",
    "SlotLease",
    "SlotState",
    "SupervisorLease",
    "supervisor_key",
]

SlotState = Literal[
    "claimed",  # lease held, no instance yet
    "starting",  # process started, no heartbeat yet
    "running",  # heartbeat seen
    "draining",  # SIGTERM sent (scale-down, stop, upgrade); SIGKILL after the grace period
    "backoff",  # exited unexpectedly; restart after an exponential back-off
    "crashloop",  # exited at start too many times in a row: not restarted until desired changes
    "failed",  # a new version did not report its first heartbeat in time (rollout stopped)
    "killed",  # its instance (or fleet) is kill-switched: not restarted while the key exists
]

SUPERVISOR_KEY_PREFIX = "_supervisor"


def supervisor_key(supervisor: str) -> str:
    """Leases-bucket key a live supervisor renews (two tokens: never a slot key)."""
    return f"{SUPERVISOR_KEY_PREFIX}.{supervisor}"


class SlotLease(Lease):
    """A slot's lease: who holds it, which instance runs in it, and in what state.

    ``run`` is the fingerprint of what the instance runs (target, version, concurrency,
    manifest: :meth:`~shoal.schemas.fleet.DesiredAgent.fingerprint`), so a rollout can tell
    a new instance from an old one even when only the manifest changed.
    """

    state: SlotState = "claimed"
    version: str | None = None
    run: str | None = None
    pid: int | None = None
    restarts: int = 0
    exit_code: int | None = None
    message: str = ""


class SupervisorLease(BaseModel):
    """The value of ``_supervisor.<id>``: where a supervisor runs and how full it is."""

    model_config = ConfigDict(extra="ignore")
    host: str
    pid: int
    capacity: int | None = None  # None: written by a supervisor that predates capacities
    capacity_source: str = ""
    held: int = 0
    fleets: list[str] | None = None  # the fleets it serves (None: all)

    @property
    def full(self) -> bool:
        return self.capacity is not None and self.held >= self.capacity


@dataclass
class HeldSlot:
    """A slot this supervisor holds the lease of, and the process it runs there."""

    fleet: str
    agent: str
    index: int
    revision: int
    renewed_at: float
    state: SlotState = "claimed"
    proc: subprocess.Popen[bytes] | None = None
    instance: str | None = None
    version: str | None = None
    target: str | None = None
    run: str | None = None  # fingerprint of what the instance runs
    started_at: float = 0.0
    heartbeat_seen: bool = False
    last_heartbeat: float = 0.0
    failures: int = 0
    restarts: int = 0
    retry_at: float = 0.0
    exit_code: int | None = None
    message: str = ""
    stop_reason: str | None = None
    kill_at: float | None = None
    crashed_on: str | None = None  # the run fingerprint that crash-looped
    dirty: bool = True

    @property
    def key(self) -> str:
        return lease_key(self.fleet, self.agent, self.index)

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def set(self, state: SlotState, message: str) -> None:
        """Change the slot's reported state (the lease is rewritten on the next renewal)."""
        if (self.state, self.message) != (state, message):
            self.state, self.message, self.dirty = state, message, True

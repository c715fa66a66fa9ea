"""Instance slots: the unit supervisors claim, and the lease value that reports their state.

A fleet's agent with ``replicas=N`` has slots ``0..N-1``; lease key ``<fleet>.<agent>.<slot>``
in the leases bucket. A supervisor owns a slot while it keeps the lease alive (KV create,
then update with the last revision: compare-and-set) and runs at most one instance in it.
The lease value is a :class:`~shoal.bus.Lease` plus the slot's state, so ``fleet describe``
shows a crash loop or a failed rollout wherever the supervisor runs.
"""

from __future__ import annotations

from typing import Literal

from shoal.bus import Lease

__all__ = ["SUPERVISOR_KEY_PREFIX", "SlotLease", "SlotState", "supervisor_key"]

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
    """A slot's lease: who holds it, which instance runs in it, and in what state."""

    state: SlotState = "claimed"
    version: str | None = None
    pid: int | None = None
    restarts: int = 0
    exit_code: int | None = None
    message: str = ""

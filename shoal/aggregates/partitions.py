"""Which core partition folds an event: a deterministic map from the event's subject.

With ``--partitions N`` (``SHOAL_CORE_PARTITIONS``) the core runs as N partitions, each with
its own durable consumer, tracking position and store. An event belongs to the partition
``fnv1a32(key) % N`` where ``key`` is its subject's GID token, or its IID token when the GID
token is ``_`` (a bare task): a goal and all of its sessions fold in one partition, so goal
budgets, goal state and the session tree of a goal never cross a partition.

FNV-1a over one token is the hash of NATS's own ``{{partition(N, k)}}`` subject transform, so
a server-side mapping on the GID token agrees with this one where the GID is present.

Instance lifecycle events (``agent.started``, ``agent.stopped``, ``agent.killed``,
``agent.crashlooping``) are *shared*: every partition folds them, because every partition must
know which instances are registered and not killed to trust the events it owns. Their dead
letters are sent by partition 0 only.

The server routes the log with the same map (:mod:`shoal.aggregates.partstream`): each
partition's consumer receives its own events and the shared ones, and the processor still
steps over anything not its own by the subject alone (the partition the token ``_`` hashes to
receives every bare task). Positions stay sequences of the log itself, so the spend
aggregator can merge the partitions' output in log order (:mod:`shoal.aggregates.spendagg`).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from shoal.aggregates.registry import LIFECYCLE_TYPES
from shoal.bus.subjects import NO_GID

__all__ = ["SHARED_TYPES", "Owner", "Partition", "fnv1a32"]

SHARED_TYPES = frozenset(tuple(t.removeprefix("shoal.").split(".")) for t in LIFECYCLE_TYPES)

_FNV_OFFSET = 0x811C9DC5
_FNV_PRIME = 0x01000193


def fnv1a32(data: bytes) -> int:
    """32-bit FNV-1a (what NATS's ``partition()`` transform hashes a token with)."""
    h = _FNV_OFFSET
    for b in data:
        h = ((h ^ b) * _FNV_PRIME) & 0xFFFFFFFF
    return h


class Owner(Enum):
    """How a partition stands to one event."""

    MINE = "mine"
    SHARED = "shared"
    FOREIGN = "foreign"


@dataclass(frozen=True)
class Partition:
    """Partition ``index`` of ``count``: its names, and which subjects it owns."""

    index: int
    count: int

    def __post_init__(self) -> None:
        if not 0 <= self.index < self.count:
            raise ValueError(f"partition {self.index} is not one of 0..{self.count - 1}")

    @property
    def name(self) -> str:
        """``p<index>of<count>``: in the consumer's, the store's and the lease's name."""
        return f"p{self.index}of{self.count}"

    @property
    def primary(self) -> bool:
        """Partition 0 sends the dead letters of shared events."""
        return self.index == 0

    def consumer(self, base: str) -> str:
        return f"{base}-{self.name}"

    def dbname(self, base: str = "core") -> str:
        return f"{base}-{self.name}"

    def home(self, subject: str) -> int | None:
        """The partition an event subject belongs to; ``None`` for a shared event."""
        tokens = subject.split(".")
        if len(tokens) < 5:
            return 0  # no GID and IID tokens: not routed to the partitions (partstream)
        if 6 <= len(tokens) <= 10 and (tokens[4], tokens[5]) in SHARED_TYPES:
            return None
        key = tokens[3] if tokens[2] == NO_GID else tokens[2]
        return fnv1a32(key.encode()) % self.count

    def owner(self, subject: str) -> Owner:
        home = self.home(subject)
        if home is None:
            return Owner.SHARED
        return Owner.MINE if home == self.index else Owner.FOREIGN

"""What a batch of the event log is folded from and into: messages, side effects, results.

Plain data shared by the fold's steps (:mod:`shoal.aggregates.processor` and the modules it
calls) and the ingestion loop that carries the side effects out.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from uuid import UUID

from eventsourcing.application import ProcessingEvent

from shoal.aggregates.budgets import BudgetCrossing
from shoal.aggregates.cohorts import Verdict

__all__ = ["CoreLimits", "DeadLetter", "Flag", "FoldResult", "PoisonMessage", "RawMessage"]


@dataclass(frozen=True)
class RawMessage:
    """One message as fetched: stream sequence, subject, payload."""

    seq: int
    subject: str
    data: bytes


class PoisonMessage(Exception):
    """A valid-looking message the fold raised on (a bug): it will be dead-lettered."""

    def __init__(self, seq: int, reason: str) -> None:
        super().__init__(f"#{seq}: {reason}")
        self.seq, self.reason = seq, reason


@dataclass(frozen=True)
class DeadLetter:
    """A message the core will not fold (invalid, or refused with nowhere to record it), and why."""

    seq: int
    subject: str
    data: bytes
    reason: str


@dataclass(frozen=True)
class Flag:
    """A session the core found looping (published as ``session.flagged``)."""

    iid: str
    gid: str | None
    flag: str
    reason: str
    seq: int

    @property
    def event_id(self) -> str:
        return f"core-flag-{self.flag}-{self.iid}"


@dataclass
class FoldResult:
    """What one batch produced: the write (events + tracking) and the side effects."""

    processing: ProcessingEvent[UUID] = field(default_factory=ProcessingEvent)
    snapshot_from: dict[UUID, int] = field(default_factory=dict)
    dead_letters: list[DeadLetter] = field(default_factory=list)
    crossings: list[BudgetCrossing] = field(default_factory=list)
    flags: list[Flag] = field(default_factory=list)
    verdicts: list[Verdict] = field(default_factory=list)
    applied: int = 0
    rejected: int = 0
    skipped: int = 0
    foreign: int = 0
    """Messages stepped over because another partition owns them."""


@dataclass
class CoreLimits:
    """Loop-detection thresholds (from settings)."""

    loop_repeats: int = 5
    loop_model_calls: int = 25

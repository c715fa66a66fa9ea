"""Outcomes per agent version, and the core's verdicts on them: regressions and canaries.

Every session that ends (``task.completed`` is a success, a final ``task.failed`` a failure)
counts once for the version of the registered instance that ended it, on the
:class:`Cohorts` aggregate of its fleet and agent. After each count, the comparison the
fleet's desired state calls for (:mod:`~shoal.aggregates.comparisons`: the canary against
the agent's version, or the version against the one it was upgraded from) is tested with
:func:`shoal.stats.two_proportion`. A verdict is recorded on the aggregate, in the same
transaction as the counts and the stream position, once per (verdict, from, to): a batch
folded again after a crash finds it recorded and decides nothing twice. The ingestion then
publishes it as ``evaluation.regressed`` or ``evaluation.passed`` (docs/canary.md).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal
from uuid import UUID

from eventsourcing.domain import Aggregate, event

from shoal.aggregates.comparisons import Comparison
from shoal.aggregates.session import stable_id
from shoal.stats import TwoProportion, two_proportion

__all__ = ["ALPHA", "Cohorts", "Verdict", "cohorts_id", "decide"]

ALPHA = 0.01
"""Significance level of the core's test. The core looks again after every outcome, and
each look is a chance of a false alarm, so it asks for stronger evidence than the 0.05 of a
one-off comparison (``shoal evals compare``)."""

VerdictName = Literal["regressed", "passed"]


def cohorts_id(fleet: str, agent: str) -> UUID:
    """The aggregate id of one agent's cohorts (deterministic)."""
    return stable_id("cohorts", f"{fleet}/{agent}")


@dataclass(frozen=True)
class Verdict:
    """A decision on one comparison, for the ingestion to publish and act on."""

    verdict: VerdictName
    fleet: str
    agent: str
    evidence: dict[str, Any]
    seq: int

    @property
    def key(self) -> str:
        return verdict_key(self.verdict, self.evidence["from_version"], self.evidence["to_version"])

    @property
    def event_id(self) -> str:
        digest = hashlib.sha256(f"{self.fleet}/{self.agent}/{self.key}".encode()).hexdigest()
        return f"core-eval-{digest[:24]}"


def verdict_key(verdict: str, from_version: str, to_version: str) -> str:
    return f"{verdict}:{from_version}->{to_version}"


class Cohorts(Aggregate):
    """One agent's outcomes per version, and the verdicts recorded on them."""

    @staticmethod
    def create_id(fleet: str, agent: str) -> UUID:
        return cohorts_id(fleet, agent)

    class Opened(Aggregate.Created):
        fleet: str
        agent: str

    @event(Opened)
    def __init__(self, fleet: str, agent: str, timestamp: datetime) -> None:
        self.fleet, self.agent = fleet, agent
        self.counts: dict[str, list[int]] = {}  # version → [successes, sessions]
        self.verdicts: dict[str, dict[str, Any]] = {}  # verdict_key → evidence

    class Counted(Aggregate.Event):
        """A session of ``version`` ended: succeeded or not."""

        seq: int
        iid: str
        version: str
        succeeded: bool

    @event(Counted)
    def counted(
        self, seq: int, iid: str, version: str, succeeded: bool, timestamp: datetime
    ) -> None:
        count = self.counts.setdefault(version, [0, 0])
        count[0] += int(succeeded)
        count[1] += 1

    class Judged(Aggregate.Event):
        """The core's verdict on ``evidence``'s comparison (recorded once per key)."""

        seq: int
        verdict: str
        evidence: dict[str, Any]

    @event(Judged)
    def judged(self, seq: int, verdict: str, evidence: dict[str, Any], timestamp: datetime) -> None:
        key = verdict_key(verdict, evidence["from_version"], evidence["to_version"])
        self.verdicts[key] = evidence

    def count(self, version: str) -> tuple[int, int]:
        """(successes, sessions) of ``version``."""
        successes, n = self.counts.get(version, (0, 0))
        return successes, n

    def verdict(self, verdict: str, from_version: str, to_version: str) -> dict[str, Any] | None:
        """The evidence of a recorded verdict, or ``None``."""
        return self.verdicts.get(verdict_key(verdict, from_version, to_version))


def evidence(c: Comparison, t: TwoProportion) -> dict[str, Any]:
    """The figures a verdict is made of (also the ``fleet history`` detail)."""
    return {
        "from_version": c.from_version,
        "to_version": c.to_version,
        "successes_a": t.successes_a,
        "n_a": t.n_a,
        "rate_a": t.rate_a,
        "successes_b": t.successes_b,
        "n_b": t.n_b,
        "rate_b": t.rate_b,
        "z": None if t.z is None else round(t.z, 4),
        "p_value": None if t.p_value is None else float(f"{t.p_value:.6g}"),
        "alpha": t.alpha,
        "min_samples": c.min_samples,
        "canary": c.canary,
    }


def decide(c: Comparison, cohorts: Cohorts) -> tuple[VerdictName, TwoProportion] | None:
    """The verdict ``cohorts`` support for ``c`` now, or ``None`` (wait for more outcomes).

    Regressed: B's rate is significantly lower (z-test at :data:`ALPHA`). Passed (canaries
    only): both cohorts have ``min_samples`` and B is not significantly worse — when the
    test does not apply (no variance, or too few expected failures), only if B's observed
    rate is at least A's; otherwise the canary keeps gathering outcomes until it does.
    """
    sa, na = cohorts.count(c.from_version)
    sb, nb = cohorts.count(c.to_version)
    t = two_proportion(sa, na, sb, nb, alpha=ALPHA, min_samples=c.min_samples)
    if t.regressed:
        return "regressed", t
    if not c.canary or min(na, nb) < c.min_samples:
        return None
    if t.p_value is not None or sb * na >= sa * nb:  # tested and not worse, or B's rate >= A's
        return "passed", t
    return None

"""The fold's evaluation step: count an ended session for its version, judge, record once.

See :mod:`shoal.aggregates.cohorts` for what is counted and decided.
"""

from __future__ import annotations

from shoal.aggregates.cohorts import Verdict, decide, evidence
from shoal.aggregates.comparisons import Comparison
from shoal.aggregates.workingset import WorkingSet
from shoal.schemas import CloudEvent, TaskCompleted, TaskFailed

__all__ = ["OUTCOME_TYPES", "evaluate"]

OUTCOME_TYPES = frozenset({TaskCompleted.type, TaskFailed.type})
"""The types that end a session's task: the outcome of its instance's version."""


def evaluate(
    ws: WorkingSet,
    ev: CloudEvent,
    seq: int,
    succeeded: bool,
    comparisons: dict[tuple[str, str], Comparison],
) -> Verdict | None:
    """Count the session ``ev`` ended for its instance's version; return a new verdict."""
    instance = ws.instances.get(ev.instance or "")
    if instance is None or not instance.fleet or not instance.agent:
        return None  # ended by the CLI or a service: no version to count it for
    fleet, agent, version = instance.fleet, instance.agent, instance.agent_version
    cohorts = ws.cohorts_of(fleet, agent, ev.time)
    cohorts.counted(seq, ev.iid, version, succeeded, timestamp=ev.time)
    ws.collect(cohorts)
    c = comparisons.get((fleet, agent))
    if c is None or version not in (c.from_version, c.to_version):
        return None
    decided = decide(c, cohorts)
    if decided is None:
        return None
    verdict, test = decided
    if cohorts.verdict(verdict, c.from_version, c.to_version) is not None:
        return None  # recorded already: once per (verdict, from, to)
    figures = {**evidence(c, test), "seq": seq}
    cohorts.judged(seq, verdict, figures, timestamp=ev.time)
    ws.collect(cohorts)
    return Verdict(verdict, fleet, agent, figures, seq)

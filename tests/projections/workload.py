"""A realistic, deterministic event stream, folded into a real core store (no NATS needed).

:func:`workload` yields the CloudEvents a fleet produces for ``goals`` goals: agents start,
goals are submitted and planned, tasks run (model calls, tool calls, some denied by policy,
some needing approval, some retried, some failing), outcomes come back, goals close; a few
events come from an instance the core never saw (rejected). :func:`ingest` folds them into
a :class:`~shoal.aggregates.application.ShoalCore` with the core's own processor, exactly as
the ingestion does after fetching them from JetStream.
"""

from __future__ import annotations

import random
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Protocol

from shoal.aggregates.application import ShoalCore
from shoal.aggregates.pricing import PriceTable
from shoal.aggregates.processor import CoreProcessor, RawMessage
from shoal.bus import Subjects
from shoal.bus.subjects import publisher_tokens
from shoal.schemas import (
    AgentStarted,
    ApprovalGranted,
    ApprovalRequested,
    CloudEvent,
    EventData,
    GoalCompleted,
    GoalFailed,
    GoalPlanned,
    GoalSubmitted,
    ModelCalled,
    OutcomeReported,
    PlannedTask,
    PolicyDecided,
    SessionKilled,
    TaskAssigned,
    TaskCompleted,
    TaskFailed,
    TaskStarted,
    ToolCalled,
)

__all__ = ["BASE_TIME", "UPSTREAM", "Workload", "ingest", "workload"]

BASE_TIME = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)
UPSTREAM = "TEST_EVENTS"

_FLEETS = {
    "onboarding": ("planner", ("researcher", "writer")),
    "code-review": ("reviewer", ("linter", "tester")),
}
_MODELS = ("gpt-4o-mini", "gpt-4o", "claude-haiku-3.5", "offline-small", "mystery-model")
_TOOLS = (("search", "public"), ("read_file", "internal"), ("crm_lookup", "confidential"))
_PRINCIPALS = ("alice", "bob", "svc-ci")


class Emit(Protocol):
    """Builds the next event of the stream (fresh id, later time)."""

    def __call__(self, data: EventData, *, iid: str, source: str, **attrs: str) -> CloudEvent: ...


@dataclass
class Workload:
    """Parameters of a generated stream (everything derives from ``seed``)."""

    goals: int = 20
    seed: int = 7
    prefix: str = "shoal"


def workload(w: Workload) -> Iterator[CloudEvent]:
    """The events of ``w.goals`` goals, in the order a real fleet would emit them."""
    rng = random.Random(w.seed)
    clock = [BASE_TIME]
    counter = [0]

    def at() -> datetime:
        clock[0] += timedelta(milliseconds=rng.randint(5, 900))
        return clock[0]

    def ev(data: EventData, *, iid: str, source: str, **attrs: str) -> CloudEvent:
        counter[0] += 1
        return CloudEvent.new(
            data, iid=iid, source=source, clock=at, id=f"ev{w.seed}-{counter[0]:08d}", **attrs
        )

    instances: dict[tuple[str, str], str] = {}
    for fleet, (orchestrator, workers) in _FLEETS.items():
        for agent in (orchestrator, *workers):
            instance = f"{agent}-1"
            instances[fleet, agent] = instance
            yield ev(
                AgentStarted(version="1.0", capabilities=[agent], host="h1", pid=100),
                iid=f"boot-{instance}-{fleet}",
                source=f"shoal://{fleet}/{agent}/{instance}",
                fleet=fleet,
                agent=agent,
                instance=instance,
            )

    for g in range(w.goals):
        fleet = rng.choice(sorted(_FLEETS))
        orchestrator, workers = _FLEETS[fleet]
        principal = rng.choice(_PRINCIPALS)
        gid, root = f"g{g:05d}", f"r{g:05d}"
        ids = {"gid": gid, "fleet": fleet, "principal": principal}
        budget = Decimal("5") if rng.random() < 0.5 else None
        yield ev(
            GoalSubmitted(fleet=fleet, text=f"goal {g}", budget_usd=budget),
            iid=root,
            source=f"shoal://cli/{principal}",
            **ids,
        )
        orch = {**ids, "agent": orchestrator, "instance": instances[fleet, orchestrator]}
        osrc = f"shoal://{fleet}/{orchestrator}/{orch['instance']}"
        tasks = [
            PlannedTask(iid=f"t{g:05d}-{k}", capability=rng.choice(workers))
            for k in range(rng.randint(1, 3))
        ]
        yield ev(GoalPlanned(tasks=tasks), iid=root, source=osrc, **orch)
        yield from _root_model_calls(ev, rng, root, osrc, orch)
        failed: list[str] = []
        for task in tasks:
            if not (yield from _task(ev, rng, task, root, instances, fleet, ids)):
                failed.append(task.iid)
        if failed and rng.random() < 0.7:
            yield ev(
                GoalFailed(reason="a task failed", failed_iids=failed),
                iid=root,
                source=osrc,
                **orch,
            )
        else:
            yield ev(GoalCompleted(summary=f"done {g}"), iid=root, source=osrc, **orch)
        if rng.random() < 0.4:
            outcome = rng.choice(("success", "success", "failure", "abandoned"))
            yield ev(
                OutcomeReported(outcome=outcome, signal="ci"),
                iid=root,
                source="shoal://cli/ci",
                **ids,
            )
        if rng.random() < 0.05:
            # An impostor: the core never saw this instance start; its cost must not count.
            yield ev(
                ModelCalled(
                    call_id=f"x{g}",
                    model="gpt-4o",
                    provider="openai",
                    input_tokens=9999,
                    output_tokens=9999,
                    latency_ms=1.0,
                ),
                iid=root,
                source=f"shoal://{fleet}/rogue/rogue-1",
                **{**ids, "agent": "rogue", "instance": "rogue-1"},
            )
    yield from _unfinished(ev, instances)


def _unfinished(ev: Emit, instances: dict[tuple[str, str], str]) -> Iterator[CloudEvent]:
    """A goal still running at the end: one task working, one calling a tool in a loop."""
    fleet, gid, root = "onboarding", "g-live", "r-live"
    ids = {"gid": gid, "fleet": fleet, "principal": "alice"}
    yield ev(GoalSubmitted(fleet=fleet, text="live"), iid=root, source="shoal://cli/alice", **ids)
    for iid, agent, calls in (("t-live-work", "researcher", 1), ("t-live-loop", "writer", 6)):
        attrs = {**ids, "agent": agent, "instance": instances[fleet, agent], "parentiid": root}
        src = f"shoal://{fleet}/{agent}/{attrs['instance']}"
        yield ev(TaskStarted(capability=agent), iid=iid, source=src, **attrs)
        for k in range(calls):
            yield ev(
                ToolCalled(call_id=f"{iid}-{k}", tool="search", arguments={"q": "same"}),
                iid=iid,
                source=src,
                **attrs,
            )


def _root_model_calls(
    ev: Emit, rng: random.Random, root: str, source: str, attrs: dict[str, str]
) -> Iterator[CloudEvent]:
    for _ in range(rng.randint(1, 2)):
        yield ev(_model_call(rng), iid=root, source=source, **attrs)


def _model_call(rng: random.Random) -> ModelCalled:
    inp = rng.randint(50, 4000)
    return ModelCalled(
        call_id=f"m{rng.getrandbits(48):012x}",
        model=rng.choice(_MODELS),
        provider="openai",
        input_tokens=inp,
        output_tokens=rng.randint(10, 1500),
        cached_tokens=rng.randint(0, inp // 2),
        latency_ms=round(rng.uniform(80, 3000), 3),
        reported_cost_usd=Decimal("0.001"),
    )


def _task(
    ev: Emit,
    rng: random.Random,
    task: PlannedTask,
    root: str,
    instances: dict[tuple[str, str], str],
    fleet: str,
    ids: dict[str, str],
) -> Generator[CloudEvent, None, bool]:
    """One task's session; returns True when it completed."""
    agent = task.capability
    attrs = {**ids, "agent": agent, "instance": instances[fleet, agent], "parentiid": root}
    src = f"shoal://{fleet}/{agent}/{attrs['instance']}"
    yield ev(TaskAssigned(capability=agent, input={"n": 1}), iid=task.iid, source=src, **attrs)
    attempts = 2 if rng.random() < 0.2 else 1
    for attempt in range(1, attempts + 1):
        yield ev(TaskStarted(capability=agent, attempt=attempt), iid=task.iid, source=src, **attrs)
        for _ in range(rng.randint(1, 4)):
            yield ev(_model_call(rng), iid=task.iid, source=src, **attrs)
            if rng.random() < 0.6:
                tool, sensitivity = rng.choice(_TOOLS)
                if rng.random() < 0.1:
                    yield ev(
                        PolicyDecided(
                            action="tool.call", target=tool, decision="deny", rule="manifest.tool"
                        ),
                        iid=task.iid,
                        source=src,
                        **attrs,
                    )
                    continue
                result = "ok" if rng.random() < 0.85 else rng.choice(("error", "timeout"))
                yield ev(
                    ToolCalled(
                        call_id=f"c{rng.getrandbits(48):012x}",
                        tool=tool,
                        arguments={"q": f"item {rng.randint(1, 50)}"},
                        sensitivity=sensitivity,
                        result_class=result,
                        latency_ms=round(rng.uniform(1, 400), 3),
                        error=None if result == "ok" else "boom",
                    ),
                    iid=task.iid,
                    source=src,
                    **attrs,
                )
        if rng.random() < 0.1:
            request = f"a{rng.getrandbits(32):08x}"
            yield ev(
                ApprovalRequested(request_id=request, action="tool.call", target="send_email"),
                iid=task.iid,
                source=src,
                **attrs,
            )
            yield ev(
                ApprovalGranted(request_id=request, by="alice"),
                iid=task.iid,
                source="shoal://cli/alice",
                **ids,
            )
        if attempt < attempts:
            yield ev(
                TaskFailed(capability=agent, error="flaky", attempt=attempt, final=False),
                iid=task.iid,
                source=src,
                **attrs,
            )
    if rng.random() < 0.03:
        yield ev(
            SessionKilled(by="alice", reason="runaway"),
            iid=task.iid,
            source="shoal://cli/alice",
            **ids,
        )
        return False
    if rng.random() < 0.15:
        yield ev(
            TaskFailed(capability=agent, error="gave up", attempt=attempts, final=True),
            iid=task.iid,
            source=src,
            **attrs,
        )
        return False
    yield ev(
        TaskCompleted(capability=agent, output={"summary": "ok"}, attempt=attempts),
        iid=task.iid,
        source=src,
        **attrs,
    )
    return True


def ingest(
    core: ShoalCore, w: Workload, batch: int = 500, start_seq: int = 1, limit: int | None = None
) -> int:
    """Fold the workload (its first ``limit`` events) into ``core``; return the last sequence."""
    subjects = Subjects(w.prefix)
    processor = CoreProcessor(core, PriceTable.load(), subjects, UPSTREAM)
    seq = start_seq - 1
    pending: list[RawMessage] = []

    def commit() -> None:
        result = processor.fold(pending)
        if result.processing.tracking is not None:
            core.record(result.processing, result.snapshot_from)
        processor.committed(result)
        pending.clear()

    for event in workload(w):
        if limit is not None and seq - start_seq + 1 >= limit:
            break
        seq += 1
        subject = subjects.event(
            event.gid, event.iid, event.short_type, publisher_tokens(event.source)
        )
        pending.append(RawMessage(seq, subject, event.to_json()))
        if len(pending) >= batch:
            commit()
    if pending:
        commit()
    return seq

"""A hand-made event stream for evaluations: goals under two agent releases, with labels.

Every figure is chosen so that a test can compute its answer by hand: a model call of
``offline-small`` (0.10 USD per million input tokens, 0.40 per million output tokens) with
``100_000 * k`` input tokens and no output costs exactly ``k`` cents.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from shoal.aggregates.application import open_core
from shoal.aggregates.pricing import PriceTable
from shoal.aggregates.processor import CoreProcessor, RawMessage
from shoal.bus import ShoalSettings, Subjects
from shoal.bus.subjects import publisher_tokens
from shoal.projections.projection import CostProjection
from shoal.projections.recorder import DuckDBDatastore
from shoal.projections.runner import ProjectionFollower
from shoal.projections.view import open_view
from shoal.schemas import (
    AgentStarted,
    ApprovalGranted,
    ApprovalRequested,
    CloudEvent,
    EventData,
    GoalCompleted,
    GoalFailed,
    GoalSubmitted,
    Labels,
    ModelCalled,
    PolicyDecided,
    SessionAsked,
    SessionKilled,
    TaskAssigned,
    TaskCompleted,
    TaskFailed,
    TaskStarted,
    ToolCalled,
)

__all__ = ["T0", "Goal", "Stream", "project"]

T0 = datetime(2026, 11, 30, 9, 0, tzinfo=UTC)
FLEET = "rev"
PLANNER = ("planner", "p-1", "1.0")


@dataclass
class Goal:
    """One goal: its labels, the worker release that does its one task, and what happens."""

    n: int
    version: str  # the worker instance's release
    succeed: bool
    cents: int = 1  # the task's model call costs this many cents
    team: str = "payments"
    workflow: str = "triage"
    capability: str = "fix"
    task_labels: bool = True  # the orchestrator passed the labels on (else: the goal's)
    attempts: int = 1
    tools: tuple[str, ...] = ()
    approval: bool = False
    ask: bool = False
    denied: bool = False
    killed: bool = False
    model: str = "offline-small"


@dataclass
class Stream:
    """Events in order, one second apart from ``T0``."""

    events: list[CloudEvent] = field(default_factory=list)
    started: set[str] = field(default_factory=set)

    def ev(self, data: EventData, **attrs: str | None) -> None:
        at = T0 + timedelta(seconds=len(self.events))
        self.events.append(
            CloudEvent.new(data, clock=lambda: at, id=f"e{len(self.events):06d}", **attrs)  # type: ignore[arg-type]
        )

    def instance(self, agent: str, instance: str, version: str) -> dict[str, str]:
        who = {"fleet": FLEET, "agent": agent, "instance": instance}
        src = f"shoal://{FLEET}/{agent}/{instance}"
        if instance not in self.started:
            self.started.add(instance)
            self.ev(
                AgentStarted(version=version, capabilities=[agent]),
                iid=f"boot-{instance}",
                source=src,
                **who,
            )
        return {**who, "source": src}

    def goal(self, g: Goal) -> None:
        planner = self.instance(*PLANNER)
        worker = self.instance("worker", "w-" + g.version.replace(".", "-"), g.version)
        gid, root, task = f"g{g.n:04d}", f"r{g.n:04d}", f"t{g.n:04d}"
        labels = Labels(
            team=g.team,
            workflow=g.workflow,
            task_class="bugfix",
            prompt_template="fix-prompt",
            prompt_version="v1",
        )
        ids = {"gid": gid, "principal": "alice"}
        self.ev(
            GoalSubmitted(fleet=FLEET, text=f"goal {g.n}", labels=labels),
            iid=root,
            source="shoal://cli/alice",
            fleet=FLEET,
            **ids,
        )
        self.ev(
            TaskAssigned(capability=g.capability, labels=labels if g.task_labels else None),
            iid=task,
            parentiid=root,
            **planner,
            **ids,
        )
        at = {"iid": task, "parentiid": root, **worker, **ids}
        bob = {"iid": task, "parentiid": root, "fleet": FLEET, "source": "shoal://cli/bob", **ids}
        for attempt in range(1, g.attempts + 1):
            self.ev(TaskStarted(capability=g.capability, attempt=attempt), **at)
            if attempt < g.attempts:
                self.ev(
                    TaskFailed(capability=g.capability, error="x", attempt=attempt, final=False),
                    **at,
                )
        self.ev(
            ModelCalled(
                call_id=f"c{g.n}",
                model=g.model,
                provider="offline",
                input_tokens=100_000 * g.cents,
                output_tokens=0,
                latency_ms=5.0,
            ),
            **at,
        )
        for k, tool in enumerate(g.tools):
            self.ev(ToolCalled(call_id=f"tc{g.n}-{k}", tool=tool, latency_ms=1.0), **at)
        if g.denied:
            self.ev(
                PolicyDecided(action="tool.call", target="rm", decision="deny", rule="no-rm"),
                **at,
            )
        if g.approval:
            request = f"req{g.n}"
            asked = ApprovalRequested(request_id=request, action="tool.call", target="deploy")
            self.ev(asked, **at)
            self.ev(ApprovalGranted(request_id=request, by="bob"), **bob)
        if g.ask:
            self.ev(SessionAsked(question_id=f"q{g.n}", question="which branch?"), **at)
        if g.killed:
            self.ev(SessionKilled(by="bob"), **bob)
        elif g.succeed:
            self.ev(TaskCompleted(capability=g.capability, attempt=g.attempts), **at)
        else:
            self.ev(
                TaskFailed(capability=g.capability, error="no", attempt=g.attempts, final=True),
                **at,
            )
        close = GoalCompleted(summary="ok") if g.succeed else GoalFailed(reason="task failed")
        self.ev(close, iid=root, **planner, **ids)


def project(tmp: Path, goals: Iterable[Goal], batch: int = 7) -> DuckDBDatastore:
    """Fold the goals' events into a real core store, then project it into DuckDB."""
    stream = Stream()
    for g in goals:
        stream.goal(g)
    core = open_core(ShoalSettings(data_dir=tmp, principal="tester"))
    subjects = Subjects("shoal")
    processor = CoreProcessor(core, PriceTable.load(), subjects, "TEST_EVENTS")
    raw = [
        RawMessage(
            seq,
            subjects.event(e.gid, e.iid, e.short_type, publisher_tokens(e.source)),
            e.to_json(),
        )
        for seq, e in enumerate(stream.events, start=1)
    ]
    result = processor.fold(raw)
    assert result.dead_letters == [], result.dead_letters
    assert result.rejected == 0
    core.record(result.processing, result.snapshot_from)
    processor.committed(result)
    view = open_view(tmp / "projection.duckdb")
    projection = CostProjection(view, batch_size=batch)
    ProjectionFollower(core, projection, page=batch).catch_up()
    projection.close()
    core.close()
    return view.datastore

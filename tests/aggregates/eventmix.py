"""Realistic event-log traffic for core tests and benches: goals, tasks, calls, decisions.

Everything is deterministic for a given seed (ids, times, token counts), so a test can
compute the totals the core must arrive at.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from shoal.aggregates.pricing import PriceTable
from shoal.bus import Bus
from shoal.schemas import (
    AgentStarted,
    CloudEvent,
    EventData,
    GoalCompleted,
    GoalPlanned,
    GoalSubmitted,
    ModelCalled,
    PlannedTask,
    PolicyDecided,
    TaskAssigned,
    TaskCompleted,
    TaskFailed,
    TaskStarted,
    ToolCalled,
)


def _now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


@dataclass
class Agent:
    """An agent instance's identity on the wire."""

    fleet: str
    agent: str
    instance: str

    @property
    def source(self) -> str:
        return f"shoal://{self.fleet}/{self.agent}/{self.instance}"


@dataclass
class Mix:
    """A generator of events plus the totals it produced."""

    seed: int = 7
    fleet: str = "docs"
    principal: str = "alice"
    model: str = "offline-small"
    prices: PriceTable = field(default_factory=PriceTable.load)
    events: list[CloudEvent] = field(default_factory=list)
    t0: datetime = field(default_factory=_now)
    """The mix's clock starts when it is made (not at import: a long suite would otherwise
    date its events minutes back, and the core's watchdog would find them stuck)."""
    cost: Decimal = Decimal(0)
    model_calls: int = 0
    tool_calls: int = 0
    sessions: int = 0
    _n: int = 0

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)
        self.orchestrator = Agent(self.fleet, "orchestrator", f"orch-{self.seed}")
        self.worker = Agent(self.fleet, "summarizer", f"work-{self.seed}")

    def _id(self, kind: str) -> str:
        self._n += 1
        return f"{kind}{self.seed}x{self._n:08d}"

    def emit(
        self, data: EventData, *, iid: str, gid: str | None, by: Agent | None = None, **kw: Any
    ) -> CloudEvent:
        self._n += 1
        event = CloudEvent.new(
            data,
            iid=iid,
            gid=gid,
            source=by.source if by else f"shoal://cli/{self.principal}",
            fleet=by.fleet if by else kw.pop("fleet", None),
            agent=by.agent if by else None,
            instance=by.instance if by else kw.pop("instance", None),
            principal=self.principal,
            clock=lambda: self.t0 + timedelta(milliseconds=self._n),
            id=f"ev{self.seed}x{self._n:09d}",
            **kw,
        )
        self.events.append(event)
        return event

    def start_agents(self) -> None:
        for a in (self.orchestrator, self.worker):
            data = AgentStarted(version="1.0", capabilities=["summarize"], host="h", pid=1)
            self.emit(data, iid=self._id("boot"), gid=None, by=a)

    def model_call(self, iid: str, gid: str | None, by: Agent, **kw: Any) -> None:
        tokens_in = kw.pop("input_tokens", self.rng.randint(200, 4000))
        tokens_out = kw.pop("output_tokens", self.rng.randint(20, 800))
        data = ModelCalled(
            call_id=self._id("call"),
            model=kw.pop("model", self.model),
            provider="offline",
            input_tokens=tokens_in,
            output_tokens=tokens_out,
            cached_tokens=0,
            latency_ms=12.5,
            reported_cost_usd=kw.pop("reported_cost_usd", Decimal("0.0001")),
        )
        self.cost += self.prices.cost(data.model, tokens_in, tokens_out)
        self.model_calls += 1
        self.emit(data, iid=iid, gid=gid, by=by, **kw)

    def goal(self, tasks: int = 4, *, fail_once: bool = True) -> str:
        """One goal: submitted, planned, ``tasks`` delegated tasks with calls, completed."""
        gid, root = self._id("g"), self._id("s")
        self.sessions += 1
        self.emit(GoalSubmitted(fleet=self.fleet, text="summarise"), iid=root, gid=gid)
        self.model_call(root, gid, self.orchestrator)
        iids = [self._id("s") for _ in range(tasks)]
        plan = [PlannedTask(iid=i, capability="summarize") for i in iids]
        self.emit(GoalPlanned(tasks=plan), iid=root, gid=gid, by=self.orchestrator)
        for n, iid in enumerate(iids):
            self.sessions += 1
            kw = {"parentiid": root}
            self.emit(
                TaskAssigned(capability="summarize", input={"doc": n}),
                iid=iid,
                gid=gid,
                by=self.orchestrator,
                **kw,
            )
            self.emit(TaskStarted(capability="summarize"), iid=iid, gid=gid, by=self.worker, **kw)
            attempt = 1
            if fail_once and n == 0:
                self.emit(
                    TaskFailed(capability="summarize", error="flaky", final=False),
                    iid=iid,
                    gid=gid,
                    by=self.worker,
                    **kw,
                )
                attempt = 2
                self.emit(
                    TaskStarted(capability="summarize", attempt=2),
                    iid=iid,
                    gid=gid,
                    by=self.worker,
                    **kw,
                )
            self.tool_call(iid, gid, {"path": f"doc{n}.md"}, **kw)
            self.model_call(iid, gid, self.worker, **kw)
            if n == 1:
                self.emit(
                    PolicyDecided(
                        action="tool.call", target="shell", decision="deny", rule="manifest"
                    ),
                    iid=iid,
                    gid=gid,
                    by=self.worker,
                    **kw,
                )
            self.model_call(iid, gid, self.worker, **kw)
            self.emit(
                TaskCompleted(capability="summarize", attempt=attempt, output={"summary": "ok"}),
                iid=iid,
                gid=gid,
                by=self.worker,
                **kw,
            )
        self.emit(GoalCompleted(summary="done"), iid=root, gid=gid, by=self.orchestrator)
        return gid

    def tool_call(self, iid: str, gid: str | None, args: dict[str, Any], **kw: Any) -> None:
        self.tool_calls += 1
        data = ToolCalled(call_id=self._id("t"), tool="read_file", arguments=args)
        self.emit(data, iid=iid, gid=gid, by=self.worker, **kw)

    def until(self, total: int) -> Mix:
        """Goals until at least ``total`` events exist (agents started first)."""
        if not self.events:
            self.start_agents()
        while len(self.events) < total:
            self.goal()
        return self


def chunks(items: list[CloudEvent], size: int) -> Iterator[list[CloudEvent]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


async def publish_all(bus: Bus, events: list[CloudEvent], chunk: int = 2000) -> None:
    """Publish pipelined, in order, awaiting every ack."""
    for part in chunks(events, chunk):
        await bus.publish_many(part)

"""Applied policies enforced on real instances: deny, approve by tier, time out."""

from __future__ import annotations

import asyncio
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from shoal.agents import Agent, AgentRuntime, CapabilityManifest, TaskContext
from shoal.agents.errors import PolicyDenied
from shoal.agents.tools import ToolEnv, tool
from shoal.aggregates import open_core, run_core
from shoal.bus import Bus
from shoal.policy import Approvals, apply_policy
from shoal.projections.answers import TimeRange
from shoal.projections.projection import CostProjection
from shoal.projections.queries import intervention_rate
from shoal.projections.runner import ProjectionFollower
from shoal.projections.view import open_view
from shoal.schemas import CloudEvent, PolicyDecided, TaskAssigned, TaskCompleted, new_id
from tests.agents.conftest import of_type, wait_events

pytestmark = pytest.mark.timeout(60)

POLICY = """
@id("no-etc-writes")
forbid(principal, action == Action::"tool", resource == Tool::"write_file")
when { context.args has path && context.args.path like "/etc/*" };

@id("email-needs-approval") @tier("high")
permit(principal, action == Action::"tool", resource == Tool::"send_email");

@id("interns-no-large-model")
forbid(principal == Principal::"intern", action == Action::"model",
       resource == Model::"offline-large");
"""

SENT: list[dict[str, Any]] = []


@tool("send_email", side_effects=("email",))
async def send_email(env: ToolEnv, to: str, body: str) -> str:
    SENT.append({"to": to, "body": body})
    return "sent"


@tool("write_file", side_effects=("filesystem",))
async def write_file(env: ToolEnv, path: str, text: str) -> str:
    return "written"


def office_agent() -> Agent:
    manifest = CapabilityManifest.model_validate(
        {
            "models": ["offline-small", "offline-large"],
            "tools": {
                "send_email": {"sensitivity": "confidential"},
                "write_file": {"sensitivity": "internal"},
            },
        }
    )
    agent = Agent(
        "clerk", fleet="office", version="1", manifest=manifest, tools=[send_email, write_file]
    )

    @agent.handler("act")
    async def act(ctx: TaskContext, task: dict[str, Any]) -> dict[str, Any]:
        try:
            if task["kind"] == "email":
                return {"result": await ctx.tools.call("send_email", **task["args"])}
            if task["kind"] == "write":
                return {"result": await ctx.tools.call("write_file", **task["args"])}
            answer = await ctx.model.complete("hello", model=task["model"])
            return {"result": answer.model}
        except PolicyDenied as e:
            return {"refused": str(e), "rule": e.rule}

    return agent


async def assign(bus: Bus, input: dict[str, Any], principal: str = "alice") -> CloudEvent:
    event = CloudEvent.new(
        TaskAssigned(capability="act", input=input),
        iid=new_id(),
        principal=principal,
        source=f"shoal://cli/{principal}",
    )
    await bus.record(event, bus.subjects.tasks("office", "act"))
    return event


async def output_of(bus: Bus, task: CloudEvent) -> dict[str, Any]:
    events = await wait_events(
        bus, bus.subjects.session_events(task.iid), lambda e: of_type(e, "task.completed")
    )
    done = of_type(events, "task.completed")[0].data
    assert isinstance(done, TaskCompleted) and done.output is not None
    return done.output


async def decisions(bus: Bus, task: CloudEvent) -> list[tuple[str, str, str | None]]:
    events = of_type(await bus.read(bus.subjects.session_events(task.iid)), "policy.decided")
    found = []
    for e in events:
        assert isinstance(e.data, PolicyDecided)
        found.append((e.data.decision, e.data.rule, e.data.tier))
    return found


async def test_rules_deny_approve_and_time_out_as_written(fbus: Bus, tmp_path: Path) -> None:
    SENT.clear()
    applied, _ = await apply_policy(fbus, POLICY, fleet="office", by="olga", reason="test")
    bus = Bus(fbus.nc, fbus.settings.model_copy(update={"approval_timeout_s": 1.5}))
    approvals = await Approvals.open(bus)
    async with AgentRuntime(bus, office_agent(), instance="clerk-1").running():
        etc = await assign(bus, {"kind": "write", "args": {"path": "/etc/passwd", "text": "x"}})
        tmp = await assign(bus, {"kind": "write", "args": {"path": "/tmp/notes", "text": "x"}})
        intern = await assign(bus, {"kind": "model", "model": "offline-large"}, "intern")
        alice = await assign(bus, {"kind": "model", "model": "offline-large"}, "alice")

        assert (await output_of(bus, etc))["rule"] == "no-etc-writes"
        assert (await output_of(bus, tmp)) == {"result": "written"}
        assert (await output_of(bus, intern))["rule"] == "interns-no-large-model"
        assert (await output_of(bus, alice)) == {"result": "offline-large"}

        # High tier: parked until granted, then runs with exactly the reviewed arguments.
        reviewed = {"to": "cfo@example.com", "body": "Q3 numbers attached"}
        granted = await assign(bus, {"kind": "email", "args": reviewed})
        pending = await wait_for_pending(approvals, 1)
        assert SENT == []
        # Approvers see the arguments redacted by the tool's sensitivity (confidential).
        assert pending[0].arguments == {"to": "[redacted 15 chars]", "body": "[redacted 19 chars]"}
        await approvals.decide(pending[0].id, grant=True, by="olga", reason="ok")
        assert (await output_of(bus, granted)) == {"result": "sent"}
        assert SENT == [reviewed]

        # Denied: the handler sees a clear error and the email is not sent.
        denied = await assign(
            bus, {"kind": "email", "args": {"to": "all@example.com", "body": "hi"}}
        )
        pending = await wait_for_pending(approvals, 1)
        await approvals.decide(pending[0].id, grant=False, by="olga", reason="not to everyone")
        refused = await output_of(bus, denied)
        assert refused["refused"] == (
            f"approval {pending[0].id} for tool.call 'send_email' was denied by olga: "
            "not to everyone"
        )

        # Nobody decides: it times out, and is recorded as such.
        late = await assign(bus, {"kind": "email", "args": {"to": "x@example.com", "body": "?"}})
        timed_out = await output_of(bus, late)
        assert timed_out["refused"].endswith("timed out")
    assert len(SENT) == 1
    assert await decisions(bus, etc) == [("deny", "no-etc-writes", None)]
    assert await decisions(bus, granted) == [("needs_approval", "email-needs-approval", "high")]
    late_events = await bus.read(bus.subjects.session_events(late.iid))
    denied_events = of_type(late_events, "approval.denied")
    assert len(denied_events) == 1 and denied_events[0].data.expired  # type: ignore[union-attr]
    assert applied.scope == "fleet.office"

    # The core and the projection count the interventions: 1 granted, 1 denied, 1 expired.
    assert bus.settings.nats_url
    await asyncio.wait_for(
        run_core(bus.settings, bus.settings.nats_url, asyncio.Event(), until_idle=True), 60
    )
    core = open_core(bus.settings)
    view = open_view(tmp_path / "p.duckdb")
    projection = CostProjection(view)
    ProjectionFollower(core, projection).catch_up()
    projection.close()
    total = intervention_rate(view.datastore, TimeRange()).total
    assert (total.granted, total.denied, total.expired) == (1, 1, 1)
    assert total.approvals_requested == 3 and total.sessions_needing_approval == 3
    assert total.approval_rate == Decimal("0.3333333333")  # 1 of 3 decided, 10 places
    assert total.median_wait_s is not None and 0 < total.median_wait_s < 30
    core.close()


async def wait_for_pending(approvals: Approvals, n: int) -> list[Any]:
    for _ in range(200):
        pending = await approvals.list()
        if len(pending) >= n:
            return pending
        await asyncio.sleep(0.05)
    raise AssertionError("no approval was requested")

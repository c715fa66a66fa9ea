"""A delegated task parked on an approval does not fail its parent at the delegation's
timeout: a person's wait has its own deadline (the approval's)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from shoal.agents import Agent, AgentRuntime, CapabilityManifest, TaskContext
from shoal.bus import Bus
from shoal.policy import Approvals
from shoal.schemas import new_id
from tests.agents.conftest import of_type, submit_task, wait_events
from tests.agents.workers import mailer_agent
from tests.policy.test_approval_restarts import pending

pytestmark = pytest.mark.timeout(60)


def boss() -> Agent:
    agent = Agent("boss", fleet="mail", manifest=CapabilityManifest(delegates=("mail",)))

    @agent.handler("report")
    async def report(ctx: TaskContext, task: dict[str, Any]) -> dict[str, Any]:
        return await ctx.delegate("mail", {"to": "cfo@example.com", "body": "Q3"}, timeout=1.0)

    return agent


async def test_a_parent_waits_past_its_timeout_while_the_child_waits_for_approval(
    fbus: Bus,
) -> None:
    fbus.settings.data_dir.mkdir(parents=True, exist_ok=True)
    gid = new_id()
    async with AgentRuntime(fbus, boss()).running(), AgentRuntime(fbus, mailer_agent()).running():
        task = await submit_task(fbus, "mail", "report", {}, gid=gid)
        approvals = await Approvals.open(fbus)
        ids = await pending(approvals)
        await asyncio.sleep(2.5)  # well past the delegation's 1 s timeout
        parent = await fbus.read(fbus.subjects.session_events(task.iid))
        assert of_type(parent, "task.failed") == [] and of_type(parent, "task.completed") == []
        await approvals.decide(ids[0], grant=True, by="olga", reason="fine")
        events = await wait_events(
            fbus,
            fbus.subjects.session_events(task.iid),
            lambda e: of_type(e, "task.completed") or of_type(e, "task.failed"),
            30,
        )
    assert of_type(events, "task.failed") == []
    assert of_type(events, "task.completed")[0].data.output == {"result": "sent"}  # type: ignore[attr-defined]
    sent = (fbus.settings.data_dir / "sent.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in sent] == [{"to": "cfo@example.com", "body": "Q3"}]

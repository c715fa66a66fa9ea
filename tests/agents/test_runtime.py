"""The runtime in-process on a real server: ack, retry, dead letters, delegation, presence."""

from __future__ import annotations

import asyncio
import json

import pytest
from nats.js import api
from nats.js.errors import KeyNotFoundError
from pydantic import BaseModel

from shoal.agents import Agent, AgentRuntime, CapabilityManifest, PermanentTaskError, TaskContext
from shoal.agents.consumer import consumer_name
from shoal.agents.delegation import OutcomeWatch
from shoal.agents.orchestrator import ModelPlanner, orchestrator
from shoal.agents.runtime import ensure_consumer
from shoal.bus import Bus, Presence
from shoal.bus.client import REASON_HEADER
from shoal.errors import ConfigConflict
from shoal.ops.goals import build_goal, submit_goal
from shoal.schemas import CloudEvent, TaskCompleted, TaskFailed, new_id
from tests.agents.conftest import eventually, of_type, submit_task, wait_events

pytestmark = pytest.mark.timeout(30)


class Numbers(BaseModel):
    a: int
    b: int


def adder(fleet: str = "calc") -> Agent:
    agent = Agent("adder", fleet=fleet, version="2.1", manifest=CapabilityManifest())

    @agent.handler("add")
    async def add(ctx: TaskContext, task: Numbers) -> dict[str, int]:
        return {"sum": task.a + task.b}

    return agent


async def test_task_is_completed_with_the_handler_output_and_acked(fbus: Bus) -> None:
    async with AgentRuntime(fbus, adder(), instance="i1").running():
        task = await submit_task(fbus, "calc", "add", {"a": 2, "b": 40})
        events = await wait_events(
            fbus, fbus.subjects.session_events(task.iid), lambda e: len(e) >= 3
        )
    types = [s.event.short_type for s in events if s.event]
    assert types == ["task.assigned", "task.started", "task.completed"]
    done = events[2].event
    assert done is not None and isinstance(done.data, TaskCompleted)
    assert done.data.output == {"sum": 42}
    assert (done.source, done.fleet, done.agent, done.instance) == (
        "shoal://calc/adder/i1",
        "calc",
        "adder",
        "i1",
    )
    assert (done.principal, done.iid) == ("tester", task.iid)
    info = await fbus.js.consumer_info(fbus.topology.tasks.name, "calc_add")
    assert (info.num_ack_pending, info.num_pending, info.num_redelivered) == (0, 0, 0)


async def test_invalid_task_input_is_deadlettered_with_a_final_failure(fbus: Bus) -> None:
    async with AgentRuntime(fbus, adder(), instance="i1").running():
        task = await submit_task(fbus, "calc", "add", {"a": "not a number"})
        events = await wait_events(
            fbus, fbus.subjects.session_events(task.iid), lambda e: len(of_type(e, "task.failed"))
        )
        await asyncio.sleep(0.3)  # a redelivery, if there were one, would show by now
        events = await fbus.read(fbus.subjects.session_events(task.iid))
    failed = of_type(events, "task.failed")
    assert len(failed) == 1
    data = failed[0].data
    assert isinstance(data, TaskFailed)
    assert (data.final, data.error_type) == (True, "InvalidTask")
    assert data.error.startswith("invalid input: a: Input should be a valid integer")
    assert "b: Field required" in data.error
    assert of_type(events, "task.started") == []
    dead = await fbus.read(fbus.subjects.deadletter("tasks"), stream=fbus.topology.deadletter.name)
    assert len(dead) == 1
    msg = await fbus.js.get_msg(fbus.topology.deadletter.name, dead[0].seq)
    assert msg.headers is not None
    assert msg.headers[REASON_HEADER] == data.error
    assert json.loads(msg.data or b"{}")["iid"] == task.iid


async def test_malformed_payload_is_deadlettered_and_reported_with_its_iid(fbus: Bus) -> None:
    iid = new_id()
    raw = json.dumps({"iid": iid, "type": "shoal.task.assigned", "data": {}}).encode()
    async with AgentRuntime(fbus, adder(), instance="i1").running():
        await fbus.js.publish(fbus.subjects.tasks("calc", "add"), raw)
        events = await wait_events(fbus, fbus.subjects.session_events(iid), lambda e: len(e) >= 1)
    assert len(events) == 1 and events[0].event is not None
    data = events[0].event.data
    assert isinstance(data, TaskFailed) and data.final and data.error_type == "InvalidTask"
    assert data.error.startswith("invalid event: ")
    assert data.capability == "add"
    info = await fbus.js.consumer_info(fbus.topology.tasks.name, "calc_add")
    assert (info.num_ack_pending, info.num_pending) == (0, 0)


async def test_failing_task_is_retried_then_fails_finally_after_the_last_attempt(fbus: Bus) -> None:
    agent = Agent("broken", fleet="calc", manifest=CapabilityManifest())

    @agent.handler("explode")
    async def explode(ctx: TaskContext, task: dict[str, int]) -> None:
        raise RuntimeError(f"boom on attempt {ctx.attempt}")

    async with AgentRuntime(fbus, agent).running():
        task = await submit_task(fbus, "calc", "explode", {})
        events = await wait_events(
            fbus,
            fbus.subjects.session_events(task.iid),
            lambda e: any(getattr(f.data, "final", False) for f in of_type(e, "task.failed")),
        )
    failures = [e.data for e in of_type(events, "task.failed")]
    assert [(f.attempt, f.final, f.error) for f in failures] == [  # type: ignore[attr-defined]
        (1, False, "boom on attempt 1"),
        (2, False, "boom on attempt 2"),
        (3, True, "boom on attempt 3"),
    ]
    assert len(of_type(events, "task.started")) == 3
    info = await fbus.js.consumer_info(fbus.topology.tasks.name, "calc_explode")
    assert (info.num_ack_pending, info.num_pending) == (0, 0)


async def test_permanent_error_fails_at_once_without_retry(fbus: Bus) -> None:
    agent = Agent("strict", fleet="calc", manifest=CapabilityManifest())

    @agent.handler("refuse")
    async def refuse(ctx: TaskContext, task: dict[str, int]) -> None:
        raise PermanentTaskError("cannot be done")

    async with AgentRuntime(fbus, agent).running():
        task = await submit_task(fbus, "calc", "refuse", {})
        events = await wait_events(
            fbus, fbus.subjects.session_events(task.iid), lambda e: len(of_type(e, "task.failed"))
        )
        await asyncio.sleep(0.3)
        events = await fbus.read(fbus.subjects.session_events(task.iid))
    failures = [e.data for e in of_type(events, "task.failed")]
    assert [(f.attempt, f.final, f.error_type) for f in failures] == [  # type: ignore[attr-defined]
        (1, True, "PermanentTaskError")
    ]


async def test_delegated_child_has_parent_iid_and_same_gid_and_returns_output(fbus: Bus) -> None:
    parent = Agent("boss", fleet="calc", manifest=CapabilityManifest(delegates=("add",)))

    @parent.handler("double_sum")
    async def double_sum(ctx: TaskContext, task: Numbers) -> dict[str, int]:
        out = await ctx.delegate("add", {"a": task.a, "b": task.b}, timeout=10)
        return {"double": out["sum"] * 2}

    gid = new_id()
    async with AgentRuntime(fbus, parent).running(), AgentRuntime(fbus, adder()).running():
        task = await submit_task(fbus, "calc", "double_sum", {"a": 1, "b": 2}, gid=gid)
        events = await wait_events(
            fbus,
            fbus.subjects.goal_events(gid),
            lambda e: any(c.iid == task.iid for c in of_type(e, "task.completed")),
        )
    assert all(s.event is not None and s.event.gid == gid for s in events)
    parent_done = next(e for e in of_type(events, "task.completed") if e.iid == task.iid)
    assert parent_done.data.output == {"double": 6}  # type: ignore[attr-defined]
    child_events = [s.event for s in events if s.event and s.event.iid != task.iid]
    assert {e.parentiid for e in child_events} == {task.iid}
    assert [e.short_type for e in child_events] == [
        "task.assigned",
        "task.started",
        "task.completed",
    ]
    assert child_events[0].agent == "boss" and child_events[2].agent == "adder"


async def test_delegation_outside_the_manifest_is_denied(fbus: Bus) -> None:
    parent = Agent("boss", fleet="calc", manifest=CapabilityManifest(delegates=("add",)))

    @parent.handler("sneaky")
    async def sneaky(ctx: TaskContext, task: dict[str, int]) -> dict[str, str]:
        await ctx.delegate("rm_rf", {}, timeout=1)
        return {}

    async with AgentRuntime(fbus, parent).running():
        task = await submit_task(fbus, "calc", "sneaky", {})
        events = await wait_events(
            fbus, fbus.subjects.session_events(task.iid), lambda e: len(of_type(e, "task.failed"))
        )
    decided = of_type(events, "policy.decided")[0]
    assert decided is not None
    assert decided.data.model_dump() == {
        "action": "delegate",
        "target": "rm_rf",
        "decision": "deny",
        "rule": "manifest.delegate",
        "reason": "capability 'rm_rf' not allowed: boss may delegate only to ['add'] "
        "(its manifest's delegates)",
        "tier": None,  # decided by the manifest, not by an applied policy
        "policy_version": None,
    }
    failed = of_type(events, "task.failed")[0]
    assert failed is not None and failed.data.final is True  # type: ignore[attr-defined]


async def test_instance_announces_itself_heartbeats_and_leaves_on_stop(fbus: Bus) -> None:
    runtime = AgentRuntime(fbus, adder(), instance="inst7", supervisor="sup1", slot=3)
    kv = await fbus.kv(fbus.topology.presence.name)
    async with runtime.running():
        entry = await kv.get("calc.adder.inst7")
        presence = Presence.model_validate_json(entry.value or b"")
        assert (presence.agent, presence.version, presence.capabilities) == (
            "adder",
            "2.1",
            ["add"],
        )
        assert (presence.supervisor, presence.slot) == ("sup1", 3)
    with pytest.raises(KeyNotFoundError):
        await kv.get("calc.adder.inst7")
    events = await fbus.read(fbus.subjects.session_events("inst7"))
    types = [(s.event.short_type, s.event.source) for s in events if s.event]
    assert types == [
        ("agent.started", "shoal://calc/adder/inst7"),
        ("agent.stopped", "shoal://calc/adder/inst7"),
    ]


async def test_stop_lets_an_in_flight_task_finish_before_leaving(fbus: Bus) -> None:
    agent = Agent("slow", fleet="calc", manifest=CapabilityManifest())
    started = asyncio.Event()

    @agent.handler("wait")
    async def wait(ctx: TaskContext, task: dict[str, int]) -> dict[str, str]:
        started.set()
        await asyncio.sleep(0.5)
        return {"ok": "yes"}

    runtime = AgentRuntime(fbus, agent)
    await runtime.start()
    task = await submit_task(fbus, "calc", "wait", {})
    await asyncio.wait_for(started.wait(), 5)
    await runtime.stop("test")
    events = await fbus.read(fbus.subjects.session_events(task.iid))
    assert [s.event.short_type for s in events if s.event][-1] == "task.completed"
    info = await fbus.js.consumer_info(fbus.topology.tasks.name, "calc_wait")
    assert (info.num_ack_pending, info.num_pending) == (0, 0)


async def test_task_whose_last_attempt_was_lost_is_failed_finally(fbus: Bus) -> None:
    durable = consumer_name("calc", "add")
    subject = fbus.subjects.tasks("calc", "add")
    await ensure_consumer(fbus, fbus.topology.tasks.name, durable, subject)
    task = await submit_task(fbus, "calc", "add", {"a": 1, "b": 1})
    psub = await fbus.js.pull_subscribe_bind(durable, fbus.topology.tasks.name)
    for _ in range(3):  # three deliveries whose instances "died" (released here at once)
        [msg] = await psub.fetch(1, timeout=5)
        await msg.nak()
    await psub.unsubscribe()
    async with AgentRuntime(fbus, adder()).running():
        events = await wait_events(
            fbus, fbus.subjects.session_events(task.iid), lambda e: of_type(e, "task.failed")
        )
    [failed] = of_type(events, "task.failed")
    assert isinstance(failed.data, TaskFailed)
    assert (failed.data.attempt, failed.data.final, failed.data.error_type) == (
        3,
        True,
        "InstanceLost",
    )
    assert of_type(events, "task.started") == []
    info = await fbus.js.consumer_info(fbus.topology.tasks.name, durable)
    assert (info.num_ack_pending, info.num_pending) == (0, 0)


async def test_invalid_goal_is_deadlettered_and_the_orchestrator_goes_on(fbus: Bus) -> None:
    boss = orchestrator(
        "calc",
        planner=ModelPlanner("add"),
        manifest=CapabilityManifest(models=("offline-small",)),
    )
    async with AgentRuntime(fbus, boss).running():
        await fbus.js.publish(fbus.subjects.goals("calc"), b'{"not": "a goal"}')
        goal = build_goal("calc", "nothing to add", principal="tester")
        assert goal.gid is not None
        await submit_goal(fbus, goal)
        events = await wait_events(
            fbus, fbus.subjects.goal_events(goal.gid), lambda e: of_type(e, "goal.completed")
        )
    [done] = of_type(events, "goal.completed")
    assert done.data.model_dump() == {"result": {}, "summary": "nothing to do"}
    dead = await fbus.read(fbus.subjects.deadletter("goals"), stream=fbus.topology.deadletter.name)
    assert [d.raw for d in dead] == [b'{"not": "a goal"}']


async def test_goal_whose_task_never_reports_fails_without_replanning(fbus: Bus) -> None:
    boss = orchestrator(
        "calc",
        planner=ModelPlanner("nobody_serves_this"),
        manifest=CapabilityManifest(models=("offline-small",), delegates=("nobody_serves_this",)),
        task_timeout_s=0.5,
    )
    goal = build_goal("calc", "wait forever", principal="tester", inputs={"items": ["x"]})
    assert goal.gid is not None
    async with AgentRuntime(fbus, boss).running():
        await submit_goal(fbus, goal)
        events = await wait_events(
            fbus, fbus.subjects.goal_events(goal.gid), lambda e: of_type(e, "goal.failed")
        )
    [planned] = of_type(events, "goal.planned")
    [failed] = of_type(events, "goal.failed")
    [task] = planned.data.tasks  # type: ignore[attr-defined]
    assert failed.data.model_dump() == {
        "reason": f"no outcome for task {task.iid} within 0.5s",
        "failed_iids": [task.iid],
    }
    assert len(of_type(events, "task.assigned")) == 1


async def test_deleted_consumer_is_recreated_and_tasks_flow_again(fbus: Bus) -> None:
    async with AgentRuntime(fbus, adder()).running() as runtime:
        await fbus.js.delete_consumer(fbus.topology.tasks.name, "calc_add")
        await eventually(lambda: runtime.consumers[0].recreated == 1, timeout=10)
        task = await submit_task(fbus, "calc", "add", {"a": 20, "b": 22})
        events = await wait_events(
            fbus, fbus.subjects.session_events(task.iid), lambda e: of_type(e, "task.completed")
        )
    [done] = of_type(events, "task.completed")
    assert done.data.output == {"sum": 42}  # type: ignore[attr-defined]


async def test_runtime_that_cannot_start_reports_and_leaves_nothing_running(fbus: Bus) -> None:
    # A work-queue stream allows one consumer per subject: a squatter makes ours impossible.
    squatter = api.ConsumerConfig(
        durable_name="squatter",
        filter_subject=fbus.subjects.tasks("calc", "add"),
        ack_policy=api.AckPolicy.EXPLICIT,
    )
    await fbus.js.add_consumer(fbus.topology.tasks.name, squatter)
    runtime = AgentRuntime(fbus, adder(), instance="never")
    before = len(asyncio.all_tasks())
    with pytest.raises(ConfigConflict, match="filtered consumer not unique on workqueue"):
        async with runtime.running():
            pass
    await eventually(lambda: len(asyncio.all_tasks()) == before)
    assert await fbus.read(fbus.subjects.session_events("never")) == []


async def test_outcome_missed_by_the_live_subscription_is_read_from_the_log(fbus: Bus) -> None:
    gid, iid = new_id(), new_id()
    done = CloudEvent.new(
        TaskCompleted(capability="add", output={"sum": 3}),
        iid=iid,
        gid=gid,
        source="shoal://calc/adder/x",
    )
    await fbus.publish(done)  # before anyone listens, as during a reconnect
    async with await OutcomeWatch.for_goal(fbus, gid) as watch:
        watch.catch_up_s = 0.1
        got = await watch.outcome(iid, timeout=5)
    assert (got.id, watch.catch_ups) == (done.id, 1)


async def test_task_longer_than_ack_wait_is_kept_alive_not_redelivered(fbus: Bus) -> None:
    assert fbus.settings.task_ack_wait_s == 2.0
    agent = Agent("slow", fleet="calc", manifest=CapabilityManifest())

    @agent.handler("ponder")
    async def ponder(ctx: TaskContext, task: dict[str, int]) -> dict[str, str]:
        await asyncio.sleep(3.0)
        return {"thought": "done"}

    async with AgentRuntime(fbus, agent).running() as runtime:
        task = await submit_task(fbus, "calc", "ponder", {})
        await eventually(lambda: task.iid in runtime.runner.current_sessions)
        events = await wait_events(
            fbus, fbus.subjects.session_events(task.iid), lambda e: of_type(e, "task.completed")
        )
    assert [e.short_type for e in of_type(events, "task.started")] == ["task.started"]
    info = await fbus.js.consumer_info(fbus.topology.tasks.name, "calc_ponder")
    assert (info.num_redelivered, info.num_ack_pending) == (0, 0)

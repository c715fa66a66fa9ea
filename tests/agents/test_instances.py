"""Instances as real processes (``python -m shoal agent run``): competing consumers, crashes."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from shoal.agents.demo import DEMO_DOCUMENTS, write_workspace
from shoal.bus import Bus, ShoalSettings, Stored
from shoal.ops.goals import build_goal, submit_goal
from shoal.ops.kill import kill
from shoal.schemas import AgentKilled, CloudEvent, GoalCompleted, TaskAssigned, TaskFailed, new_id
from tests.agents.conftest import of_type, wait_events

pytestmark = pytest.mark.timeout(90)

ROOT = Path(__file__).resolve().parents[2]
TARGET = "tests.agents.workers:counter_agent"


def start_instance(
    settings: ShoalSettings,
    instance: str,
    *extra: str,
    target: str = TARGET,
    ack_wait_s: float = 2,
) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "NATS_URL": settings.nats_url or "",
        "SHOAL_PREFIX": settings.prefix,
        "SHOAL_DATA_DIR": str(settings.data_dir),
        "SHOAL_TASK_ACK_WAIT_S": str(ack_wait_s),
        "SHOAL_TASK_RETRY_DELAY_S": "0.05",
    }
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "shoal",
            "agent",
            "run",
            "load",
            "counter",
            "--target",
            target,
            "--instance",
            instance,
            "--concurrency",
            "8",
            *extra,
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


@pytest.fixture
def instances(settings: ShoalSettings) -> Iterator[list[subprocess.Popen[bytes]]]:
    procs = [start_instance(settings, f"w{i}") for i in range(3)]
    yield procs
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


async def wait_present(bus: Bus, count: int) -> None:
    kv = await bus.kv(bus.topology.presence.name)
    present: list[str] = []

    async def refresh() -> None:
        try:
            present[:] = await kv.keys()
        except Exception:  # no keys yet
            present[:] = []

    for _ in range(300):
        await refresh()
        if len(present) >= count:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"only {present} present")


async def publish_tasks(bus: Bus, n: int, sleep_ms: int) -> list[str]:
    events = [
        CloudEvent.new(
            TaskAssigned(capability="count", input={"n": i, "sleep_ms": sleep_ms}),
            iid=new_id(),
            principal="tester",
            source="shoal://cli/tester",
        )
        for i in range(n)
    ]
    subject = bus.subjects.tasks("load", "count")
    await bus.publish_many(events)
    await bus.publish_many((subject, e) for e in events)
    return [e.iid for e in events]


def completed_iids(events: list[Stored]) -> Counter[str]:
    return Counter(e.iid for e in of_type(events, "task.completed"))


async def test_three_instances_handle_300_tasks_exactly_once(
    bus: Bus, instances: list[subprocess.Popen[bytes]]
) -> None:
    await wait_present(bus, 3)
    iids = await publish_tasks(bus, 300, sleep_ms=5)
    done_filter = bus.subjects.events_filter(short_type="task.completed")
    events = await wait_events(bus, done_filter, lambda e: len(e) >= 300, timeout=60)
    await asyncio.sleep(0.5)  # a duplicate, if any, would land now
    events = await bus.read(done_filter)
    assert completed_iids(events) == Counter(iids)
    started = await bus.read(bus.subjects.events_filter(short_type="task.started"))
    assert Counter(s.event.iid for s in started if s.event) == Counter(iids)
    outputs = {s.event.data.output["n"] for s in events if s.event}  # type: ignore[attr-defined]
    assert outputs == set(range(300))
    by_instance = Counter(s.event.instance for s in events if s.event)
    assert set(by_instance) == {"w0", "w1", "w2"}
    for proc in instances:
        proc.send_signal(signal.SIGTERM)
    codes = [await asyncio.to_thread(proc.wait, 20) for proc in instances]
    assert codes == [0, 0, 0]
    stopped = await bus.read(bus.subjects.events_filter(short_type="agent.stopped"))
    assert sorted((s.event.iid, s.event.data.reason) for s in stopped if s.event) == [  # type: ignore[attr-defined]
        ("w0", "signal SIGTERM"),
        ("w1", "signal SIGTERM"),
        ("w2", "signal SIGTERM"),
    ]
    kv = await bus.kv(bus.topology.presence.name)
    with pytest.raises(Exception, match="no keys"):
        await kv.keys()


async def test_sigkill_of_one_instance_mid_run_loses_no_task(
    bus: Bus, instances: list[subprocess.Popen[bytes]]
) -> None:
    await wait_present(bus, 3)
    iids = await publish_tasks(bus, 300, sleep_ms=60)
    done_filter = bus.subjects.events_filter(short_type="task.completed")
    await wait_events(bus, done_filter, lambda e: len(e) >= 60, timeout=30)
    victim = instances[1]
    victim.send_signal(signal.SIGKILL)
    assert await asyncio.to_thread(victim.wait, 10) == -signal.SIGKILL
    events = await wait_events(bus, done_filter, lambda e: len(e) >= 300, timeout=60)
    await asyncio.sleep(0.5)
    events = await bus.read(done_filter)
    assert completed_iids(events) == Counter(iids)  # every task, each reported once
    started = await bus.read(bus.subjects.events_filter(short_type="task.started"))
    restarted = [
        iid for iid, n in Counter(s.event.iid for s in started if s.event).items() if n > 1
    ]
    assert restarted, "the killed instance had no task in flight"
    finishers = {e.instance for e in of_type(events, "task.completed") if e.iid in restarted}
    assert "w1" not in finishers
    info = await bus.js.consumer_info(bus.topology.tasks.name, "load_count")
    assert (info.num_pending, info.num_ack_pending) == (0, 0)


async def test_a_completion_whose_instance_died_before_the_ack_stays_the_only_outcome(
    bus: Bus, settings: ShoalSettings
) -> None:
    target = "tests.agents.workers:dies_after_completing_agent"
    procs = [start_instance(settings, f"d{i}", target=target) for i in range(2)]
    try:
        await wait_present(bus, 2)
        (iid,) = await publish_tasks(bus, 1, sleep_ms=0)
        victim = await asyncio.to_thread(_first_exit, procs, 30.0)
        assert victim.returncode == -signal.SIGKILL  # after the last attempt's task.completed
        consumer = "load_count"
        for _ in range(300):  # ack wait (2 s) brings the redelivery to the survivor
            info = await bus.js.consumer_info(bus.topology.tasks.name, consumer)
            if (info.num_pending, info.num_ack_pending) == (0, 0):
                break
            await asyncio.sleep(0.05)
        assert (info.num_pending, info.num_ack_pending) == (0, 0)
        assert info.delivered.stream_seq == 1 and info.ack_floor.stream_seq == 1
        events = [s.event for s in await bus.session_events(iid) if s.event]
        outcomes = [
            (e.short_type, getattr(e.data, "attempt", None), getattr(e.data, "final", None))
            for e in events
            if e.short_type in ("task.completed", "task.failed")
        ]
        assert outcomes == [
            ("task.failed", 1, False),
            ("task.failed", 2, False),
            ("task.completed", 3, None),
        ]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait(10)


async def test_a_killed_instance_releases_its_task_at_once_not_after_the_ack_wait(
    bus: Bus, settings: ShoalSettings
) -> None:
    target = "tests.agents.workers:sleepy_agent"
    # An ack wait of 60 s: the task can complete within the test only if it is released.
    procs = {
        f"k{i}": start_instance(settings, f"k{i}", target=target, ack_wait_s=60) for i in range(2)
    }
    try:
        await wait_present(bus, 2)
        (iid,) = await publish_tasks(bus, 1, sleep_ms=120_000)
        events = await wait_events(
            bus, bus.subjects.session_events(iid), lambda e: of_type(e, "task.started")
        )
        victim = of_type(events, "task.started")[0].instance
        assert victim is not None
        survivor = next(i for i in procs if i != victim)
        await kill(bus, "instance", victim, by="tester", reason="stuck")
        events = await wait_events(
            bus, bus.subjects.session_events(iid), lambda e: of_type(e, "task.completed"), 20
        )
        assert await asyncio.to_thread(procs[victim].wait, 20) == 0
        flow = [
            (e.short_type, e.instance, getattr(e.data, "attempt", None))
            for e in (s.event for s in events if s.event)
        ]
        assert flow == [
            ("task.assigned", None, None),
            ("task.started", victim, 1),
            ("task.failed", victim, 1),
            ("task.started", survivor, 2),
            ("task.completed", survivor, 2),
        ]
        (released,) = of_type(events, "task.failed")
        assert isinstance(released.data, TaskFailed)
        assert (released.data.error_type, released.data.final) == ("Killed", False)
        life = [s.event for s in await bus.session_events(victim) if s.event]
        own = [
            e.data for e in life if isinstance(e.data, AgentKilled) and e.source.endswith(victim)
        ]
        assert [(d.by, d.reason, d.interrupted) for d in own] == [("tester", "stuck", [iid])]
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
            proc.wait(10)


async def test_an_orchestrator_sigkilled_mid_goal_and_replaced_runs_its_planned_task_once(
    bus: Bus, settings: ShoalSettings
) -> None:
    orchestrator = "tests.agents.workers:one_task_orchestrator"
    procs = [start_instance(settings, "o1", target=orchestrator)]
    try:
        await wait_present(bus, 1)
        goal = build_goal("load", "count to seven", principal="tester")
        await submit_goal(bus, goal)
        goal_events = bus.subjects.events_filter(gid=goal.gid)
        await wait_events(bus, goal_events, lambda e: of_type(e, "task.assigned"))
        procs[0].send_signal(signal.SIGKILL)  # mid-goal: no worker has taken the task yet
        assert await asyncio.to_thread(procs[0].wait, 10) == -signal.SIGKILL
        procs.append(start_instance(settings, "o2", target=orchestrator))
        procs.append(start_instance(settings, "w1"))
        events = await wait_events(
            bus, goal_events, lambda e: of_type(e, "goal.completed"), timeout=30
        )
        await asyncio.sleep(0.5)  # a second run, if any, would show by now
        events = await bus.read(goal_events)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait(10)
    (planned,) = of_type(events, "goal.planned")
    children = [t.iid for t in planned.data.tasks]  # type: ignore[attr-defined]
    assert [e.iid for e in of_type(events, "task.assigned")] == children
    assert [(e.iid, e.instance) for e in of_type(events, "task.started")] == [(children[0], "w1")]
    assert [e.iid for e in of_type(events, "task.completed")] == children
    (done,) = of_type(events, "goal.completed")
    assert done.instance == "o2"  # the replacement resumed the goal, without planning again


def _first_exit(procs: list[subprocess.Popen[bytes]], timeout: float) -> subprocess.Popen[bytes]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for proc in procs:
            if proc.poll() is not None:
                return proc
        time.sleep(0.02)
    raise AssertionError("no instance died")


def test_agent_run_with_an_unknown_target_fails_with_one_line(settings: ShoalSettings) -> None:
    bad = subprocess.run(
        [
            sys.executable,
            "-m",
            "shoal",
            "agent",
            "run",
            "load",
            "counter",
            "--target",
            "nope:agent",
        ],
        cwd=ROOT,
        env={**os.environ, "NATS_URL": settings.nats_url or "", "SHOAL_PREFIX": settings.prefix},
        capture_output=True,
        timeout=30,
    )
    assert bad.returncode == 2
    assert bad.stderr.decode().strip() == "error: cannot import nope:agent: No module named 'nope'"


async def test_demo_fleet_runs_as_processes_and_completes_a_submitted_goal(
    bus: Bus, settings: ShoalSettings
) -> None:
    write_workspace(settings.data_dir / "workspace")
    env = {
        **os.environ,
        "NATS_URL": settings.nats_url or "",
        "SHOAL_PREFIX": settings.prefix,
        "SHOAL_DATA_DIR": str(settings.data_dir),
        "SHOAL_TASK_RETRY_DELAY_S": "0.05",
    }
    procs = [
        await asyncio.create_subprocess_exec(
            *(sys.executable, "-m", "shoal", "agent", "run", "docs", name),
            cwd=ROOT,
            env=env,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        for name in ("orchestrator", "summarizer")
    ]
    try:
        goal = build_goal("docs", "Summarise the workspace", principal="tester")
        assert goal.gid is not None
        await submit_goal(bus, goal)
        events = await wait_events(
            bus,
            bus.subjects.goal_events(goal.gid),
            lambda e: of_type(e, "goal.completed") or of_type(e, "goal.failed"),
            timeout=60,
        )
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        codes = [await asyncio.wait_for(proc.wait(), 20) for proc in procs]
    [done] = of_type(events, "goal.completed")
    assert isinstance(done.data, GoalCompleted)
    assert sorted(done.data.result["documents"]) == sorted(DEMO_DOCUMENTS)
    assert {e.fleet for e in of_type(events, "task.completed")} == {"docs"}
    assert codes == [0, 0]

"""The core's ingestion against a real nats-server and a real SQLite file."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path

from nats.js import api

from shoal.aggregates import (
    CORE_CONSUMER,
    Session,
    ShoalCore,
    open_core,
    run_core,
)
from shoal.aggregates.ingestion import Ingestion, processor_for
from shoal.bus import Bus, KillSwitch, ShoalSettings, kill_key
from shoal.bus.client import REASON_HEADER
from shoal.schemas import (
    AgentCrashLooping,
    AgentKilled,
    AgentStopped,
    BudgetExceeded,
    ModelCalled,
    OutcomeReported,
    SessionFlagged,
    SessionKilled,
    TaskAssigned,
    TaskCompleted,
    TaskFailed,
    TaskStarted,
)
from tests.aggregates.eventmix import Agent, Mix, publish_all
from tests.natsproc import NatsProcess
from tests.projections.conftest import build


async def ingest(settings: ShoalSettings) -> ShoalCore:
    """Run the core until nothing is pending, then open its store for reading."""
    assert settings.nats_url
    await asyncio.wait_for(
        run_core(settings, settings.nats_url, asyncio.Event(), until_idle=True), 60
    )
    return open_core(settings)


async def test_ingested_goals_have_exact_costs_retries_and_denials(
    bus: Bus, settings: ShoalSettings
) -> None:
    mix = Mix(seed=1)
    mix.start_agents()
    gids = [mix.goal(tasks=3), mix.goal(tasks=2)]
    await publish_all(bus, mix.events)

    app = await ingest(settings)

    sessions = app.sessions()
    assert len(sessions) == mix.sessions == 7
    assert sum((s.cost_usd for s in sessions), Decimal(0)) == mix.cost
    assert sum(s.model_calls for s in sessions) == mix.model_calls == 12
    assert sum(s.tool_calls for s in sessions) == mix.tool_calls == 5
    goal = app.goal(gids[0])
    assert goal.status == "completed"
    assert len(goal.iids) == 4
    children = [app.session(i) for i in goal.iids if i != goal.root_iid]
    assert [s.status for s in children] == ["completed"] * 3
    assert [s.retries for s in children] == [1, 0, 0]
    assert [s.denials for s in children] == [0, 1, 0]
    assert [s.parentiid for s in children] == [goal.root_iid] * 3
    assert app.goal_cost(goal) == sum((s.cost_usd for s in app.goal_sessions(goal)), Decimal(0))
    assert goal.root_iid is not None
    assert app.session(goal.root_iid).status == "completed"


async def test_a_zero_cost_claim_for_a_million_tokens_is_priced_from_the_table(
    bus: Bus, settings: ShoalSettings
) -> None:
    mix = Mix(seed=2)
    mix.start_agents()
    mix.model_call(
        "s-free",
        None,
        mix.worker,
        model="gpt-4o",
        input_tokens=1_000_000,
        output_tokens=0,
        reported_cost_usd=Decimal("0"),
    )
    await publish_all(bus, mix.events)

    session = (await ingest(settings)).session("s-free")

    assert session.cost_usd == Decimal("2.5")
    assert session.reported_cost_usd == Decimal("0")
    assert session.cost_by_model == {"gpt-4o": Decimal("2.5")}


async def test_events_of_unknown_and_killed_instances_are_rejected_not_applied(
    bus: Bus, settings: ShoalSettings
) -> None:
    mix = Mix(seed=3)
    mix.model_call("s-stranger", None, mix.worker)  # no agent.started for it yet
    mix.start_agents()
    mix.model_call("s-ok", None, mix.worker)
    kill = AgentKilled(by="tester", reason="misbehaving")
    mix.emit(kill, iid="s-ok", gid=None, instance=mix.worker.instance)
    mix.model_call("s-ok", None, mix.worker)
    await publish_all(bus, mix.events)

    app = await ingest(settings)

    ok = app.session("s-ok")
    assert (ok.rejected, ok.model_calls) == (1, 1)
    # The stranger's call belongs to no session: refused and dead-lettered, no session opened.
    assert "s-stranger" not in app.session_iids()
    assert await dead_letter_reasons(bus) == [
        "refused: unknown instance 'work-3' (no agent.started seen)"
    ]
    instance = app.instance(mix.worker.instance)
    assert instance is not None and instance.status == "killed"


async def dead_letter_reasons(bus: Bus) -> list[str]:
    """The reason of every dead letter of the event log, in order."""
    dead = await bus.read(bus.subjects.deadletter("events"), stream=bus.topology.deadletter.name)
    reasons = []
    for d in dead:
        msg = await bus.js.get_msg(bus.topology.deadletter.name, d.seq)
        assert msg.headers is not None
        reasons.append(msg.headers[REASON_HEADER])
    return reasons


async def test_only_interactions_open_sessions(bus: Bus, settings: ShoalSettings) -> None:
    mix = Mix(seed=13)
    mix.start_agents()
    stopped_stranger = Agent(mix.fleet, "summarizer", "ghost-1")
    mix.emit(AgentStopped(reason="bye"), iid="boot-ghost", gid=None, by=stopped_stranger)
    crashloop = AgentCrashLooping(supervisor="sup1", slot=0, exits=5, exit_code=1)
    mix.emit(crashloop, iid="inst-crashing", gid=None, fleet=mix.fleet, instance="inst-crashing")
    mix.emit(SessionKilled(by="op", reason="typo"), iid="not-an-iid", gid=None)
    mix.model_call("s-real", None, mix.worker)
    mix.emit(SessionKilled(by="op", reason="real"), iid="s-real", gid=None)
    await publish_all(bus, mix.events)

    app = await ingest(settings)

    # Two boot sessions? No: agent.started opens none either. Only s-real is a session.
    assert app.session_iids() == ["s-real"]
    assert app.session("s-real").status == "killed"
    assert await dead_letter_reasons(bus) == [
        "refused: unknown instance 'ghost-1' (no agent.started seen)",
        "shoal.session.killed names session 'not-an-iid', which the core has never seen",
    ]


async def test_an_invalid_message_is_dead_lettered_and_the_next_one_applied(
    bus: Bus, settings: ShoalSettings
) -> None:
    subject = bus.subjects.event(None, "s-bad", "model.called")
    await bus.js.publish(subject, b'{"not": "an event"}')
    mix = Mix(seed=4)
    mix.start_agents()
    mix.model_call("s-good", None, mix.worker)
    await publish_all(bus, mix.events)

    app = await ingest(settings)

    assert app.session("s-good").model_calls == 1
    dead = await bus.read(bus.subjects.deadletter("events"), stream=bus.topology.deadletter.name)
    assert len(dead) == 1
    assert dead[0].raw == b'{"not": "an event"}'
    msg = await bus.js.get_last_msg(bus.topology.deadletter.name, dead[0].subject)
    assert msg.headers is not None and msg.headers[REASON_HEADER] == (
        "invalid event: id: Field required; source: Field required; type: Field required; "
        "time: Field required; iid: Field required; data: Field required"
    )


async def test_restart_with_the_consumer_reset_changes_nothing(
    bus: Bus, settings: ShoalSettings
) -> None:
    mix = Mix(seed=5).until(400)
    await publish_all(bus, mix.events)
    app = await ingest(settings)
    before = {s.iid: s.summary() for s in app.sessions()}
    last_notification = app.recorder.max_notification_id()
    app.close()

    await bus.js.delete_consumer(bus.topology.events.name, CORE_CONSUMER)
    again = await ingest(settings)

    assert again.recorder.max_notification_id() == last_notification
    assert {s.iid: s.summary() for s in again.sessions()} == before
    assert sum((s.cost_usd for s in again.sessions()), Decimal(0)) == mix.cost


async def test_the_same_stream_ingested_twice_gives_identical_aggregates(
    bus: Bus, settings: ShoalSettings, tmp_path: Path
) -> None:
    mix = Mix(seed=6).until(600)
    await publish_all(bus, mix.events)
    first = await ingest(settings)
    # A fresh store: the consumer's ack floor is ahead of it, so the core re-reads from seq 1.
    second = await ingest(settings.model_copy(update={"data_dir": tmp_path / "fresh"}))

    one, two = first.sessions(), second.sessions()
    assert len(one) == len(two) == mix.sessions
    assert one == two  # aggregate equality: every attribute, timestamps and versions included
    gids = sorted({s.gid for s in one if s.gid})
    assert len(gids) == (mix.sessions // 5)
    assert [first.goal(g) for g in gids] == [second.goal(g) for g in gids]


async def test_a_session_over_budget_is_killed_by_the_core(
    bus: Bus, settings: ShoalSettings
) -> None:
    mix = Mix(seed=8)
    mix.start_agents()
    assigned = TaskAssigned(capability="summarize", budget_usd=Decimal("0.001"))
    mix.emit(assigned, iid="s-spender", gid=None, by=mix.orchestrator)
    mix.emit(TaskStarted(capability="summarize"), iid="s-spender", gid=None, by=mix.worker)
    for _ in range(3):  # 3 x (1000 in, 2000 out) on offline-small = 3 x $0.0009
        mix.model_call("s-spender", None, mix.worker, input_tokens=1000, output_tokens=2000)
    await publish_all(bus, mix.events)

    app = await ingest(settings)

    session = app.session("s-spender")
    assert session.status == "killed"
    assert session.budget_exceeded
    assert session.cost_usd == Decimal("0.0027")
    kill = await bus.kv(bus.topology.kill.name)
    entry = await kill.get(kill_key("session", "s-spender"))
    assert entry.value is not None
    switch = KillSwitch.model_validate_json(entry.value)
    assert (switch.scope, switch.name, switch.by) == ("session", "s-spender", "shoal://core")
    published = [s.event for s in await bus.session_events("s-spender")]
    crossings = [e.data for e in published if e and isinstance(e.data, BudgetExceeded)]
    assert len(crossings) == 1
    assert crossings[0].spent_usd == Decimal("0.0018")  # the second call crossed $0.001


async def test_a_goal_over_budget_is_killed_by_the_core(bus: Bus, settings: ShoalSettings) -> None:
    mix = Mix(seed=9)
    mix.start_agents()
    gid = mix.goal(tasks=2)
    await publish_all(bus, mix.events)
    app = await ingest(settings)
    spent = app.goal_cost(app.goal(gid))
    app.close()
    # A second goal with a budget below what the first one cost: it must be crossed.
    mix2 = Mix(seed=10)
    gid2 = mix2.goal(tasks=2)
    submitted = mix2.events[0]
    budget = (spent / 2).quantize(Decimal("0.000001"))
    data = submitted.data.model_copy(update={"budget_usd": budget})
    mix2.events[0] = submitted.model_copy(update={"data": data})
    # Reuse the first mix's registered instances for the second goal's events.
    mix2.events = [
        e.model_copy(update={"source": e.source.replace("-10", "-9")}) for e in mix2.events
    ]
    mix2.events = [
        e.model_copy(update={"instance": e.instance.replace("-10", "-9")}) if e.instance else e
        for e in mix2.events
    ]
    await publish_all(bus, mix2.events)

    goal = (await ingest(settings)).goal(gid2)

    assert goal.budget_usd == budget
    assert goal.budget_exceeded
    kill = await bus.kv(bus.topology.kill.name)
    entry = await kill.get(kill_key("goal", gid2))
    assert entry.value is not None and json.loads(entry.value)["scope"] == "goal"


async def test_repeating_the_same_tool_call_flags_the_session_looping(
    bus: Bus, settings: ShoalSettings
) -> None:
    mix = Mix(seed=11)
    mix.start_agents()
    for _ in range(6):
        mix.tool_call("s-loop", None, {"path": "same.md"})
    mix.tool_call("s-fine", None, {"path": "a.md"})
    mix.tool_call("s-fine", None, {"path": "b.md"})
    await publish_all(bus, mix.events)

    app = await ingest(settings)

    assert app.session("s-loop").flags == ["looping"]
    assert app.session("s-fine").flags == []
    published = [s.event for s in await bus.session_events("s-loop")]
    flagged = [e for e in published if e and isinstance(e.data, SessionFlagged)]
    assert len(flagged) == 1 and flagged[0].source == "shoal://core"


async def test_an_outcome_reported_later_is_recorded_on_session_and_goal(
    bus: Bus, settings: ShoalSettings
) -> None:
    mix = Mix(seed=12)
    mix.start_agents()
    gid = mix.goal(tasks=1)
    await publish_all(bus, mix.events)
    app = await ingest(settings)
    root = app.goal(gid).root_iid
    assert root is not None
    app.close()

    mix.events.clear()
    report = OutcomeReported(outcome="success", signal="pr_merged")
    mix.emit(report, iid=root, gid=gid)
    await publish_all(bus, mix.events)
    app = await ingest(settings)

    assert (app.session(root).outcome, app.session(root).outcome_signal) == (
        "success",
        "pr_merged",
    )
    assert app.goal(gid).outcome == "success"


async def test_a_silent_running_session_is_flagged_stuck(bus: Bus, settings: ShoalSettings) -> None:
    mix = Mix(seed=13)
    mix.start_agents()
    mix.emit(TaskStarted(capability="summarize"), iid="s-silent", gid=None, by=mix.worker)
    await publish_all(bus, mix.events)
    quick = settings.model_copy(update={"stuck_after_s": 0.2})
    assert quick.nats_url
    stop = asyncio.Event()
    core = asyncio.create_task(run_core(quick, quick.nats_url, stop))
    try:
        async with asyncio.timeout(20):
            while True:
                stored = [s.event for s in await bus.session_events("s-silent")]
                if any(e and isinstance(e.data, SessionFlagged) for e in stored):
                    break
                await asyncio.sleep(0.1)
        await asyncio.sleep(1.5)  # let the core ingest its own flag
    finally:
        stop.set()
        await asyncio.wait_for(core, 10)

    session = open_core(settings).session("s-silent")
    assert session.flags == ["stuck"]
    assert session.status == "running"


def test_session_events_name_the_figures_projections_need() -> None:
    fields = set(Session.ModelCalled.__dataclass_fields__)
    assert {
        "gid", "fleet", "agent", "instance", "principal", "model", "input_tokens",
        "output_tokens", "cached_tokens", "cost_usd", "reported_cost_usd", "latency_ms",
        "seq", "timestamp",
    } <= fields  # fmt: skip
    assert api.AckPolicy.ALL.value == "all"


async def test_a_message_the_core_fails_on_is_dead_lettered_and_the_rest_applied(
    bus: Bus, settings: ShoalSettings, tmp_path: Path
) -> None:
    table = tmp_path / "prices.yaml"
    table.write_text('models:\n  offline-small: {input: "1", output: "1"}\n')  # no "*" entry
    strict = settings.model_copy(update={"price_table": table})
    mix = Mix(seed=14)
    mix.start_agents()
    mix.model_call("s-mixed", None, mix.worker, model="mystery-model")
    mix.model_call("s-mixed", None, mix.worker, input_tokens=1_000_000, output_tokens=0)
    await publish_all(bus, mix.events)

    app = await ingest(strict)

    session = app.session("s-mixed")
    assert (session.model_calls, session.cost_usd) == (1, Decimal(1))
    assert app.max_tracking_id(bus.topology.events.name) == len(mix.events)
    dead = await bus.read(bus.subjects.deadletter("events"), stream=bus.topology.deadletter.name)
    models = [d.event.data.model for d in dead if d.event and isinstance(d.event.data, ModelCalled)]
    assert models == ["mystery-model"]


async def test_a_fleet_over_its_cap_is_killed_once(
    bus: Bus, settings: ShoalSettings, tmp_path: Path
) -> None:
    table = tmp_path / "prices.yaml"
    table.write_text(
        'models:\n  offline-small: {input: "1", output: "1"}\nfleet_budgets:\n  docs: "2.5"\n'
    )
    capped = settings.model_copy(update={"price_table": table})
    mix = Mix(seed=15)
    mix.start_agents()
    for n in range(4):  # $1 each: the third call crosses $2.5
        mix.model_call(f"s-{n}", None, mix.worker, input_tokens=1_000_000, output_tokens=0)
    await publish_all(bus, mix.events)

    app = await ingest(capped)

    spend = app.fleet_spend("docs")
    assert spend is not None and spend.budget_exceeded
    assert spend.crossings == [{"budget_usd": "2.5", "spent_usd": "3"}]
    kill = await bus.kv(bus.topology.kill.name)
    entry = await kill.get(kill_key("fleet", "docs"))
    assert entry.value is not None
    assert KillSwitch.model_validate_json(entry.value).scope == "fleet"
    published = await bus.read(bus.subjects.events_of_type("budget.exceeded"))
    assert [s.event.iid for s in published if s.event] == ["s-2"]


async def test_the_core_rides_out_a_nats_restart_and_loses_nothing(
    nats_process: Callable[..., NatsProcess], prefix: str, tmp_path: Path
) -> None:
    server = nats_process()
    settings = ShoalSettings(nats_url=server.url, prefix=prefix, data_dir=tmp_path / "data")
    mix = Mix(seed=16).until(3000)
    half = len(mix.events) // 2
    async with Bus.connect(server.url, settings, name="test") as bus:
        await bus.provision()
        await publish_all(bus, mix.events[:half])
    stop = asyncio.Event()
    core = asyncio.create_task(run_core(settings, server.url, stop))
    try:
        await wait_for_position(settings, half)
        await asyncio.to_thread(server.restart)  # SIGKILL, then the same port and store
        async with Bus.connect(server.url, settings, name="test") as bus:
            await publish_all(bus, mix.events[half:])
        await wait_for_position(settings, len(mix.events))
    finally:
        stop.set()
        await asyncio.wait_for(core, 30)

    app = open_core(settings)
    sessions = app.sessions()
    assert len(sessions) == mix.sessions
    assert sum((s.cost_usd for s in sessions), Decimal(0)) == mix.cost
    assert sum(s.model_calls for s in sessions) == mix.model_calls


async def wait_for_position(settings: ShoalSettings, seq: int, timeout: float = 60) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    stream = f"{settings.stream_prefix}_EVENTS"
    while (position := await asyncio.to_thread(_position, settings, stream)) < seq:
        assert asyncio.get_running_loop().time() < deadline, f"core stuck at {position}"
        await asyncio.sleep(0.05)


def _position(settings: ShoalSettings, stream: str) -> int:
    app = open_core(settings)
    try:
        return app.max_tracking_id(stream)
    finally:
        app.close()


async def test_a_final_failure_after_the_completion_does_not_overwrite_it(
    bus: Bus, settings: ShoalSettings, tmp_path: Path
) -> None:
    mix = Mix(seed=11)
    mix.start_agents()
    by, iid = mix.worker, "s-done"
    mix.emit(TaskAssigned(capability="summarize"), iid=iid, gid=None)
    for attempt in (1, 2, 3):
        mix.emit(TaskStarted(capability="summarize", attempt=attempt), iid=iid, gid=None, by=by)
        if attempt < 3:
            failed = TaskFailed(capability="summarize", error="flaky", attempt=attempt, final=False)
            mix.emit(failed, iid=iid, gid=None, by=by)
    done = TaskCompleted(capability="summarize", attempt=3, output={"summary": "ok"})
    mix.emit(done, iid=iid, gid=None, by=by)
    # The redelivery after the completing instance died before its ack, as the old runtime
    # reported it: a final failure for the instance it believed lost.
    lost = TaskFailed(capability="summarize", error="lost", error_type="InstanceLost", attempt=3)
    mix.emit(lost, iid=iid, gid=None, by=by)
    await publish_all(bus, mix.events)

    app = await ingest(settings)

    session = app.session(iid)
    assert (session.status, session.errors, session.failures_after_completion) == (
        "completed",
        2,
        1,
    )
    assert session.summary()["failures_after_completion"] == 1
    view = build(app, tmp_path / "costs.duckdb")
    rows = view.datastore.rows("SELECT status, errors FROM sessions WHERE iid = ?", [iid])
    assert [(r["status"], r["errors"]) for r in rows] == [("completed", 2)]


async def test_a_steady_flow_is_folded_in_small_batches_not_held_until_one_fills(
    bus: Bus, settings: ShoalSettings
) -> None:
    # Under a steady rate with no pause, a batch used to close only at 1,000 messages, so a
    # budget crossing waited seconds for its fold. Now a batch closes BATCH_WINDOW_S after
    # its first message, whatever the rate.
    mix = Mix(seed=14).until(300)
    await publish_all(bus, mix.events)
    stream = bus.topology.events.name
    await bus.js.add_consumer(stream, api.ConsumerConfig(durable_name="grab"))
    psub = await bus.js.pull_subscribe_bind(durable="grab", stream=stream)
    msgs = await psub.fetch(len(mix.events), timeout=5)
    assert len(msgs) == len(mix.events)
    app = open_core(settings)
    ingestion = Ingestion(bus, app, processor_for(app, settings, bus), batch=1000)

    async def feed_steadily() -> None:
        for msg in msgs:  # one message every 5 ms: never quiet for QUIET_S
            await ingestion.receiver._receive(msg)
            await asyncio.sleep(0.005)

    feeder = asyncio.create_task(feed_steadily())
    first = await ingestion.fetch(timeout=10)
    still_feeding = not feeder.done()
    await feeder

    assert first is not None and still_feeding
    assert [m.seq for m in first.messages] == list(range(1, len(first.messages) + 1))
    assert len(first.messages) < 100  # ~20 ms of a 200/s flow, far below the 300 fed
    app.close()

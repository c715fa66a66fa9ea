from __future__ import annotations

from shoal.bus import Bus
from shoal.schemas import CloudEvent, TaskStarted, ToolCalled


def ev(iid: str, gid: str | None, n: int = 0) -> CloudEvent:
    return CloudEvent.new(
        TaskStarted(capability="summarise", attempt=n + 1), iid=iid, gid=gid, source="shoal://t"
    )


async def test_republishing_the_same_event_stores_it_once(bus: Bus) -> None:
    event = ev("I1", "G1")
    first = await bus.publish(event)
    second = await bus.publish(event)
    assert second.duplicate is True and first.seq == second.seq
    stored = await bus.session_events("I1")
    assert [s.event for s in stored] == [event]


async def test_reads_by_session_and_by_goal_return_exactly_their_events(bus: Bus) -> None:
    a1, a2 = ev("A", "G"), ev("A", "G", 1)
    b1 = ev("B", "G")
    c1 = ev("C", None)
    await bus.publish_many([a1, b1, c1, a2])
    assert [s.event for s in await bus.session_events("A")] == [a1, a2]
    assert [s.event for s in await bus.goal_events("G")] == [a1, b1, a2]
    assert [s.event for s in await bus.session_events("C")] == [c1]
    assert await bus.session_events("nobody") == []


async def test_publish_many_returns_acks_in_order(bus: Bus) -> None:
    events = [ev("M", None, i) for i in range(250)]
    acks = await bus.publish_many(events)
    assert [a.seq for a in acks] == list(range(1, 251))
    stored = await bus.session_events("M")
    assert len(stored) == 250 and stored[-1].event == events[-1]


async def test_event_lands_on_the_subject_of_its_gid_iid_and_type(bus: Bus) -> None:
    event = CloudEvent.new(ToolCalled(call_id="c", tool="read_file"), iid="I", gid="G", source="s")
    await bus.publish(event)
    (stored,) = await bus.session_events("I")
    assert stored.subject == f"{bus.settings.prefix}.events.G.I.tool.called.other"


async def test_record_puts_the_same_event_on_the_log_and_the_work_subject(bus: Bus) -> None:
    event = ev("W", "G")
    await bus.record(event, bus.subjects.tasks("f", "summarise"))
    await bus.record(event, bus.subjects.tasks("f", "summarise"))  # a retry: deduplicated
    assert len(await bus.session_events("W")) == 1
    # A work queue is read by its workers, not browsed: look at the stored message directly.
    info = await bus.js.stream_info(bus.topology.tasks.name)
    assert info.state.messages == 1
    stored = await bus.js.get_msg(bus.topology.tasks.name, info.state.first_seq)
    assert stored.subject == bus.subjects.tasks("f", "summarise")
    assert stored.data == event.to_json()


async def test_malformed_message_on_a_subject_is_read_with_its_error(bus: Bus) -> None:
    await bus.nc.publish(bus.subjects.event("G", "X", "task.started"), b'{"type": "nope"}')
    await bus.nc.flush()
    good = ev("X", "G")
    await bus.publish(good)
    stored = await bus.session_events("X")
    assert stored[0].event is None and stored[0].error is not None
    assert "type: unknown event type 'nope'" in stored[0].error
    assert "iid: Field required" in stored[0].error
    assert stored[1].event == good


async def test_deadletter_keeps_the_message_and_its_reason(bus: Bus) -> None:
    await bus.deadletter("tasks", b"garbage", "invalid event: not JSON", "p.tasks.f.c")
    await bus.deadletter("tasks", b"garbage", "invalid event: not JSON", "p.tasks.f.c")
    (item,) = await bus.read(bus.subjects.all_deadletters, stream=bus.topology.deadletter.name)
    assert item.raw == b"garbage"
    msg = await bus.js.get_msg(bus.topology.deadletter.name, item.seq)
    assert msg.headers is not None
    assert msg.headers["Shoal-Reason"] == "invalid event: not JSON"
    assert msg.headers["Shoal-Original-Subject"] == "p.tasks.f.c"

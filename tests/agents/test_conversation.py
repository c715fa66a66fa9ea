"""Conversations mid-flight with real instance processes: ask, SIGKILL, reply, complete."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess

import pytest

from shoal.aggregates import open_core, run_core
from shoal.aggregates.interactions import open_questions, reply_to_session, send_message
from shoal.bus import Bus, ShoalSettings
from shoal.errors import NotFound
from shoal.projections.service import serving
from shoal.schemas import CloudEvent, TaskAssigned, TaskCompleted, new_id
from tests.agents.conftest import of_type, wait_events
from tests.agents.procs import start_agent
from tests.ops.test_cli_health import invoke

pytestmark = pytest.mark.timeout(90)


def start_asker(settings: ShoalSettings, instance: str) -> subprocess.Popen[bytes]:
    return start_agent(settings, "talk", "asker", "tests.agents.workers:asker_agent", instance)


async def ingest(settings: ShoalSettings) -> None:
    assert settings.nats_url
    await asyncio.wait_for(
        run_core(settings, settings.nats_url, asyncio.Event(), until_idle=True), 60
    )


async def test_a_waiting_handler_survives_a_sigkill_and_completes_with_the_reply(
    bus: Bus, settings: ShoalSettings
) -> None:
    first = start_asker(settings, "ask-1")
    second: subprocess.Popen[bytes] | None = None
    try:
        task = CloudEvent.new(
            TaskAssigned(capability="choose", input={"what": "the backup"}),
            iid=new_id(),
            principal="alice",
            source="shoal://cli/alice",
        )
        await bus.record(task, bus.subjects.tasks("talk", "choose"))
        subject = bus.subjects.session_events(task.iid)
        await wait_events(bus, subject, lambda e: of_type(e, "session.asked"), timeout=30)

        await ingest(settings)
        core = open_core(settings)
        assert core.session(task.iid).status == "awaiting_input"
        core.close()
        listed = await invoke(settings, "session", "ls", "--awaiting", "--json")
        assert [s["iid"] for s in json.loads(listed.stdout)] == [task.iid]
        async with serving(settings, bus.nc):
            assert await awaiting_input_in_status(settings) == 1
        with pytest.raises(NotFound):  # nothing to reply to in a session that never asked
            await reply_to_session(bus, "no-such-session", "eu", by="olga")

        first.send_signal(signal.SIGKILL)
        first.wait(10)
        second = start_asker(settings, "ask-2")
        # The redelivered task asks the same question again: still one open question.
        await asyncio.sleep(3)
        questions = await open_questions(bus, task.iid)
        assert [q.question for q in questions] == ["Which region for the backup?"]
        await send_message(bus, task.iid, "by the way: no rush", by="olga")

        await reply_to_session(bus, task.iid, "eu-west-1", by="olga")
        events = await wait_events(bus, subject, lambda e: of_type(e, "task.completed"), 30)
    finally:
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait(10)

    done = of_type(events, "task.completed")[0]
    assert isinstance(done.data, TaskCompleted)
    assert done.data.output == {"region": "eu-west-1", "instance": "ask-2"}
    assert len(of_type(events, "session.asked")) == 1  # asked again after the crash: deduplicated
    await ingest(settings)
    core = open_core(settings)
    session = core.session(task.iid)
    assert (session.status, session.messages) == ("completed", 2)
    core.close()


async def awaiting_input_in_status(settings: ShoalSettings) -> int:
    """``shoal status``'s count of sessions awaiting input, once the projection caught up."""
    for _ in range(100):
        health = json.loads((await invoke(settings, "status", "--json")).stdout)
        if health["sessions"].get("awaiting input"):
            return int(health["sessions"]["awaiting input"])
        await asyncio.sleep(0.2)
    raise AssertionError(f"status never counted the waiting session: {health['sessions']}")

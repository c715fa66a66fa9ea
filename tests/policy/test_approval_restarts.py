"""An approval outlives the instance that asked: SIGKILL while parked, grant, run once."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess

import pytest

from shoal.bus import Bus, ShoalSettings
from shoal.policy import Approvals
from shoal.schemas import CloudEvent, TaskAssigned, TaskCompleted, new_id
from tests.agents.conftest import of_type, wait_events
from tests.agents.procs import start_agent

pytestmark = pytest.mark.timeout(90)


def start_mailer(settings: ShoalSettings, instance: str) -> subprocess.Popen[bytes]:
    return start_agent(settings, "mail", "mailer", "tests.agents.workers:mailer_agent", instance)


async def pending(approvals: Approvals, timeout: float = 30) -> list[str]:
    for _ in range(int(timeout / 0.1)):
        found = await approvals.list()
        if found:
            return [a.id for a in found]
        await asyncio.sleep(0.1)
    raise AssertionError("no approval was requested")


async def test_a_parked_call_survives_its_instance_and_runs_once_when_granted(
    bus: Bus, settings: ShoalSettings
) -> None:
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    first = start_mailer(settings, "mail-1")
    second: subprocess.Popen[bytes] | None = None
    try:
        task = CloudEvent.new(
            TaskAssigned(capability="mail", input={"to": "cfo@example.com", "body": "Q3"}),
            iid=new_id(),
            principal="alice",
            source="shoal://cli/alice",
        )
        await bus.record(task, bus.subjects.tasks("mail", "mail"))
        approvals = await Approvals.open(bus)
        ids = await pending(approvals)

        first.send_signal(signal.SIGKILL)
        first.wait(10)
        second = start_mailer(settings, "mail-2")
        await asyncio.sleep(3)  # the task is redelivered to mail-2, which finds the approval
        assert [a.id for a in await approvals.list()] == ids  # asked once, still pending
        assert not (settings.data_dir / "sent.jsonl").exists()

        await approvals.decide(ids[0], grant=True, by="olga", reason="fine")
        subject = bus.subjects.session_events(task.iid)
        events = await wait_events(bus, subject, lambda e: of_type(e, "task.completed"), 30)
    finally:
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait(10)

    done = of_type(events, "task.completed")[0]
    assert isinstance(done.data, TaskCompleted) and done.data.output == {"result": "sent"}
    assert done.instance == "mail-2"
    sent = (settings.data_dir / "sent.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in sent] == [{"to": "cfo@example.com", "body": "Q3"}]
    assert len(of_type(events, "approval.requested")) == 1
    assert len(of_type(events, "approval.granted")) == 1

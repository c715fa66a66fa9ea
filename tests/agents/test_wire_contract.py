"""The documented wire contract is enough: a plain nats-py worker serves a shoal orchestrator."""

from __future__ import annotations

import ast
import asyncio
import json
import sys
from pathlib import Path

import pytest

from shoal.bus import Bus
from shoal.schemas import GoalCompleted, GoalPlanned
from tests.agents.conftest import of_type, shout_goal

pytestmark = pytest.mark.timeout(60)

WORKER = Path(__file__).with_name("plain_worker.py")


async def test_plain_nats_worker_takes_tasks_and_orchestrator_accepts_results(bus: Bus) -> None:
    imported = {
        (n.module or "") if isinstance(n, ast.ImportFrom) else a.name
        for n in ast.walk(ast.parse(WORKER.read_text()))
        if isinstance(n, ast.Import | ast.ImportFrom)
        for a in n.names
    }
    assert not {m for m in imported if m.split(".")[0] in ("shoal", "tests")}
    url = bus.settings.nats_url or ""
    worker = await asyncio.create_subprocess_exec(
        sys.executable,
        str(WORKER),
        url,
        bus.settings.prefix,
        "wire",
        "shout",
        "3",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    goal, events = await shout_goal(bus, ["hello", "nats", "world"])
    out, err = await asyncio.wait_for(worker.communicate(), 30)
    assert worker.returncode == 0, err.decode()
    report = json.loads(out.decode().strip().splitlines()[-1])
    assert (report["handled"], report["shoal_free"]) == (3, True)
    planned = next(
        s.event.data for s in events if s.event and isinstance(s.event.data, GoalPlanned)
    )
    done = of_type(events, "goal.completed")[0]
    assert done is not None and isinstance(done.data, GoalCompleted)
    by_iid = {t.iid: t.input["text"] for t in planned.tasks}
    assert {by_iid[iid]: out["text"] for iid, out in done.data.result["outputs"].items()} == {
        "hello": "HELLO",
        "nats": "NATS",
        "world": "WORLD",
    }
    completed = of_type(events, "task.completed")
    assert {e.agent for e in completed} == {"plain-worker"}
    assert {e.parentiid for e in completed} == {goal.iid}

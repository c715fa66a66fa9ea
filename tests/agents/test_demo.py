"""The demo end to end: the goal's log is one tree under the goal, with the planned twists."""

from __future__ import annotations

import json
import re
from collections import Counter

import pytest
from typer.testing import CliRunner

from shoal.agents.demo import DEMO_DOCUMENTS
from shoal.bus import Bus, ShoalSettings
from shoal.ops.cli import app
from shoal.ops.demo import GoalProgress, run_demo
from shoal.schemas import GoalCompleted, GoalPlanned, PolicyDecided, TaskFailed

pytestmark = pytest.mark.timeout(60)


async def test_demo_goal_runs_end_to_end_with_one_gid_and_a_correct_iid_tree(bus: Bus) -> None:
    seen: list[tuple[int | None, int]] = []

    def on_progress(p: GoalProgress) -> None:
        seen.append((p.total, p.done))

    result = await run_demo(bus, on_progress=on_progress)
    events = [s.event for s in result.events]
    assert all(e is not None for e in events)
    evs = [e for e in events if e is not None]
    assert {e.gid for e in evs} == {result.gid}
    root = result.root_iid
    planned = next(e.data for e in evs if isinstance(e.data, GoalPlanned))
    task_iids = {t.iid for t in planned.tasks}
    assert len(task_iids) == len(DEMO_DOCUMENTS) == 5
    # Tree: the root session has no parent; every other session is a planned task under it.
    assert {e.parentiid for e in evs if e.iid == root} == {None}
    assert {e.iid for e in evs} == {root} | task_iids
    assert {e.parentiid for e in evs if e.iid != root} == {root}
    by_type = Counter(e.short_type for e in evs)
    assert by_type == {
        "goal.submitted": 1,
        "tool.called": 7,  # list_files + 6 read_file (one document read twice)
        "model.called": 6,  # planning + 5 summaries
        "goal.planned": 1,
        "task.assigned": 5,
        "task.started": 6,
        "task.completed": 5,
        "task.failed": 1,
        "policy.decided": 2,  # fetch_url denied; send_email needs approval
        "approval.requested": 1,
        "approval.denied": 1,  # nobody approved it: timed out, recorded as such
        "goal.completed": 1,
    }
    [denied] = [e for e in evs if isinstance(e.data, PolicyDecided) and e.data.decision == "deny"]
    assert (denied.data.target, denied.data.decision, denied.data.rule) == (  # type: ignore[attr-defined]
        "fetch_url",
        "deny",
        "manifest.tool",
    )
    [retry] = [e for e in evs if isinstance(e.data, TaskFailed)]
    assert (retry.data.attempt, retry.data.final) == (1, False)  # type: ignore[attr-defined]
    retried = [e for e in evs if e.iid == retry.iid and e.short_type == "task.completed"]
    assert [e.data.attempt for e in retried] == [2]  # type: ignore[attr-defined]
    outcome = result.outcome.data
    assert isinstance(outcome, GoalCompleted)
    assert sorted(outcome.result["documents"]) == sorted(DEMO_DOCUMENTS)
    assert outcome.result["documents"]["nats.md"] == (
        "NATS JetStream: JetStream adds persistence to NATS subjects. (30 words)"
    )
    assert outcome.summary == "summarised 5 documents (167 words)"
    assert seen[0] == (5, 0) and seen[-1] == (5, 5)
    model_events = [e for e in evs if e.short_type == "model.called"]
    assert model_events[0].iid == root  # planning is attributed to the goal's session


def test_demo_cli_prints_result_and_timeline_and_runs_again(settings: ShoalSettings) -> None:
    env = {
        "NATS_URL": settings.nats_url or "",
        "SHOAL_PREFIX": settings.prefix,
        "SHOAL_DATA_DIR": str(settings.data_dir),
        "SHOAL_PRINCIPAL": "tester",
    }
    runner = CliRunner()
    first = runner.invoke(app, ["demo"], env=env)
    assert first.exit_code == 0, first.stderr
    assert "summarised 5 documents (167 words)" in first.stdout
    assert "timeline of goal" in first.stdout
    assert "1 call(s) refused by policy (fetch_url); 1 failed attempt(s) retried" in first.stdout
    second = runner.invoke(app, ["demo", "--json"], env=env)
    assert second.exit_code == 0, second.stderr
    doc = json.loads(second.stdout)
    assert doc["outcome"]["type"] == "shoal.goal.completed"
    assert doc["tasks"] == {"total": 5, "done": 5}
    assert len(doc["events"]) == 37
    assert {e["event"]["gid"] for e in doc["events"]} == {doc["gid"]}
    [timed_out] = doc["approvals"]
    assert re.fullmatch(r"send_email in \w{26}: timed out after \d\.\ds", timed_out)


def test_demo_with_approve_grants_the_one_approval_and_sends_exactly_the_reviewed_email(
    settings: ShoalSettings,
) -> None:
    env = {
        "NATS_URL": settings.nats_url or "",
        "SHOAL_PREFIX": settings.prefix,
        "SHOAL_DATA_DIR": str(settings.data_dir),
        "SHOAL_PRINCIPAL": "tester",
    }
    done = CliRunner().invoke(app, ["demo", "--approve", "--json"], env=env)
    assert done.exit_code == 0, done.stderr
    doc = json.loads(done.stdout)
    [granted] = doc["approvals"]
    assert re.fullmatch(r"send_email in \w{26}: granted by tester after \d+\.\d\ds", granted)
    shared = doc["outcome"]["data"]["result"]["documents"]["kill-switches.md"]
    outbox = (settings.data_dir / "outbox.txt").read_text()
    assert outbox == f"To: oncall@example.com\n{shared}\n\n"  # the reviewed body, once
    types = [e["event"]["type"] for e in doc["events"]]
    assert types.count("shoal.approval.granted") == 1
    assert types.count("shoal.tool.called") == 8  # the email ran once, after the grant

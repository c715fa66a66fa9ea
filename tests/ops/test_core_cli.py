"""``shoal core``, ``session``, ``goal show`` and ``outcome report`` as an operator runs them.

The fault test runs the core as a real process and SIGKILLs it mid-ingestion.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

from typer.testing import CliRunner, Result

from shoal.aggregates import open_core, run_core
from shoal.bus import Bus, ShoalSettings
from shoal.ops.cli import app as cli_app
from shoal.ops.cli.session import select_sessions
from shoal.schemas import ModelCalled, TaskStarted
from tests.aggregates.eventmix import Mix, publish_all


def shoal_args(settings: ShoalSettings) -> list[str]:
    assert settings.nats_url
    return [
        "--nats-url",
        settings.nats_url,
        "--prefix",
        settings.prefix,
        "--data-dir",
        str(settings.data_dir),
    ]


async def invoke(settings: ShoalSettings, *args: str) -> Result:
    """Run the CLI in a thread (it runs its own event loop), as a user would."""
    return await asyncio.to_thread(
        CliRunner().invoke, cli_app, [*shoal_args(settings), *args], env={"COLUMNS": "200"}
    )


async def ingest(settings: ShoalSettings) -> None:
    assert settings.nats_url
    await asyncio.wait_for(
        run_core(settings, settings.nats_url, asyncio.Event(), until_idle=True), 60
    )


async def one_goal(bus: Bus, settings: ShoalSettings) -> tuple[Mix, str, str]:
    mix = Mix(seed=21)
    mix.start_agents()
    gid = mix.goal(tasks=3)
    await publish_all(bus, mix.events)
    await ingest(settings)
    root = next(e.iid for e in mix.events if e.type == "shoal.goal.submitted")
    return mix, gid, root


async def test_replay_prints_the_tree_with_denial_retry_and_server_side_costs(
    bus: Bus, settings: ShoalSettings
) -> None:
    mix, _, root = await one_goal(bus, settings)

    result = await invoke(settings, "session", "replay", root)

    assert result.exit_code == 0, result.output
    out = result.output
    assert out.count("task.assigned") == 3
    assert "policy.decided" in out and "deny" in out
    assert "task.failed" in out and "(will retry)" in out
    assert out.count("task.started") == 4  # three tasks, one of them twice
    assert f"total ${mix.cost:.8f}".rstrip("0") in out
    assert "(agent claimed $0.0001)" in out


async def test_replay_as_of_a_sequence_shows_the_state_then(
    bus: Bus, settings: ShoalSettings
) -> None:
    mix, _, root = await one_goal(bus, settings)
    stored = await bus.session_events(root)
    planned = next(s.seq for s in stored if s.event and s.event.type == "shoal.goal.planned")

    result = await invoke(settings, "session", "replay", root, "--at", str(planned), "--json")

    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    assert doc["at"] == planned
    assert doc["tree"]["children"] == []
    assert [e["type"] for e in doc["tree"]["events"]] == [
        "goal.submitted",
        "model.called",
        "goal.planned",
    ]
    call = next(e.data for e in mix.events if isinstance(e.data, ModelCalled))
    assert doc["tree"]["state"]["model_calls"] == 1
    assert Decimal(doc["tree"]["state"]["cost_usd"]) == mix.prices.cost(
        "offline-small", call.input_tokens, call.output_tokens
    )


async def test_goal_show_lists_every_session_and_the_total_cost(
    bus: Bus, settings: ShoalSettings
) -> None:
    mix, gid, root = await one_goal(bus, settings)

    result = await invoke(settings, "goal", "show", gid, "--json")

    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    assert len(doc["sessions"]) == 4
    assert doc["sessions"][0]["iid"] == root
    assert Decimal(doc["total_cost_usd"]) == mix.cost
    assert [s["retries"] for s in doc["sessions"]] == [0, 1, 0, 0]
    table = await invoke(settings, "goal", "show", gid)
    assert "4 sessions, total $" in table.output


async def test_session_ls_filters_by_status_and_show_prints_one(
    bus: Bus, settings: ShoalSettings
) -> None:
    _, _, root = await one_goal(bus, settings)

    listed = json.loads((await invoke(settings, "session", "ls", "--json")).output)
    completed = await invoke(settings, "session", "ls", "--status", "completed", "--json")
    running = await invoke(settings, "session", "ls", "--status", "running", "--json")
    shown = json.loads((await invoke(settings, "session", "show", root, "--json")).output)

    assert len(listed) == 4
    assert len(json.loads(completed.output)) == 4
    assert json.loads(running.output) == []
    assert (await invoke(settings, "session", "ls", "--awaiting")).output == (
        "no sessions awaiting input\n"
    )
    assert (shown["iid"], shown["status"], shown["model_calls"]) == (root, "completed", 1)


async def test_unknown_iid_or_gid_is_one_clear_line_and_exit_1(settings: ShoalSettings) -> None:
    open_core(settings).close()  # a store exists; these names are not in it
    replay = await invoke(settings, "session", "replay", "nope")
    show = await invoke(settings, "session", "show", "nope")
    goal = await invoke(settings, "goal", "show", "nope")
    outcome = await invoke(settings, "outcome", "report", "nope", "--outcome", "success")

    for result, text in (
        (replay, f"no events for session 'nope' on {settings.stream_prefix}_EVENTS"),
        (show, "no session 'nope' in the core's store"),
        (goal, "no goal 'nope' in the core's store"),
        (outcome, "no session 'nope' on the event log"),
    ):
        assert result.exit_code == 1
        assert result.output.strip().splitlines() == [f"error: {text}"]


async def test_outcome_report_reaches_the_session_and_its_goal(
    bus: Bus, settings: ShoalSettings
) -> None:
    _, gid, root = await one_goal(bus, settings)

    result = await invoke(
        settings, "outcome", "report", root, "--outcome", "success", "--signal", "ci_passed"
    )
    await ingest(settings)

    assert result.exit_code == 0, result.output
    app = open_core(settings)
    assert (app.session(root).outcome, app.session(root).outcome_signal) == (
        "success",
        "ci_passed",
    )
    assert app.goal(gid).outcome == "success"


async def test_sigkill_of_the_core_mid_ingestion_loses_and_doubles_nothing(
    bus: Bus, settings: ShoalSettings, tmp_path: Path
) -> None:
    mix = Mix(seed=31).until(50_000)
    await publish_all(bus, mix.events, chunk=5000)
    total = len(mix.events)
    log = (tmp_path / "core.log").open("wb")
    core = subprocess.Popen(  # noqa: ASYNC220 - started once; the test then only polls it
        [sys.executable, "-m", "shoal", *shoal_args(settings), "core"],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "SHOAL_CORE_BATCH": "500"},
    )
    try:
        deadline = time.monotonic() + 90
        position = 0
        while position < total // 3:
            assert time.monotonic() < deadline, "the core made no progress"
            assert core.poll() is None, (tmp_path / "core.log").read_text()
            await asyncio.sleep(0.05)
            position = await asyncio.to_thread(_position, settings)
        core.send_signal(signal.SIGKILL)
        core.wait(10)
    finally:
        if core.poll() is None:
            core.kill()
        log.close()
    killed_at = await asyncio.to_thread(_position, settings)
    assert total // 3 <= killed_at < total

    await ingest(settings)

    app = open_core(settings)
    sessions = app.sessions()
    assert app.max_tracking_id(bus.topology.events.name) == total
    assert len(sessions) == mix.sessions
    assert sum((s.cost_usd for s in sessions), Decimal(0)) == mix.cost
    assert sum(s.model_calls for s in sessions) == mix.model_calls
    assert sum(s.tool_calls for s in sessions) == mix.tool_calls
    assert sum(s.retries for s in sessions) == mix.sessions // 5
    assert {s.last_seq for s in sessions} <= set(range(1, total + 1))


def _position(settings: ShoalSettings) -> int:
    app = open_core(settings)
    try:
        return app.max_tracking_id(f"{settings.stream_prefix}_EVENTS")
    finally:
        app.close()


async def test_sigterm_stops_the_core_cleanly_with_its_counts(
    bus: Bus, settings: ShoalSettings, tmp_path: Path
) -> None:
    mix = Mix(seed=32)
    mix.start_agents()
    mix.goal(tasks=2)
    await publish_all(bus, mix.events)
    core = subprocess.Popen(  # noqa: ASYNC220 - started once; the test then only polls it
        [sys.executable, "-m", "shoal", *shoal_args(settings), "core"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 60
        while await asyncio.to_thread(_position, settings) < len(mix.events):
            assert time.monotonic() < deadline, "the core did not ingest the goal"
            assert core.poll() is None, "the core exited early"
            await asyncio.sleep(0.05)
        core.send_signal(signal.SIGTERM)
        out, _ = await asyncio.to_thread(core.communicate, timeout=30)
    finally:
        if core.poll() is None:
            core.kill()
    assert core.returncode == 0, out
    n = len(mix.events)
    assert f"core stopped at seq {n}: {n} messages, {n} applied, 0 rejected" in out.decode()


async def test_session_ls_stuck_lists_running_sessions_silent_too_long(
    bus: Bus, settings: ShoalSettings
) -> None:
    mix = Mix(seed=33)
    mix.start_agents()
    mix.emit(TaskStarted(capability="summarize"), iid="s-quiet", gid=None, by=mix.worker)
    mix.goal(tasks=1)  # completed sessions: never stuck
    await publish_all(bus, mix.events)
    await ingest(settings)
    started = mix.events[2].time

    later = started + timedelta(seconds=settings.stuck_after_s + 1)
    stuck_later = await asyncio.to_thread(select_sessions, settings, stuck=True, now=later)
    stuck_now = await asyncio.to_thread(select_sessions, settings, stuck=True, now=started)

    assert [s.iid for s in stuck_later] == ["s-quiet"]
    assert stuck_now == []


async def test_session_ls_of_one_tenant_lists_only_that_tenants_sessions(
    bus: Bus, settings: ShoalSettings
) -> None:
    other = settings.model_copy(update={"prefix": settings.prefix + "b"})
    mine, theirs = Mix(seed=31).until(60), Mix(seed=32).until(90)
    await publish_all(bus, mine.events)
    async with Bus.connect(other.nats_url or "", other) as other_bus:
        await other_bus.provision()
        await publish_all(other_bus, theirs.events)
    await ingest(settings)
    await ingest(other)

    listed = []
    for tenant in (settings, other):
        result = await invoke(tenant, "session", "ls", "--json")
        assert result.exit_code == 0, result.output
        listed.append({row["iid"] for row in json.loads(result.output)})

    assert [len(rows) for rows in listed] == [mine.sessions, theirs.sessions]
    assert not listed[0] & listed[1]
    assert (settings.data_dir / "tenants" / other.prefix / "core.sqlite").exists()

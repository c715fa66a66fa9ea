"""The foundation commands end to end: real server, real CLI, exact output."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from shoal.bus import Bus, ShoalSettings
from shoal.bus.tracecontext import goal_trace_id
from shoal.ops.cli import app
from shoal.ops.server import EmbeddedServer, pid_alive
from shoal.schemas import CloudEvent, TaskStarted

runner = CliRunner()


def shoal(env: dict[str, str], *args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, list(args), env=env)
    return result.exit_code, result.stdout, result.stderr


async def ashoal(env: dict[str, str], *args: str) -> tuple[int, str, str]:
    """The CLI runs its own event loop: from an async test, run it in a thread."""
    return await asyncio.to_thread(shoal, env, *args)


@pytest.fixture
def external(settings: ShoalSettings) -> dict[str, str]:
    """Environment pointing every command at the test server with a fresh prefix."""
    return {
        "NATS_URL": settings.nats_url or "",
        "SHOAL_PREFIX": settings.prefix,
        "SHOAL_DATA_DIR": str(settings.data_dir),
        "SHOAL_PRINCIPAL": "tester",
    }


@pytest.fixture
def embedded(tmp_path: Path) -> Iterator[dict[str, str]]:
    env = {
        "SHOAL_DATA_DIR": str(tmp_path / "data"),
        "NATS_URL": "",
        "SHOAL_GATEWAY_PORT": "0",  # free ports: tests run side by side
        "SHOAL_GATEWAY_MCP_PORT": "0",
    }
    yield env
    EmbeddedServer(ShoalSettings(data_dir=tmp_path / "data")).stop()


def test_up_twice_leaves_one_server_and_down_stops_it(embedded: dict[str, str]) -> None:
    code, out, _ = shoal(embedded, "up", "--json")
    assert code == 0
    first = json.loads(out)
    assert first["started"] is True and "SHOAL_EVENTS" in first["created"]
    assert first["started_services"] == [
        "core",
        "query",
        "gateway",
        "supervisor",
        "warden",
        "console",
    ]
    assert all(pid_alive(pid) for pid in first["services"].values())
    code, out, _ = shoal(embedded, "up", "--json")
    again = json.loads(out)
    assert (code, again["started"], again["created"], again["url"]) == (0, False, [], first["url"])
    assert (again["services"], again["started_services"]) == (first["services"], [])
    record = EmbeddedServer(ShoalSettings(data_dir=Path(embedded["SHOAL_DATA_DIR"]))).running()
    assert record is not None and record.url == first["url"]
    code, out, _ = shoal(embedded, "status", "--json")
    assert json.loads(out)["services"] == first["services"]
    for _ in range(300):  # the gateway writes where it listens once it has bound
        gateway = json.loads(shoal(embedded, "status", "--json")[1])["gateway"]
        if gateway is not None:
            break
        time.sleep(0.1)
    assert gateway is not None and gateway["url"].startswith("http://127.0.0.1:")
    assert gateway["url"].endswith("/v1") and gateway["mcp_url"].endswith("/mcp")
    code, out, _ = shoal(embedded, "down")
    assert (code, out.splitlines()) == (
        0,
        [
            "console stopped",
            "warden stopped",
            "supervisor stopped",
            "gateway stopped",
            "query stopped",
            "core stopped",
            "embedded NATS stopped",
        ],
    )
    assert not pid_alive(record.pid)
    assert not any(pid_alive(pid) for pid in first["services"].values())
    code, _, err = shoal(embedded, "status")
    assert code == 1
    assert err.strip() == (
        f"error: the embedded NATS server is not running (data dir {embedded['SHOAL_DATA_DIR']}); "
        "run 'shoal up' or set NATS_URL"
    )


def test_nats_url_makes_commands_use_that_server(
    external: dict[str, str], settings: ShoalSettings
) -> None:
    code, out, _ = shoal(external, "up", "--no-services", "--json")
    assert code == 0 and json.loads(out)["url"] == settings.nats_url
    assert json.loads(out)["started"] is False
    code, out, _ = shoal(external, "status", "--json")
    status = json.loads(out)
    assert status["url"] == settings.nats_url and status["embedded"] is False
    assert not (settings.data_dir / "nats").exists()


async def test_goal_submit_publishes_goal_submitted_and_prints_the_gid(
    external: dict[str, str], bus: Bus
) -> None:
    code, out, _ = await ashoal(
        external,
        "goal",
        "submit",
        "onboarding",
        "Welcome Ada",
        "--budget",
        "2.50",
        "--label",
        "team=payments,task_class=bugfix",
        "--label",
        "prompt-version=v2",
        "--wait-for-fleet",
    )
    assert code == 0
    gid = out.strip()
    stored = await bus.goal_events(gid)
    assert len(stored) == 1
    event = stored[0].event
    assert event is not None and event.type == "shoal.goal.submitted"
    assert (event.gid, event.fleet, event.principal) == (gid, "onboarding", "tester")
    assert event.source == "shoal://cli/tester"
    # The goal's trace context, derived from the GID: every worker joins one trace.
    version, trace_id, _span_id, flags = (event.traceparent or "---").split("-")
    assert (version, trace_id, flags) == ("00", f"{goal_trace_id(gid):032x}", "01")
    assert event.data.model_dump()["budget_usd"] == pytest.approx(2.5)
    labels = {"team": "payments", "task_class": "bugfix", "prompt_version": "v2"}
    assert event.data.labels.values() == labels  # type: ignore[attr-defined]
    goals = await bus.js.get_msg(bus.topology.goals.name, subject=bus.subjects.goals("onboarding"))
    assert json.loads(goals.data or b"")["id"] == event.id


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["a.b", "text"], "error: invalid goal: fleet: 'a.b' must be one subject token"),
        (["f", ""], "error: invalid goal: text: String should have at least 1 character"),
        (["f", "t", "--inputs", "{oops"], "error: --inputs is not valid JSON"),
        (["f", "t", "--inputs", "[1]"], "error: --inputs must be a JSON object"),
        (["f", "t", "--budget", "lots"], "error: --budget 'lots' is not a number of dollars"),
    ],
)
def test_malformed_goal_submission_is_one_clear_line(
    external: dict[str, str], args: list[str], message: str
) -> None:
    code, out, err = shoal(external, "goal", "submit", *args)
    assert code == 2 and out == ""
    assert err.startswith(message) and err.count("\n") == 1
    assert "Traceback" not in err


async def test_events_tail_from_start_shows_exactly_that_sessions_events(
    external: dict[str, str], bus: Bus
) -> None:
    mine = [
        CloudEvent.new(TaskStarted(capability="c", attempt=n), iid="MINE", gid="G", source="s")
        for n in (1, 2)
    ]
    other = CloudEvent.new(TaskStarted(capability="c"), iid="OTHER", gid="G", source="s")
    await bus.publish_many([mine[0], other, mine[1]])
    code, out, _ = await ashoal(
        external, "events", "tail", "--iid", "MINE", "--from-start", "--json"
    )
    assert code == 0
    lines = [json.loads(line) for line in out.splitlines()]
    assert [line["event"]["id"] for line in lines] == [mine[0].id, mine[1].id]
    code, out, _ = await ashoal(external, "events", "tail", "--gid", "G", "--from-start")
    assert code == 0 and len(out.splitlines()) == 3
    code, out, _ = await ashoal(
        external, "events", "tail", "--gid", "G", "--type", "task.started", "--from-start", "--json"
    )
    assert code == 0 and len(out.splitlines()) == 3
    code, out, _ = await ashoal(
        external, "events", "tail", "--gid", "G", "--type", "task.completed", "--from-start"
    )
    assert (code, out) == (0, "")


async def test_events_tail_reports_a_malformed_message_in_one_line_and_goes_on(
    external: dict[str, str], bus: Bus
) -> None:
    await bus.nc.publish(bus.subjects.event(None, "BAD", "task.started"), b"{not json")
    good = CloudEvent.new(TaskStarted(capability="c"), iid="BAD", source="s")
    await bus.publish(good)
    code, out, err = await ashoal(external, "events", "tail", "--iid", "BAD", "--from-start")
    assert code == 0
    assert err.strip().startswith("#1 malformed message on")
    assert err.strip().endswith(
        "invalid event: not JSON: Invalid JSON: key must be a string at line 1 column 2"
    )
    assert len(out.splitlines()) == 1 and "task.started" in out


async def test_events_tail_follow_sees_new_events_then_stops_when_idle(
    external: dict[str, str], bus: Bus
) -> None:
    before = CloudEvent.new(TaskStarted(capability="c"), iid="F", source="s")
    await bus.publish(before)
    after = CloudEvent.new(TaskStarted(capability="c", attempt=2), iid="F", source="s")

    async def publish_later() -> None:
        await asyncio.sleep(0.5)
        await bus.publish(after)

    task = asyncio.create_task(publish_later())
    result = await asyncio.to_thread(
        runner.invoke,
        app,
        ["events", "tail", "--iid", "F", "--from-start", "-f", "--timeout", "1.5", "--json"],
        env=external,
    )
    await task
    ids = [json.loads(line)["event"]["id"] for line in result.stdout.splitlines()]
    assert result.exit_code == 0 and ids == [before.id, after.id]


def test_schemas_export_writes_every_event_bucket_and_endpoint_schema(
    external: dict[str, str], tmp_path: Path
) -> None:
    from shoal.ops.contract import ENDPOINTS, KV_DOCUMENTS
    from shoal.schemas import EVENT_TYPES

    code, out, _ = shoal(external, "schemas", "export", str(tmp_path / "s"))
    total = len(EVENT_TYPES) + len(KV_DOCUMENTS) + 2 * len(ENDPOINTS)
    assert code == 0 and out.strip() == f"wrote {total} schemas to {tmp_path / 's'}"
    assert len(list((tmp_path / "s").glob("shoal.*.json"))) == len(EVENT_TYPES)
    assert len(list((tmp_path / "s" / "kv").glob("*.json"))) == len(KV_DOCUMENTS) == 10
    assert len(list((tmp_path / "s" / "api").glob("*.json"))) == 2 * len(ENDPOINTS) == 52

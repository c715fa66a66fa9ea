"""``shoal status`` as a health check, and ``shoal deadletters`` for every stream."""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

from nats.js import api
from typer.testing import CliRunner, Result

from shoal.bus import Bus, ShoalSettings
from shoal.ops.cli import app
from shoal.schemas import CloudEvent, TaskStarted

runner = CliRunner()


async def invoke(settings: ShoalSettings, *args: str) -> Result:
    env = {
        "NATS_URL": settings.nats_url or "",
        "SHOAL_PREFIX": settings.prefix,
        "SHOAL_DATA_DIR": str(settings.data_dir),
    }
    return await asyncio.to_thread(runner.invoke, app, list(args), env=env)


async def idle_core_consumer(bus: Bus) -> None:
    """The core's durable consumer, as a core that stopped would leave it."""
    await bus.js.add_consumer(
        bus.topology.events.name,
        api.ConsumerConfig(durable_name="core", ack_policy=api.AckPolicy.EXPLICIT),
    )


async def test_status_reports_core_lag_and_dead_letters_and_exits_1_when_unhealthy(
    bus: Bus, settings: ShoalSettings
) -> None:
    # The core's durable consumer exists but has acknowledged nothing: 5 events behind.
    await idle_core_consumer(bus)
    await bus.publish_many(
        [CloudEvent.new(TaskStarted(capability="c"), iid=f"S{n}", source="s") for n in range(5)]
    )
    await bus.deadletter("tasks", b"junk-1", "not JSON", f"{settings.prefix}.tasks.f.c")
    await bus.deadletter("tasks", b"junk-2", "not JSON", f"{settings.prefix}.tasks.f.c")
    await bus.deadletter("events", b"junk-3", "unknown type", f"{settings.prefix}.events._.X.y.z")

    result = await invoke(settings, "status", "--json", "--max-lag", "4")
    assert result.exit_code == 1
    status = json.loads(result.stdout)
    assert status["healthy"] is False
    assert status["problems"] == [
        "the query service does not answer",
        "the core is 5 events behind the stream (> 4)",
    ]
    assert (status["core"]["lag"], status["query"]["state"]) == (5, "down")
    assert status["deadletters_by_origin"] == {"events": 1, "tasks": 2}
    assert status["deadletters"] == 3
    assert set(status["versions"]) == {"shoal", "nats-server", "nats-py", "python"}
    assert re.fullmatch(r"\d+\.\d+\.\d+.*", status["versions"]["nats-server"])
    assert status["server_version"] == status["versions"]["nats-server"]

    table = await invoke(settings, "status", "--max-lag", "100")
    assert table.exit_code == 1  # still: no query service answers
    lines = table.stdout.splitlines()
    assert lines[0] == "UNHEALTHY: the query service does not answer"
    assert "dead letters: events 1, tasks 2 (shoal deadletters ls)" in lines


async def test_deadletters_ls_show_and_replay_to_the_original_subject(
    bus: Bus, settings: ShoalSettings
) -> None:
    event = CloudEvent.new(TaskStarted(capability="c"), iid="R1", source="s")
    original = bus.event_subject(event)
    await bus.deadletter("events", event.to_json(), "core was down", original)
    await bus.deadletter("tasks", b"{oops", "not JSON", f"{settings.prefix}.tasks.f.c")

    listed = json.loads((await invoke(settings, "deadletters", "ls", "--json")).stdout)
    assert (listed["total"], listed["by_origin"]) == (2, {"events": 1, "tasks": 1})
    first, second = listed["letters"]
    assert (first["origin"], first["subject"], first["reason"]) == (
        "events",
        original,
        "core was down",
    )
    assert (second["origin"], second["size"]) == ("tasks", 5)

    shown = json.loads(
        (await invoke(settings, "deadletters", "show", str(second["seq"]), "--json")).stdout
    )
    assert (shown["body"], shown["reason"]) == ("{oops", "not JSON")

    replayed = await invoke(settings, "deadletters", "replay", str(first["seq"]))
    assert replayed.exit_code == 0, replayed.stderr
    assert replayed.stdout.startswith(f"dead letter #{first['seq']} replayed to {original}")
    stored = await bus.session_events("R1")
    assert [s.event.id for s in stored if s.event] == [event.id]
    after = json.loads((await invoke(settings, "deadletters", "ls", "--json")).stdout)
    assert (after["total"], after["by_origin"]) == (1, {"tasks": 1})

    missing = await invoke(settings, "deadletters", "show", "999")
    assert (missing.exit_code, missing.stderr.strip()) == (
        1,
        f"error: no dead letter #999 on {settings.stream_prefix}_DEADLETTER",
    )


ISO = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)")


def _times(value: Any, key: str = "") -> list[str]:
    if isinstance(value, dict):
        return [t for k, v in value.items() for t in _times(v, k)]
    if isinstance(value, list):
        return [t for v in value for t in _times(v, key)]
    timelike = key in ("at", "time", "ts") or key.endswith(("_at", "_active"))
    return [value] if timelike and isinstance(value, str) else []


async def test_times_in_json_are_iso_8601_with_t_and_an_offset(
    bus: Bus, settings: ShoalSettings
) -> None:
    await idle_core_consumer(bus)
    await bus.deadletter("tasks", b"x", "bad", f"{settings.prefix}.tasks.f.c")
    kill = await invoke(settings, "kill", "--all", "--json")
    assert kill.exit_code == 0, kill.stderr
    found: list[str] = []
    for args in (["kill", "--list"], ["deadletters", "ls"], ["status"]):
        result = await invoke(settings, *args, "--json")
        found += _times(json.loads(result.stdout))
    assert len(found) >= 2  # the switch, the dead letter (the core has delivered nothing)
    assert [t for t in found if not ISO.fullmatch(t)] == []

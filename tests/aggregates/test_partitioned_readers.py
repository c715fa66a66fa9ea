"""Every reader of a partitioned core gives the single core's answers on the same log.

One log, folded by a real ``shoal core`` (one store) into one data dir and by a real
``shoal core --partitions 2`` into another; then the CLI's session and goal commands, the
projection (every table, and ``shoal cost``) and ``shoal status``'s lag are asked in both.
The partitioned side's CLI is given no ``SHOAL_CORE_PARTITIONS``: it finds N in the layout
the core recorded.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from shoal.aggregates.partitions import Owner, Partition, fnv1a32
from shoal.aggregates.readers import LAYOUT_FILE, core_partitions, open_reader, record_layout
from shoal.bus import Bus, ShoalSettings
from shoal.console.data import ConsoleData
from shoal.console.data import Health as ConsoleHealth
from shoal.errors import Refused
from shoal.ops.cli import app as cli_app
from shoal.ops.deadletters import count_by_origin
from shoal.ops.health import Health, check_health
from shoal.projections.host import ProjectionHost
from shoal.projections.schema import TABLES
from shoal.schemas import OutcomeReported, TaskAssigned, TaskStarted
from tests.aggregates.eventmix import Mix, publish_all
from tests.aggregates.partitioned import bare_task
from tests.ops.test_core_cli import shoal_args

pytestmark = pytest.mark.timeout(300)


def _core(settings: ShoalSettings, *extra: str) -> None:
    """A real core process until it has folded the whole log (killed on timeout)."""
    env = {k: v for k, v in os.environ.items() if k != "SHOAL_CORE_PARTITIONS"}
    done = subprocess.run(
        [sys.executable, "-m", "shoal", *shoal_args(settings), "core", "--until-idle", *extra],
        capture_output=True,
        timeout=180,
        env=env,
    )
    assert done.returncode == 0, done.stderr.decode()[-3000:]


async def _cli(settings: ShoalSettings, *args: str) -> Any:
    """``shoal … --json`` as a user runs it (no SHOAL_CORE_PARTITIONS), parsed; in a thread
    (the CLI runs its own event loop)."""
    result = await asyncio.to_thread(
        CliRunner().invoke,
        cli_app,
        [*shoal_args(settings), *args, "--json"],
        env={"COLUMNS": "200", "SHOAL_CORE_PARTITIONS": None},
    )
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def _tables(settings: ShoalSettings) -> dict[str, list[dict[str, Any]]]:
    """Every projection table's rows, in one order, after catching up with the core."""
    host = ProjectionHost(settings)
    try:
        host.open()
        host.sync()
        ds = host.datastore
        return {t.name: ds.rows(f"SELECT * FROM {t.name} ORDER BY ALL") for t in TABLES}
    finally:
        host.close()


def _log() -> Mix:
    """Goals with delegated tasks (one task fails once, one call denied), a bare task after
    each, and an outcome on every other goal's root session."""
    mix = Mix(seed=61)
    mix.start_agents()
    for n in range(60):
        gid = mix.goal(tasks=3)
        if n % 2 == 0:
            root = next(e.iid for e in mix.events if e.gid == gid)
            data = OutcomeReported(outcome="success" if n % 4 == 0 else "failure", signal="ci")
            mix.emit(data, iid=root, gid=gid)
        bare_task(mix)
    return mix


async def test_every_reader_of_two_partitions_answers_as_the_single_core(
    bus: Bus, settings: ShoalSettings, tmp_path: Path
) -> None:
    mix = _log()
    await publish_all(bus, mix.events)
    single = settings.model_copy(update={"data_dir": tmp_path / "single"})
    parted = settings.model_copy(update={"data_dir": tmp_path / "parted"})
    await asyncio.to_thread(_core, single)
    await asyncio.to_thread(_core, parted, "--partitions", "2")

    # N is found where the core recorded it, with no variable set.
    assert json.loads((parted.store_dir / LAYOUT_FILE).read_text()) == {"partitions": 2}
    assert (core_partitions(single), core_partitions(parted)) == (1, 2)
    with open_reader(parted) as reader:  # both partitions hold sessions
        assert all(len(s.session_iids()) > 20 for s in reader.stores)

    sessions = await _cli(single, "session", "ls", "--limit", "100000")
    assert len(sessions) == mix.sessions == 60 * 5
    assert await _cli(parted, "session", "ls", "--limit", "100000") == sessions
    assert await _cli(parted, "session", "ls", "--limit", "7") == sessions[-7:]
    goals = await _cli(single, "goal", "ls", "--limit", "1000")
    assert len(goals) == 60
    assert await _cli(parted, "goal", "ls", "--limit", "1000") == goals
    for g in (goals[0], goals[31], goals[-1]):
        shown = await _cli(single, "goal", "show", g["gid"])
        assert len(shown["sessions"]) == 4
        assert await _cli(parted, "goal", "show", g["gid"]) == shown
    for s in (sessions[0], sessions[1], sessions[4], sessions[-1]):  # root, child, bare
        assert await _cli(parted, "session", "show", s["iid"]) == await _cli(
            single, "session", "show", s["iid"]
        )

    # The projection: every row of every table, then a cost answer through the CLI.
    expected = await asyncio.to_thread(_tables, single)
    assert len(expected["model_calls"]) == mix.model_calls
    assert await asyncio.to_thread(_tables, parted) == expected
    by_agent = await _cli(single, "cost", "--by", "agent,model")
    assert sum(float(r["cost_usd"]) for r in by_agent["rows"]) == pytest.approx(float(mix.cost))
    assert await _cli(parted, "cost", "--by", "agent,model") == by_agent

    # A projection built from another layout is refused (its tracking names the one core),
    # and `projections rebuild` makes it the partitions' again.
    shutil.copy(single.store_dir / "projections.duckdb", parted.store_dir / "projections.duckdb")
    with pytest.raises(Refused, match=r"another core layout \(tracking ShoalCore;"):
        ProjectionHost(parted).open()
    rebuilt = await _cli(parted, "projections", "rebuild")
    assert rebuilt["swapped_by"] == "rebuild"
    assert await asyncio.to_thread(_tables, parted) == expected
    host = ProjectionHost(parted)  # a re-map under a running projection is reported
    try:
        host.open()
        record_layout(parted, 3)
        host.sync()
        assert host.last_error is not None
        assert host.last_error.startswith("the core now folds in 3 partition(s), this projection")
    finally:
        host.close()
        record_layout(parted, 2)

    # Status: caught up, then 6 events behind in both shapes (the spend aggregator too).
    assert [h.core_lag for h in await _health(single, parted)] == [0, 0]
    more = Mix(seed=62)
    bare_task(more)
    bare_task(more)
    await publish_all(bus, more.events[:6])
    one, two = await _health(single, parted)
    assert (one.core_state, two.core_state) == ("idle", "idle")  # no core runs now
    assert one.core_lag == two.core_lag == 6
    # Each partition's lag is what its share still holds: its own of the 6 (the partition the
    # GID "_" hashes to receives every bare task, docs/scale.md).
    subjects = [bus.event_subject(e) for e in more.events[:6]]
    bare_home = fnv1a32(b"_") % 2
    share = {
        f"core-p{k}of2": sum(
            Partition(k, 2).owner(s) is not Owner.FOREIGN
            or (k == bare_home and s.split(".")[2] == "_")
            for s in subjects
        )
        for k in range(2)
    }
    assert share[f"core-p{bare_home}of2"] == 6
    assert two.partition_lags == share
    assert two.spend_lag == 6
    assert (one.partition_lags, one.spend_lag) == ({}, None)
    cards = [card for card, _ in await _console_health(single, parted)]
    assert [(c.name, c.up, c.lag) for c in cards] == [("core", False, 6)] * 2


async def _console_health(*shapes: ShoalSettings) -> list[list[ConsoleHealth]]:
    """The console overview's health cards (core, query service), with each data dir."""
    out = []
    for s in shapes:
        assert s.nats_url
        async with Bus.connect(s.nats_url, s, name="test-console") as b:
            out.append(await ConsoleData(b).health())
    return out


async def _health(*shapes: ShoalSettings) -> list[Health]:
    """``shoal status``'s health, asked with each data dir's settings (its layout)."""
    out = []
    for s in shapes:
        assert s.nats_url
        async with Bus.connect(s.nats_url, s, name="test-status") as b:
            out.append(await check_health(b))
    return out


async def test_kill_session_of_a_goal_lands_in_the_goals_partition(
    bus: Bus, settings: ShoalSettings, tmp_path: Path
) -> None:
    parted = settings.model_copy(update={"data_dir": tmp_path / "parted"})
    mix = Mix(seed=63)
    mix.start_agents()
    # A goal session whose IID alone would map to the other partition: without its GID,
    # session.killed goes where the session is unknown and is dead-lettered there.
    gid, iid = next(
        (f"goal{n}", f"task{n}x{n}")
        for n in range(100)
        if fnv1a32(f"goal{n}".encode()) % 2 != fnv1a32(f"task{n}x{n}".encode()) % 2
    )
    worker = mix.worker
    mix.emit(TaskAssigned(capability="summarize", input={}), iid=iid, gid=gid, by=worker)
    mix.emit(TaskStarted(capability="summarize"), iid=iid, gid=gid, by=worker)
    mix.model_call(iid, gid, worker)
    await publish_all(bus, mix.events)
    await asyncio.to_thread(_core, parted, "--partitions", "2")

    killed = await _cli(parted, "kill", "--session", iid, "--reason", "runaway")
    assert killed["key"] == f"session.{iid}"
    await asyncio.to_thread(_core, parted, "--partitions", "2")

    home = Partition(fnv1a32(gid.encode()) % 2, 2)
    with open_reader(parted) as reader:
        session = reader.session(iid)
        assert session.status == "killed"
        assert reader.stores[home.index].find(session.id) is not None
        assert reader.stores[1 - home.index].find(session.id) is None
    assert (await _cli(parted, "session", "show", iid))["status"] == "killed"
    assert await count_by_origin(bus) == {}
    stored = [s.event for s in await bus.session_events(iid) if s.event]
    kill_event = next(e for e in stored if e.short_type == "session.killed")
    assert (kill_event.gid, kill_event.fleet) == (gid, "docs")

"""The core as partitions: the same answers as one core, and ownership that survives SIGKILL."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
import time
from decimal import Decimal
from pathlib import Path

import pytest
from nats.js.errors import KeyNotFoundError
from nats.js.kv import KeyValue

from shoal.aggregates import open_core, run_core
from shoal.aggregates.ownership import core_lease_key
from shoal.aggregates.partitioned import open_partitions, open_spend, run_partitioned
from shoal.aggregates.partitions import Owner, Partition, fnv1a32
from shoal.bus import Bus, ShoalSettings
from tests.aggregates.eventmix import chunks, publish_all
from tests.aggregates.partitioned import answers, mixed, with_fleet_cap
from tests.ops.test_core_cli import shoal_args

EQUIVALENCE_EVENTS = 20_000
"""Log size of the in-process comparison (the issue's 100k runs in bench_ingest, which checks
the same answers; 20k takes ~20 s on a quiet 2-core machine, minutes on a loaded one)."""


def test_fnv1a32_is_the_reference_hash() -> None:
    # Published FNV-1a 32-bit test vectors (what NATS's partition() transform computes).
    assert fnv1a32(b"") == 0x811C9DC5
    assert fnv1a32(b"a") == 0xE40C292C
    assert fnv1a32(b"foobar") == 0xBF9CF968


def test_a_goal_and_its_sessions_map_to_one_partition_and_lifecycle_events_to_all() -> None:
    parts = [Partition(k, 4) for k in range(4)]
    goal_subjects = [f"p.events.G7.s{n}.task.started.docs.w.i" for n in range(50)]
    homes = {p.home(s) for p in parts[:1] for s in goal_subjects}
    assert homes == {fnv1a32(b"G7") % 4}
    bare = [f"p.events._.s{n}.task.started.docs.w.i" for n in range(50)]
    assert {parts[0].home(s) for s in bare} == {fnv1a32(f"s{n}".encode()) % 4 for n in range(50)}
    assert len({parts[0].home(s) for s in bare}) == 4  # bare tasks spread by IID
    started = "p.events._.i-1.agent.started.docs.w.i-1"
    assert [p.owner(started) for p in parts] == [Owner.SHARED] * 4
    owners = [p.owner(goal_subjects[0]) for p in parts]
    assert owners.count(Owner.MINE) == 1 and owners.count(Owner.FOREIGN) == 3
    assert parts[2].name == "p2of4" and parts[2].consumer("core") == "core-p2of4"


@pytest.mark.timeout(300)
async def test_two_partitions_give_the_single_cores_answers_to_the_cent(
    bus: Bus, settings: ShoalSettings, tmp_path: Path
) -> None:
    mix = mixed(seed=41, total=EQUIVALENCE_EVENTS)
    await publish_all(bus, mix.events, chunk=5000)
    capped = with_fleet_cap(
        settings, "docs", (mix.cost / 2).quantize(Decimal("0.01")), tmp_path / "p.yaml"
    )
    assert capped.nats_url
    single = capped.model_copy(update={"data_dir": tmp_path / "single"})
    parted = capped.model_copy(update={"data_dir": tmp_path / "parted"})

    await asyncio.wait_for(run_core(single, capped.nats_url, asyncio.Event(), until_idle=True), 120)
    stats = await asyncio.wait_for(
        run_partitioned(parted, capped.nats_url, asyncio.Event(), 2, until_idle=True), 120
    )

    one = open_core(single)
    parts, spend = open_partitions(parted, 2), open_spend(parted, 2)
    expected, got = answers([one], one, "docs"), answers(parts, spend, "docs")
    assert got["cost"] == expected["cost"] == mix.cost
    assert got["model_calls"] == expected["model_calls"] == mix.model_calls
    assert len(got["sessions"]) == len(expected["sessions"]) == mix.sessions
    assert got["fleet_crossings"] is not None and len(got["fleet_crossings"]) == 1
    assert got == expected
    stream = bus.topology.events.name
    total = len(mix.events) + 1  # and the fleet's one budget.exceeded, published once
    assert [p.max_tracking_id(stream) for p in parts] == [total, total]
    assert spend.max_tracking_id(stream) == total
    assert stats.dead_lettered == 0 and stats.budget_crossings == 1
    # Every partition held some sessions: the map spreads the work.
    assert all(len(p.session_iids()) > mix.sessions // 4 for p in parts)


KILLS = 10
"""SIGKILLs of partition owners in the fault test (the issue's figure)."""

FAULT_EVENTS = 8_000
"""Log size of the fault test: KILLS + 1 chunks, one published just before each kill."""

FAULT_TTL_S = 1.5
"""Lease TTL of the fault test's core processes: a dead owner's lease expires this fast."""

CORES = 3
"""Core processes alive at once in the fault test: two survive each kill while the
replacement boots, so the next owner to kill is already running."""


def _core_process(settings: ShoalSettings, log: Path) -> subprocess.Popen[bytes]:
    assert settings.nats_url and settings.price_table
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "shoal", *shoal_args(settings), "core", "--partitions", "2"],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={
                **os.environ,
                "SHOAL_LEASE_TTL_S": str(settings.lease_ttl_s),
                "SHOAL_CORE_BATCH": "500",
                "SHOAL_PRICE_TABLE": str(settings.price_table),
            },
        )


def stop_cores(procs: list[subprocess.Popen[bytes]]) -> None:
    """SIGTERM every live core process, then SIGKILL any not gone within 15 s."""
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(15)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(5)


def _positions(settings: ShoalSettings, stream: str) -> list[int]:
    """Each partition's and the aggregator's tracking position, read straight from SQLite
    (read-only: opening the applications every poll would take write locks the cores need)."""
    names = [Partition(k, 2).name for k in range(2)] + ["spendof2"]
    out = []
    for name in names:
        path = settings.store_dir / f"core-{name}.sqlite"
        try:
            with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
                row = db.execute(
                    "SELECT max(notification_id) FROM tracking WHERE application_name = ?",
                    (stream,),
                ).fetchone()
        except sqlite3.OperationalError:  # not created yet
            row = None
        out.append(row[0] or 0 if row else 0)
    return out


async def _owner_pid(leases: KeyValue, name: str) -> int | None:
    try:
        entry = await leases.get(core_lease_key(name))
    except KeyNotFoundError:
        return None
    return int((entry.value or b"").decode().rsplit("-", 2)[1])


@pytest.mark.timeout(240)
async def test_two_core_processes_lose_and_double_nothing_through_sigkills_of_partition_owners(
    settings: ShoalSettings, tmp_path: Path
) -> None:
    mix = mixed(seed=43, total=FAULT_EVENTS)
    capped = with_fleet_cap(
        settings.model_copy(update={"lease_ttl_s": FAULT_TTL_S, "data_dir": tmp_path / "parted"}),
        "docs",
        (mix.cost / 2).quantize(Decimal("0.01")),
        tmp_path / "p.yaml",
    )
    assert capped.nats_url
    log = tmp_path / "cores.log"
    procs: list[subprocess.Popen[bytes]] = []
    parts = list(chunks(mix.events, -(-len(mix.events) // (KILLS + 1))))
    assert len(parts) == KILLS + 1
    killed: list[int] = []
    started = time.monotonic()

    def alive(pid: int | None) -> subprocess.Popen[bytes] | None:
        return next((p for p in procs if p.pid == pid and p.poll() is None), None)

    def waited(what: str) -> None:
        assert time.monotonic() - started < 150, f"{what}: {log.read_text()[-3000:]}"

    async with Bus.connect(capped.nats_url, capped, name="test-partitions") as bus:
        await bus.provision()
        stream = bus.topology.events.name
        leases = await bus.kv(bus.topology.leases.name)
        try:
            # Three core processes share the three leases (two partitions, the aggregator).
            # Before each kill one chunk of the log is published, so the kill lands while
            # the partition folds it; a replacement is started at once, and a survivor takes
            # the dead owner's lease over when it expires and folds the chunk to its end.
            procs += [_core_process(capped, log) for _ in range(CORES)]
            for kill, part in enumerate(parts[:KILLS]):
                await bus.publish_many(part)
                name = Partition(kill % 2, 2).name
                while (victim := alive(await _owner_pid(leases, name))) is None:
                    waited(f"no live owner of {name}")
                    await asyncio.sleep(0.1)
                victim.send_signal(signal.SIGKILL)
                victim.wait(10)
                killed.append(victim.pid)
                procs.append(_core_process(capped, log))
                last = (await bus.js.stream_info(stream)).state.last_seq
                while True:  # ownership moved to a live process, and the partition caught up
                    owner = await _owner_pid(leases, name)
                    position = (await asyncio.to_thread(_positions, capped, stream))[kill % 2]
                    if owner != victim.pid and alive(owner) and position >= last:
                        break
                    waited(f"{name} not taken over after kill {kill + 1}")
                    await asyncio.sleep(0.1)
            print(f"{len(killed)} SIGKILLs in {time.monotonic() - started:.1f}s")
            await bus.publish_many(parts[KILLS])
            total = len(mix.events) + 1  # and the fleet's budget.exceeded, published once
            while await asyncio.to_thread(_positions, capped, stream) != [total] * 3:
                waited("not caught up")
                assert sum(p.poll() is None for p in procs) == CORES, log.read_text()[-3000:]
                await asyncio.sleep(0.1)
            assert (await bus.js.stream_info(stream)).state.last_seq == total
        finally:
            stop_cores(procs)
    assert len(killed) == len(set(killed)) == KILLS

    single = capped.model_copy(update={"data_dir": tmp_path / "single"})
    await asyncio.wait_for(run_core(single, capped.nats_url, asyncio.Event(), until_idle=True), 120)
    one = open_core(single)
    expected = answers([one], one, "docs")
    got = answers(open_partitions(capped, 2), open_spend(capped, 2), "docs")
    assert got["cost"] == expected["cost"] == mix.cost
    assert got["model_calls"] == expected["model_calls"] == mix.model_calls
    assert len(got["sessions"]) == mix.sessions
    assert got["fleet_crossings"] is not None and len(got["fleet_crossings"]) == 1
    assert got == expected


def test_a_consumer_name_with_partitions_is_refused_in_one_line(settings: ShoalSettings) -> None:
    from typer.testing import CliRunner

    from shoal.ops.cli import app

    args = [*shoal_args(settings), "core", "--partitions", "2", "--consumer", "x"]
    result = CliRunner().invoke(app, args)

    assert result.exit_code == 2
    assert "--consumer names the one core's consumer" in result.output
    assert "Traceback" not in result.output

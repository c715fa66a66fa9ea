"""The core as partitions: the same answers as one core, and ownership that survives SIGKILL."""

from __future__ import annotations

import asyncio
from decimal import Decimal
from pathlib import Path

from shoal.aggregates import open_core, run_core
from shoal.aggregates.partitioned import open_partitions, open_spend, run_partitioned
from shoal.aggregates.partitions import Owner, Partition, fnv1a32
from shoal.bus import Bus, ShoalSettings
from tests.aggregates.eventmix import publish_all
from tests.aggregates.partitioned import answers, mixed, with_fleet_cap

EQUIVALENCE_EVENTS = 30_000
"""Log size of the in-process comparison (the issue's 100k runs in bench_ingest, which checks
the same answers; 30k keeps this test well under a minute on a shared 2-core machine)."""


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

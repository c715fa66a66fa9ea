"""The core and the projection under connections cut at random during ingestion.

The core consumes through a TCP proxy that aborts every connection at random moments while
events are still being published (directly to the server). Deliveries in flight when a
connection dies are lost on the wire; the consumer acknowledges with ``AckPolicy.ALL``, so
without gap detection a later ack would cover them and they would never be ingested.
"""

from __future__ import annotations

import asyncio
import random
from decimal import Decimal
from pathlib import Path

import pytest

from shoal.aggregates import open_core, run_core
from shoal.aggregates.partitioned import open_partitions, run_partitioned
from shoal.bus import Bus, ShoalSettings
from shoal.projections.projection import CostProjection
from shoal.projections.sources import Followers
from shoal.projections.view import open_view
from tests.aggregates.eventmix import Mix, chunks
from tests.tcpproxy import CutProxy


@pytest.mark.parametrize("partitions", [1, 2])
async def test_every_event_survives_random_connection_cuts_exactly_once(
    bus: Bus, settings: ShoalSettings, tmp_path: Path, partitions: int
) -> None:
    mix = Mix(seed=77).until(4000)
    stream = bus.topology.events.name
    # Small batches: many acks, so a cut lands between deliveries and a later ack often.
    core_settings = settings.model_copy(update={"core_batch": 40})
    rng = random.Random(5)
    stop = asyncio.Event()
    async with CutProxy(settings.nats_url or "") as proxy:
        # Two partitions read their shares on single-filter feeds, merged in order: a lost
        # delivery is a hole in a feed's delivery sequence, and every feed re-attaches.
        core = asyncio.create_task(
            run_core(core_settings, proxy.url, stop)
            if partitions == 1
            else run_partitioned(core_settings, proxy.url, stop, partitions)
        )

        async def publish() -> None:
            # A steady trickle (~1,000 events/s): deliveries keep flowing during a cut, so
            # some go into the dead link while later ones reach the new connection.
            for part in chunks(mix.events, 10):
                await bus.publish_many(part)
                await asyncio.sleep(0.01)

        async def cut_at_random() -> None:
            while True:
                await asyncio.sleep(rng.uniform(0.05, 0.3))
                proxy.cut()

        cutter = asyncio.create_task(cut_at_random())
        await publish()
        last = (await bus.js.stream_info(stream)).state.last_seq
        assert last == len(mix.events)
        readers = [open_core(settings)] if partitions == 1 else open_partitions(settings, 2)
        deadline = asyncio.get_running_loop().time() + 90
        while min(r.max_tracking_id(stream) for r in readers) < last:
            assert asyncio.get_running_loop().time() < deadline, "the core never caught up"
            await asyncio.sleep(0.2)
        cutter.cancel()
        stop.set()
        stats = await asyncio.wait_for(core, 30)

    # The faults really happened during ingestion, and deliveries went into dead links.
    assert proxy.cuts >= 5 and proxy.discarded > 0
    stores = readers if partitions > 1 else [open_core(settings)]
    sessions = [s for app in stores for s in app.sessions()]
    assert len(sessions) == mix.sessions
    assert sum(s.model_calls for s in sessions) == mix.model_calls
    assert sum(s.tool_calls for s in sessions) == mix.tool_calls
    assert sum((s.cost_usd for s in sessions), Decimal(0)) == mix.cost
    assert stats.dead_lettered == 0 and stats.rejected == 0

    view = open_view(tmp_path / "p.duckdb")
    projection = CostProjection(view)
    base = stores[0].name
    names = [base] if partitions == 1 else [f"{base}-p{k}of2" for k in range(2)]
    Followers(list(zip(names, stores, strict=True)), projection).catch_up()
    projection.close()
    counts = view.table_counts()
    assert (counts["model_calls"], counts["tool_calls"]) == (mix.model_calls, mix.tool_calls)
    with view.datastore.reader() as c:
        row = c.execute("SELECT sum(cost_usd) FROM model_calls").fetchone()
    assert row is not None and Decimal(str(row[0])) == mix.cost
    for app in {*stores, *readers}:
        app.close()

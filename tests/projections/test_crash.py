"""SIGKILL the query service mid-batch, restart it: the same numbers as an uninterrupted build."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from pathlib import Path

import nats

from shoal.aggregates.application import ShoalCore
from shoal.bus import ShoalSettings
from shoal.errors import ServiceUnavailable
from shoal.projections.client import QueryClient
from shoal.projections.host import projection_path
from shoal.projections.queries import all_answers
from shoal.projections.view import open_view
from tests.natsproc import NatsProcess
from tests.projections.conftest import NOW, as_tenant, build


def _serve(settings: ShoalSettings, log: Path, batch: int) -> subprocess.Popen[bytes]:
    args = [
        sys.executable,
        "-m",
        "shoal",
        "--nats-url",
        settings.nats_url or "",
        "--prefix",
        settings.prefix,
        "--data-dir",
        str(settings.data_dir),
        "projections",
        "serve",
        "--batch",
        str(batch),
    ]
    with log.open("ab") as out:
        return subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT)


async def _position(client: QueryClient) -> int | None:
    try:
        status = await client.ask("status", timeout=2)
    except ServiceUnavailable:
        return None
    return int(status["position"])


async def test_a_service_killed_mid_batch_resumes_without_loss_or_duplicates(
    nats_server: NatsProcess,
    settings_with_core: ShoalSettings,
    core: ShoalCore,
    prefix: str,
    tmp_path: Path,
) -> None:
    settings = as_tenant(settings_with_core, prefix, nats_server.url)
    reference = build(core, ":memory:")  # the uninterrupted build
    final = reference.max_tracking_id(core.name)
    assert final is not None
    log = tmp_path / "serve.log"
    nc = await nats.connect(nats_server.url)
    client = QueryClient(nc, settings)
    try:
        # Small batches: the process is almost always in the middle of one.
        first = _serve(settings, log, batch=7)
        killed_at = None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            position = await _position(client)
            if position is not None and position > 300:
                first.send_signal(signal.SIGKILL)
                killed_at = position
                break
            await asyncio.sleep(0.01)
        first.wait(timeout=10)
        assert killed_at is not None, log.read_text()
        assert 0 < killed_at < final  # it died part-way through the log

        second = _serve(settings, log, batch=500)
        deadline = time.monotonic() + 60
        while await _position(client) != final:
            assert time.monotonic() < deadline, log.read_text()
            await asyncio.sleep(0.05)
        second.send_signal(signal.SIGTERM)
        assert second.wait(timeout=30) == 0, log.read_text()
    finally:
        await nc.close()

    resumed = open_view(projection_path(settings), read_only=True)
    assert resumed.table_counts() == reference.table_counts()
    assert all_answers(resumed.datastore, NOW) == all_answers(reference.datastore, NOW)

"""Tenants: each one a NATS account with its own JetStream limits; nothing crosses over."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from nats.js.errors import APIError
from typer.testing import CliRunner

from shoal.bus import Bus, ShoalSettings
from shoal.ops.cli import app
from shoal.ops.connect import resolve_url
from shoal.schemas import CloudEvent, TaskStarted

pytestmark = pytest.mark.timeout(60)


async def tenant(local: ShoalSettings, name: str, *limits: str) -> Path:
    env = {"SHOAL_DATA_DIR": str(local.data_dir), "NATS_URL": ""}
    args = ["auth", "tenant", name, *limits, "--json"]
    result = await asyncio.to_thread(CliRunner().invoke, app, args, env=env)
    assert result.exit_code == 0, result.output
    return Path(json.loads(result.stdout)["path"])


async def test_tenants_have_their_own_streams_and_jetstream_limits(local: ShoalSettings) -> None:
    acme = await tenant(local, "acme", "--disk", "1M", "--memory", "0", "--streams", "20")
    globex = await tenant(local, "globex", "--disk", "64M")
    url = resolve_url(local, start=False)
    # Both use the default prefix: the account, not the prefix, separates them.
    as_acme = ShoalSettings(nats_url=url, creds=acme, data_dir=local.data_dir / "acme")
    as_globex = ShoalSettings(nats_url=url, creds=globex, data_dir=local.data_dir / "globex")
    async with Bus.connect(url, as_acme) as a, Bus.connect(url, as_globex) as g:
        assert sorted(await a.provision()) == sorted(await g.provision())
        limits = (await a.js.account_info()).limits
        assert (limits.max_storage, limits.max_memory, limits.max_streams) == (1 << 20, 0, 20)
        assert (await g.js.account_info()).limits.max_storage == 64 << 20
        event = CloudEvent.new(
            TaskStarted(capability="c", attempt=1), iid="T1", source="shoal://cli/acme"
        )
        await a.publish(event)
        assert [s.event.id for s in await a.session_events("T1") if s.event] == [event.id]
        assert await g.session_events("T1") == []
        big = a.subjects.event(None, "T2", "task.started", "cli.acme")
        stored = 0
        with pytest.raises(APIError) as full:
            for _ in range(4):  # 4 x 512 KiB cannot fit in acme's 1 MiB
                await a.js.publish(big, b"x" * (512 << 10))
                stored += 1
        assert (stored, full.value.description) == (1, "resource limits exceeded for account")
        await g.js.publish(big, b"x" * (512 << 10))  # globex's own 64 MiB are untouched

"""The console against a real platform: nats-server, the core, the query service, and the
console served by uvicorn on a free port, all on the test's event loop (the browser runs in
a thread, so the loop keeps serving while Selenium waits)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from shoal.aggregates import run_core
from shoal.bus import Bus, ShoalSettings
from shoal.console import ConsoleSettings, KVTokenStore, open_console, serve_console
from shoal.console.access import Role
from shoal.projections.service import serving

# The fleet tests' own fixtures: real supervisor processes, the Fleet application.
from tests.ops.test_supervisor import app, supervisors  # noqa: F401


@dataclass
class Platform:
    """A running console and the bus beside it."""

    bus: Bus
    url: str

    async def token(self, principal: str, role: Role) -> str:
        token, _ = await KVTokenStore.for_bus(self.bus).create(principal, role, by="tester")
        return token


@pytest.fixture
def settings(settings: ShoalSettings) -> ShoalSettings:
    # Short heartbeats and leases: instances appear and go within a test's time.
    return settings.model_copy(update={"lease_ttl_s": 3.0, "presence_ttl_s": 3.0})


@contextlib.asynccontextmanager
async def served(bus: Bus) -> AsyncIterator[str]:
    """A console on ``bus`` served on a free port, until the block ends: its URL."""
    stop = asyncio.Event()
    listening: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    console = await open_console(bus, ConsoleSettings(port=0))
    server = asyncio.create_task(serve_console(console, stop, on_listening=listening.set_result))
    try:
        yield await asyncio.wait_for(listening, 30)
    finally:
        stop.set()
        await asyncio.wait_for(server, 10)


@pytest.fixture
async def platform(settings: ShoalSettings, bus: Bus) -> AsyncIterator[Platform]:
    bus = Bus(bus.nc, settings)
    stop, core_ready = asyncio.Event(), asyncio.Event()
    core = asyncio.create_task(run_core(settings, settings.nats_url or "", stop, ready=core_ready))
    await asyncio.wait_for(core_ready.wait(), 30)
    try:
        async with serving(settings, bus.nc), served(bus) as url:
            yield Platform(bus, url)
    finally:
        stop.set()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(core, 20)


@pytest.fixture
def profile(tmp_path: Path) -> Path:
    """A fresh Chromium user-data dir per test."""
    return tmp_path / "chromium-profile"

"""Fixtures: one real nats-server per test session; each test gets its own subject prefix.

Streams and buckets are named from the prefix, so tests never see each other's messages.
Tests that kill the server start their own with ``nats_process``.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest

from shoal.bus import Bus, ShoalSettings
from tests.natsproc import NatsProcess


@pytest.fixture(scope="session")
def nats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsProcess]:
    server = NatsProcess(tmp_path_factory.mktemp("nats") / "jetstream").start()
    yield server
    server.stop()


@pytest.fixture
def prefix() -> str:
    return "t" + uuid.uuid4().hex[:10]


@pytest.fixture
def settings(nats_server: NatsProcess, prefix: str, tmp_path: Path) -> ShoalSettings:
    return ShoalSettings(
        nats_url=nats_server.url, prefix=prefix, data_dir=tmp_path / "data", principal="tester"
    )


@pytest.fixture
async def bus(settings: ShoalSettings) -> AsyncIterator[Bus]:
    async with Bus.connect(settings.nats_url or "", settings, name="shoal-test") as b:
        await b.provision()
        yield b


@pytest.fixture
def nats_process(tmp_path: Path) -> Iterator[Callable[..., NatsProcess]]:
    """Factory for a server of the test's own (to kill, restart or cluster)."""
    started: list[NatsProcess] = []

    def make(*extra_args: str, store: str = "js") -> NatsProcess:
        proc = NatsProcess(tmp_path / store, extra_args=extra_args).start()
        started.append(proc)
        return proc

    yield make
    for proc in started:
        proc.kill()

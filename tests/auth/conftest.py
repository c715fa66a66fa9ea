"""Fixtures: the embedded server as shoal starts it, JWT auth on, in a temporary data dir."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from shoal.bus import ShoalSettings
from shoal.ops.server import EmbeddedServer, ServerRecord


@pytest.fixture(scope="module")
def secured_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("secured")


@pytest.fixture(scope="module")
def secured(secured_dir: Path) -> Iterator[ServerRecord]:
    """One auth-on embedded server per test module."""
    server = EmbeddedServer(
        ShoalSettings(data_dir=secured_dir, prefix="unused", principal="tester")
    )
    record, _ = server.ensure()
    yield record
    server.stop()


@pytest.fixture
def local(secured: ServerRecord, secured_dir: Path) -> ShoalSettings:
    """The local user's settings on that server (embedded: admin creds found by themselves)."""
    return ShoalSettings(
        data_dir=secured_dir, prefix="a" + uuid.uuid4().hex[:10], principal="tester"
    )

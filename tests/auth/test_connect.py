"""Connecting to secured servers: creds, NKey, user/password, token, TLS and mutual TLS."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import CliRunner

from shoal.auth import new_key
from shoal.bus import Bus, ShoalSettings
from shoal.bus.connectopts import redact_url
from shoal.errors import AuthorizationFailed, NatsUnreachable
from shoal.ops.cli import app
from tests.natsproc import NatsProcess

Start = Callable[..., NatsProcess]


async def _connected(settings: ShoalSettings) -> bool:
    async with Bus.connect(settings.nats_url or "", settings) as bus:
        return bus.nc.is_connected


async def test_a_wrong_password_is_an_authorization_error_that_hides_it(
    nats_process: Start, tmp_path: Path
) -> None:
    server = nats_process("--user", "ops", "--pass", "s3cret-right")
    wrong = ShoalSettings(
        nats_url=server.url, data_dir=tmp_path, nats_user="ops", nats_password="s3cret-wrong"
    )
    with pytest.raises(AuthorizationFailed) as refused:
        await _connected(wrong)
    assert "authorization violation" in str(refused.value)
    assert "s3cret" not in str(refused.value)
    right = ShoalSettings(
        nats_url=server.url, data_dir=tmp_path, nats_user="ops", nats_password="s3cret-right"
    )
    assert await _connected(right)


async def test_a_password_in_the_url_is_refused_as_authorization_not_unreachable(
    nats_process: Start, tmp_path: Path
) -> None:
    server = nats_process("--user", "ops", "--pass", "right")
    url = server.url.replace("nats://", "nats://ops:hunter2@")
    with pytest.raises(AuthorizationFailed) as refused:
        await _connected(ShoalSettings(nats_url=url, data_dir=tmp_path))
    assert "hunter2" not in str(refused.value) and "ops:***@" in str(refused.value)


async def test_an_unreachable_server_is_still_reported_as_unreachable(tmp_path: Path) -> None:
    from shoal.ops.server import free_port

    url = f"nats://u:pw123@127.0.0.1:{free_port()}"
    with pytest.raises(NatsUnreachable) as gone:
        await _connected(ShoalSettings(nats_url=url, data_dir=tmp_path))
    assert "no NATS server reachable" in str(gone.value) and "pw123" not in str(gone.value)


async def test_a_token_connects(nats_process: Start, tmp_path: Path) -> None:
    server = nats_process("--auth", "tok-123")
    ok = ShoalSettings(nats_url=server.url, data_dir=tmp_path, nats_token="tok-123")
    assert await _connected(ok)
    with pytest.raises(AuthorizationFailed):
        await _connected(ok.model_copy(update={"nats_token": None}))


async def test_an_nkey_seed_file_connects(nats_process: Start, tmp_path: Path) -> None:
    user = new_key("user")
    conf = tmp_path / "nkey.conf"
    conf.write_text(f'authorization {{ users = [ {{ nkey: "{user.public}" }} ] }}\n')
    server = nats_process("-c", str(conf))
    seed = tmp_path / "user.nk"
    seed.write_text(user.seed + "\n")
    settings = ShoalSettings(nats_url=server.url, data_dir=tmp_path, nkey=seed)
    assert await _connected(settings)


def _certs(d: Path) -> dict[str, Path]:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, by openssl."""

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=d)

    run(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "1",
        "-subj",
        "/CN=shoal-test-ca",
    )
    (d / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    for name in ("server", "client"):
        run(
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            f"{name}.key",
            "-out",
            f"{name}.csr",
            "-subj",
            f"/CN={name}",
        )
        run(
            "x509",
            "-req",
            "-in",
            f"{name}.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            f"{name}.pem",
            "-days",
            "1",
            "-extfile",
            "san.ext",
        )
    return {n: d / n for n in ("ca.pem", "server.pem", "server.key", "client.pem", "client.key")}


async def test_tls_and_mutual_tls_connect_with_ca_cert_and_key(
    nats_process: Start, tmp_path: Path
) -> None:
    c = _certs(tmp_path)
    server = nats_process(
        "--tls",
        "--tlscert",
        str(c["server.pem"]),
        "--tlskey",
        str(c["server.key"]),
        "--tlscacert",
        str(c["ca.pem"]),
        "--tlsverify",
    )
    url = server.url.replace("nats://", "tls://")
    mtls = ShoalSettings(
        nats_url=url,
        data_dir=tmp_path,
        tls_ca=c["ca.pem"],
        tls_cert=c["client.pem"],
        tls_key=c["client.key"],
    )
    assert await _connected(mtls)
    without_cert = mtls.model_copy(update={"tls_cert": None, "tls_key": None})
    with pytest.raises(NatsUnreachable):
        await _connected(without_cert)


def test_status_never_prints_the_password_of_the_url(nats_process: Start, tmp_path: Path) -> None:
    server = nats_process("--user", "ops", "--pass", "hunter2")
    url = server.url.replace("nats://", "nats://ops:hunter2@")
    result = CliRunner().invoke(
        app, ["status"], env={"NATS_URL": url, "SHOAL_DATA_DIR": str(tmp_path)}
    )
    # Exit 1: no local services run here (status is a health check); the URL is shown.
    assert result.exit_code == 1, result.output
    assert "hunter2" not in result.output
    assert f"at nats://ops:***@127.0.0.1:{server.port}" in result.output


def test_redacted_urls_keep_everything_but_the_secret() -> None:
    assert redact_url("nats://a:b@h:1,nats://h2:2") == "nats://a:***@h:1,nats://h2:2"
    assert redact_url("tls://tok@h:4222") == "tls://***@h:4222"
    assert redact_url("nats://127.0.0.1:4222") == "nats://127.0.0.1:4222"


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    ("command", "banner"),
    [
        (["core"], "core ingesting"),
        (["projections", "serve"], "query service on"),
        (["supervisor"], "reconciling via"),
    ],
)
def test_services_never_log_the_password_of_the_url(
    nats_process: Start, tmp_path: Path, command: list[str], banner: str
) -> None:
    """``shoal up`` writes what each service prints to its log: the banner hides the secret."""
    import os
    import sys
    import time

    server = nats_process("--user", "ops", "--pass", "hunter2")
    env = {
        **os.environ,
        "NATS_URL": server.url.replace("nats://", "nats://ops:hunter2@"),
        "SHOAL_DATA_DIR": str(tmp_path / "d"),
        "SHOAL_PREFIX": "pw",
        "NATS_CREDS": "",
    }
    log = tmp_path / "service.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "shoal", *command], env=env, stdout=out, stderr=out
        )
        try:
            deadline = time.monotonic() + 60
            while banner not in log.read_text() and proc.poll() is None:
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.1)
        finally:
            proc.terminate()
            proc.wait(timeout=20)
    text = log.read_text()
    assert banner in text, text
    assert "hunter2" not in text
    assert f"nats://ops:***@127.0.0.1:{server.port}" in text

"""``shoal console`` as an operator runs it: a served process whose URL ``shoal status`` and
``shoal demo`` print, and tokens made with ``shoal console token``."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import httpx
import pytest
from typer.testing import CliRunner

from shoal.bus import Bus, ShoalSettings
from shoal.console import KVTokenStore, Principal
from shoal.ops.cli import app
from shoal.ops.cli.console import console_hint, url_record
from tests.ops.fleetprocs import process_env

pytestmark = pytest.mark.timeout(120)


def env_of(settings: ShoalSettings) -> dict[str, str]:
    return process_env(settings)


@pytest.fixture
def served(settings: ShoalSettings) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """``python -m shoal console --port 0`` for the test's prefix, and its URL."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "shoal", "console", "--port", "0"],
        env=env_of(settings),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 60
    while not url_record(settings).exists():
        assert proc.poll() is None, (proc.stdout.read() if proc.stdout else b"").decode()
        assert time.monotonic() < deadline, "the console never reported its URL"
        time.sleep(0.1)
    url = json.loads(url_record(settings).read_text())["url"]
    yield proc, url
    if proc.poll() is None:
        proc.kill()
        proc.wait(10)


def test_token_create_prints_a_token_that_signs_in_and_ls_never_shows_it(
    settings: ShoalSettings,
) -> None:
    runner = CliRunner()
    env = env_of(settings)
    made = runner.invoke(
        app,
        ["console", "token", "create", "--role", "viewer", "--principal", "vera", "--json"],
        env=env,
    )
    assert made.exit_code == 0, made.stderr
    token = json.loads(made.stdout)["token"]
    listed = runner.invoke(app, ["console", "token", "ls", "--json"], env=env)
    bad = runner.invoke(
        app, ["console", "token", "create", "--role", "root", "--principal", "x"], env=env
    )

    async def authenticate() -> Principal | None:
        async with Bus.connect(settings.nats_url or "", settings) as bus:
            return await KVTokenStore.for_bus(bus).authenticate(token)

    who = asyncio.run(authenticate())
    assert who is not None and (who.name, who.role) == ("vera", "viewer")
    assert who == Principal("vera", "viewer", who.credential)
    assert token not in listed.stdout
    assert [(r["principal"], r["role"]) for r in json.loads(listed.stdout)] == [("vera", "viewer")]
    assert bad.exit_code == 2
    assert bad.stderr.strip() == "error: --role must be one of viewer, operator, admin, not 'root'"


def test_status_and_demo_print_the_served_console_url(
    settings: ShoalSettings, served: tuple[subprocess.Popen[bytes], str]
) -> None:
    proc, url = served
    assert httpx.get(f"{url}/healthz").text == "ok\n"
    runner = CliRunner()
    status = runner.invoke(app, ["status"], env=env_of(settings))
    demo = runner.invoke(app, ["demo"], env=env_of(settings))
    # status is a health check: exit 1, since no core or query service runs here.
    assert status.exit_code == 1, status.stderr
    assert f"console: {url}" in status.stdout.splitlines()
    assert demo.exit_code == 0, demo.stderr
    gid = demo.stdout.split()[1]  # "goal <GID> goal.completed in …"
    assert demo.stdout.strip().splitlines()[-1] == f"console: {url}/goals/{gid}"
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(20) == 0
    assert not url_record(settings).exists()


def test_a_console_killed_outright_is_not_reported_as_running(settings: ShoalSettings) -> None:
    record = url_record(settings)
    record.parent.mkdir(parents=True)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    record.write_text(json.dumps({"url": "http://127.0.0.1:1", "pid": dead.pid}))
    assert console_hint(settings, "G1") == "console: 'shoal up' serves it at http://127.0.0.1:8470"
    record.write_text(json.dumps({"url": "http://127.0.0.1:1", "pid": os.getpid()}))
    assert console_hint(settings, "G1") == "console: http://127.0.0.1:1/goals/G1"


def test_the_console_serves_past_the_command_timeout_until_sigterm(
    settings: ShoalSettings,
) -> None:
    # --timeout bounds a command's waits for the server, not a service's life.
    proc = subprocess.Popen(
        [sys.executable, "-m", "shoal", "--timeout", "1", "console", "--port", "0"],
        env=env_of(settings),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while not url_record(settings).exists():
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.1)
        url = json.loads(url_record(settings).read_text())["url"]
        time.sleep(3)  # three times the command timeout
        assert proc.poll() is None
        assert httpx.get(f"{url}/login", timeout=10).status_code == 200
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(30)
    assert code == 0

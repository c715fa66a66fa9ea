"""``shoal keys create|ls|revoke``: the secret shown once, never listed; revoked is refused."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import httpx

from shoal.bus import Bus, ShoalSettings
from shoal.gateway import KeyStore, RunningGateway
from shoal.gateway.keys import KeyMirror
from tests.agents.conftest import eventually
from tests.gateway.conftest import shoal_cli
from tests.natsproc import NatsProcess

PROMPT = [{"role": "user", "content": "hi"}]


async def test_create_list_and_revoke_a_key(
    settings: ShoalSettings, gateway: RunningGateway
) -> None:
    created = json.loads(
        shoal_cli(
            settings,
            "keys",
            "create",
            "--fleet",
            "f1",
            "--agent",
            "a1",
            "--model",
            "fast",
            "--budget",
            "0.25",
            "--rpm",
            "60",
            "--json",
        )
    )
    secret, key_id = created["secret"], created["id"]
    assert secret.startswith(f"sk-shoal-{key_id}-")
    assert (created["budget_usd"], created["rpm"], created["manifest"]["models"]) == (
        "0.25",
        60,
        ["fast"],
    )
    listed = shoal_cli(settings, "keys", "ls", "--json")
    assert secret not in listed and "secret_sha256" not in listed
    assert [k["id"] for k in json.loads(listed)] == [key_id]
    body = {"model": "fast", "messages": PROMPT, "max_tokens": 5}
    auth = {"Authorization": f"Bearer {secret}"}
    async with httpx.AsyncClient(base_url=gateway.url, timeout=10) as http:
        assert (await http.post("/chat/completions", json=body, headers=auth)).status_code == 200
        shoal_cli(settings, "keys", "revoke", key_id)
        for _ in range(100):  # the replica's mirror follows the bucket
            r = await http.post("/chat/completions", json=body, headers=auth)
            if r.status_code == 401:
                break
            await asyncio.sleep(0.02)
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"


def test_a_bad_budget_is_refused_naming_the_option(settings: ShoalSettings) -> None:
    base = [sys.executable, "-m", "shoal", "--nats-url", settings.nats_url or ""]
    base += ["--prefix", settings.prefix, "--data-dir", str(settings.data_dir)]
    done = subprocess.run(
        [*base, "keys", "create", "--fleet", "f", "--agent", "a", "--budget", "lots"],
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert done.stderr.decode().strip() == "error: --budget: 'lots' is not an amount in USD"
    assert done.stdout == b""


async def test_a_key_revoked_after_a_server_restart_is_refused_within_seconds(
    nats_process: Callable[..., NatsProcess], tmp_path: Path
) -> None:
    server = nats_process()
    settings = ShoalSettings(nats_url=server.url, prefix="kr", data_dir=tmp_path / "d")
    async with Bus.connect(server.url, settings) as bus:
        await bus.provision()
        store = KeyStore(bus)
        key, secret = await store.create(fleet="f", agent="a", by="op")
        mirror = KeyMirror(bus)
        await mirror.start()
        assert await mirror.authenticate(secret) == key
        server.restart()
        for _ in range(100):
            try:
                await store.revoke(key.id, by="op")
                break
            except Exception:  # the restarted server is still recovering its streams
                await asyncio.sleep(0.1)
        took = await eventually(lambda: mirror.keys[key.id].revoked_at is not None, timeout=10)
        assert took < 5  # nats-py alone recovers the watch only after ~17 s
        assert mirror.reloads >= 1
        await mirror.stop()

"""The kill watcher keeps up across a NATS server restart (watches do not survive one)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest

from shoal.agents.killswitch import KillWatcher
from shoal.bus import Bus, KillSwitch, ShoalSettings
from shoal.schemas import utcnow
from tests.agents.conftest import eventually
from tests.natsproc import NatsProcess

pytestmark = pytest.mark.timeout(60)


def switch(scope: str = "fleet") -> bytes:
    value = KillSwitch(scope=scope, by="op", at=utcnow())
    return value.model_dump_json().encode()


async def put_retrying(bus: Bus, key: str, value: bytes) -> None:
    for _ in range(100):
        try:
            kv = await bus.kv(bus.topology.kill.name)
            await kv.put(key, value)
            return
        except Exception:  # the restarted server is still recovering its streams
            await asyncio.sleep(0.1)
    raise AssertionError(f"could not put {key}")


async def test_kill_key_set_after_a_server_restart_is_seen_within_seconds(
    nats_process: Callable[..., NatsProcess], tmp_path: Path
) -> None:
    server = nats_process()
    settings = ShoalSettings(nats_url=server.url, prefix="kr", data_dir=tmp_path / "d")
    changes: list[tuple[str, bool]] = []
    async with Bus.connect(server.url, settings) as bus:
        await bus.provision()
        kv = await bus.kv(bus.topology.kill.name)
        await kv.put("fleet.before", switch())
        watcher = KillWatcher(bus, on_change=lambda k, s: changes.append((k, s is not None)))
        await watcher.start()
        assert set(watcher.active) == {"fleet.before"}
        server.restart()
        await put_retrying(bus, "fleet.after", switch())
        await kv.delete("fleet.before")
        took = await eventually(lambda: set(watcher.active) == {"fleet.after"}, timeout=10)
        assert took < 5  # nats-py alone recovers the watch only after ~17 s
        assert watcher.reloads >= 1
        assert ("fleet.after", True) in changes and ("fleet.before", False) in changes
        await kv.put("fleet.later", switch())  # and it keeps following afterwards
        await eventually(lambda: "fleet.later" in watcher.active, timeout=5)
        await watcher.stop()

"""Benchmark: kill → instance disconnected by the server, p50/p99 over 50 kills.

Each round issues one instance's credentials (as a supervisor does), connects a plain
nats-py client with them, then runs ``shoal kill --instance`` (the library call: kill key
put, audit events) and times until the server closes that client's connection. The warden
runs as its own process (``python -m shoal auth warden``), as ``shoal up`` runs it.

The ceiling, measured in the same run: the revocation alone, with no kill bucket and no
warden in between (re-sign the account JWT, push it on ``$SYS.REQ.CLAIMS.UPDATE``, wait for
the disconnect), from this process.

Run: ``uv run python bench/bench_revoke.py [--kills 50]``. Target: p99 < 100 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from nats.aio.client import Client as NATS

from shoal.auth import InstanceScope, KeyStore
from shoal.auth.issuer import InstanceIssuer
from shoal.auth.warden import push_account
from shoal.bus import ShoalSettings
from shoal.ops.auth import system_connection
from shoal.ops.connect import open_bus
from shoal.ops.kill import kill
from shoal.ops.server import EmbeddedServer


async def connected(url: str, creds: Path) -> tuple[NATS, asyncio.Event]:
    nc, closed = NATS(), asyncio.Event()

    async def on_closed() -> None:
        closed.set()

    async def quiet(_: Exception) -> None:
        return None

    await nc.connect(
        url,
        user_credentials=str(creds),
        closed_cb=on_closed,
        error_cb=quiet,
        max_reconnect_attempts=1,
        reconnect_time_wait=0.05,
    )
    return nc, closed


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def line(name: str, ms: list[float]) -> str:
    return (
        f"{name:<44} p50 {statistics.median(ms):6.1f} ms   p99 {pct(ms, 0.99):6.1f} ms   "
        f"max {max(ms):6.1f} ms   (n={len(ms)})"
    )


async def run(kills: int) -> None:
    with tempfile.TemporaryDirectory(prefix="shoal-bench-") as tmp:
        settings = ShoalSettings(data_dir=Path(tmp), prefix="bench", principal="bench")
        server = EmbeddedServer(settings)
        record = server.start()
        store = KeyStore.for_data_dir(settings.data_dir)
        issuer = InstanceIssuer(store, settings)
        env = dict(
            os.environ,
            NATS_URL=record.url,
            SHOAL_DATA_DIR=tmp,
            SHOAL_PREFIX=settings.prefix,
            NATS_CREDS=str(store.creds_path("warden")),
        )
        warden = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "shoal",
            "auth",
            "warden",
            env=env,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        try:
            async with open_bus(settings) as bus:
                await asyncio.sleep(1.5)  # the warden connects and loads the bucket
                via_kill: list[float] = []
                for n in range(kills + 3):  # three warm-up rounds, not counted
                    scope = InstanceScope("bench", "worker", f"k{n}", ("work",), ())
                    _nc, closed = await connected(record.url, issuer.issue(scope))
                    start = time.perf_counter()
                    await kill(bus, "instance", f"k{n}", by="bench")
                    await asyncio.wait_for(closed.wait(), 10)
                    if n >= 3:
                        via_kill.append((time.perf_counter() - start) * 1000)
                direct: list[float] = []
                async with system_connection(settings) as sys_nc:
                    for n in range(kills):
                        scope = InstanceScope("bench", "worker", f"d{n}", ("work",), ())
                        path = issuer.issue(scope)
                        public = next(i.public for i in issuer.issued() if i.instance == f"d{n}")
                        _nc, closed = await connected(record.url, path)
                        start = time.perf_counter()
                        token = store.revoke([public])
                        await push_account(sys_nc, token, settings.request_timeout)
                        await asyncio.wait_for(closed.wait(), 10)
                        direct.append((time.perf_counter() - start) * 1000)
            print(f"kill -> instance disconnected, embedded nats-server, {kills} kills")
            print(line("shoal kill --instance (kv, warden, revoke)", via_kill))
            print(line("ceiling: revoke + claims push, no warden", direct))
            print("target: p99 < 100 ms")
        finally:
            warden.terminate()
            await asyncio.wait_for(warden.wait(), 10)
            server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=50)
    asyncio.run(run(parser.parse_args().kills))


if __name__ == "__main__":
    main()

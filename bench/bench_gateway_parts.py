"""Benchmark: where a gateway call's time goes, in one process (c=1, sequential).

The gateway, the fake upstream and the client share one event loop (so no process
scheduling between them): per request, the gateway's end-to-end latency beside the direct
call's, and the budget reservation (KV compare-and-set, on the request's path), the
settlement and the ``model.called`` publish (both after the answer, off its path).

Run: ``uv run python bench/bench_gateway_parts.py [--requests N]``. Starts its own nats-server.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp

from shoal.bus import Bus, ShoalSettings
from shoal.gateway import GatewayConfig, KeyStore, run_gateway
from shoal.gateway.offline import OfflineUpstream, serve_offline_upstream
from shoal.schemas.manifest import CapabilityManifest
from tests.natsproc import NatsProcess


def timed(fn: Callable[..., Awaitable[Any]], sink: list[float]) -> Callable[..., Awaitable[Any]]:
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return await fn(*args, **kwargs)
        finally:
            sink.append(time.perf_counter() - started)

    return wrapper


async def main(requests: int) -> None:
    server = NatsProcess(Path(tempfile.mkdtemp(prefix="bench-parts-")) / "js").start()
    settings = ShoalSettings(nats_url=server.url, prefix="parts")
    try:
        async with (
            Bus.connect(server.url, settings) as bus,
            serve_offline_upstream(OfflineUpstream(keep_bodies=False)) as (upstream, _),
        ):
            await bus.provision()
            _, secret = await KeyStore(bus).create(
                fleet="bench",
                agent="load",
                budget_usd=Decimal(1000),
                rpm=10**9,
                manifest=CapabilityManifest(models=("fast",)),
                by="bench",
            )
            config = GatewayConfig.from_dict(
                {
                    "providers": {"fake": {"base_url": upstream}},
                    "models": {"fast": {"targets": ["fake/offline-small"]}},
                    "cache": {"enabled": False},
                }
            )
            async with run_gateway(bus, config) as gw:
                parts: dict[str, list[float]] = {"reserve": [], "settle": [], "publish": []}
                ledger = gw.model.ledger
                ledger.reserve = timed(ledger.reserve, parts["reserve"])  # type: ignore[method-assign,assignment]
                ledger.settle = timed(ledger.settle, parts["settle"])  # type: ignore[method-assign,assignment]
                bus.publish = timed(bus.publish, parts["publish"])  # type: ignore[method-assign,assignment]
                body = {"messages": [{"role": "user", "content": "hello"}], "max_tokens": 20}
                via = json.dumps({**body, "model": "fast"}).encode()
                direct = json.dumps({**body, "model": "offline-small"}).encode()
                auth = {"Authorization": f"Bearer {secret}", "Content-Type": "application/json"}
                through: list[float] = []
                plain: list[float] = []
                async with aiohttp.ClientSession() as http:
                    for _ in range(requests):
                        for url, data, headers, sink in (
                            (gw.url, via, auth, through),
                            (upstream, direct, {}, plain),
                        ):
                            started = time.perf_counter()
                            async with http.post(
                                f"{url}/chat/completions", data=data, headers=headers
                            ) as r:
                                await r.read()
                                assert r.status == 200, await r.text()
                            sink.append(time.perf_counter() - started)
                await gw.model.drain()
    finally:
        server.stop()
    skip = min(50, requests // 5)

    def p50(xs: list[float]) -> str:
        return f"{statistics.median(xs[skip:]) * 1000:.2f} ms"

    print(f"direct p50 {p50(plain)}; through the gateway p50 {p50(through)}")
    print(
        f"on the path: reservation p50 {p50(parts['reserve'])}; after the answer: "
        f"settlement p50 {p50(parts['settle'])}, model.called publish p50 {p50(parts['publish'])}"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=500)
    asyncio.run(main(parser.parse_args().requests))

"""Benchmark: one OpenAI-compatible upstream, called direct, through shoal's gateway, and
through LiteLLM's proxy, at concurrency 1 and 32, in one run.

Every path is its own process: the fake upstream (aiohttp, the offline model's answers,
``shoal.gateway.offline``), shoal's gateway (``shoal gateway``, with a key that has a budget
and a rate limit, so kill switches, the manifest check, the rate window, the budget
reservation by KV compare-and-set, settlement and ``model.called`` are all on; the response
cache off, since every request is the same), and LiteLLM's proxy (``litellm[proxy]`` in a
throw-away environment, ``uv run --no-project --with 'litellm[proxy]'``, no database). The
load generator (aiohttp, keep-alive) runs in this process. Figures: requests/s and latency
p50/p99 (ms) per path and concurrency; the gateway's added latency is its p50/p99 minus the
direct path's, measured in the same run.

Run: ``uv run python bench/bench_gateway.py [--requests N] [--no-litellm]``.
Targets: added p50 < 1 ms and p99 < 5 ms at c=1; at c=32 >= 60% of direct, >= 5x LiteLLM.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from decimal import Decimal
from pathlib import Path

import aiohttp

from shoal.bus import Bus, ShoalSettings
from shoal.gateway import KeyStore
from shoal.schemas.manifest import CapabilityManifest
from tests.natsproc import NatsProcess

LITELLM_KEY = "sk-bench-master-key-not-a-secret"  # its proxy refuses to start without one
BODY = {
    "model": "fast",
    "messages": [{"role": "user", "content": "Say hello to the benchmark, briefly."}],
    "max_tokens": 32,
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def wait_http(
    url: str,
    timeout: float = 180.0,
    headers: dict[str, str] | None = None,
    proc: subprocess.Popen[bytes] | None = None,
) -> None:
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as http:
        while time.monotonic() < deadline:
            if proc is not None and proc.poll() is not None:
                raise TimeoutError(f"the process serving {url} exited ({proc.returncode})")
            try:
                async with http.get(url, headers=headers) as r:
                    if r.status < 500:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.2)
    raise TimeoutError(f"{url} did not come up")


async def load(url: str, key: str, concurrency: int, requests: int) -> dict[str, float]:
    """``requests`` POSTs by ``concurrency`` workers after a warm-up; req/s, p50, p99."""
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    payload = json.dumps(BODY).encode()
    connector = aiohttp.TCPConnector(limit=concurrency)
    latencies: list[float] = []
    async with aiohttp.ClientSession(connector=connector) as http:

        async def one() -> float:
            started = time.perf_counter()
            async with http.post(url, data=payload, headers=headers) as r:
                await r.read()
                if r.status != 200:
                    raise RuntimeError(f"{url}: HTTP {r.status}: {(await r.text())[:200]}")
            return time.perf_counter() - started

        async def worker(n: int, sink: list[float] | None) -> None:
            for _ in range(n):
                elapsed = await one()
                if sink is not None:
                    sink.append(elapsed)

        await asyncio.gather(
            *(worker(max(1, 100 // concurrency), None) for _ in range(concurrency))
        )
        per = max(1, requests // concurrency)
        started = time.perf_counter()
        await asyncio.gather(*(worker(per, latencies) for _ in range(concurrency)))
        wall = time.perf_counter() - started
    latencies.sort()
    return {
        "rps": len(latencies) / wall,
        "p50_ms": statistics.median(latencies) * 1000,
        "p99_ms": latencies[int(len(latencies) * 0.99) - 1] * 1000,
    }


def spawn(argv: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            argv, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}
        )


async def make_key(settings: ShoalSettings) -> str:
    async with Bus.connect(settings.nats_url or "", settings, name="bench") as bus:
        await bus.provision()
        _, secret = await KeyStore(bus).create(
            fleet="bench",
            agent="load",
            instance="bench-1",
            budget_usd=Decimal("1000000"),
            rpm=1_000_000_000,
            manifest=CapabilityManifest(models=("fast",)),
            by="bench",
        )
        return secret


async def main(args: argparse.Namespace) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="bench-gateway-"))
    procs: list[subprocess.Popen[bytes]] = []
    server = NatsProcess(tmp / "js").start()
    try:
        up_port = free_port()
        procs.append(
            spawn([sys.executable, __file__, "--serve-upstream", str(up_port)], tmp / "up.log")
        )
        upstream = f"http://127.0.0.1:{up_port}/v1"
        await wait_http(f"{upstream}/models")

        settings = ShoalSettings(nats_url=server.url, prefix="bench", data_dir=tmp / "data")
        secret = await make_key(settings)
        config = tmp / "gateway.yaml"
        config.write_text(
            json.dumps(
                {
                    "providers": {"fake": {"base_url": upstream}},
                    "models": {"fast": {"targets": ["fake/offline-small"]}},
                    "cache": {"enabled": False},
                }
            )
        )
        gw_port = free_port()
        profile = ["-m", "cProfile", "-o", args.profile] if args.profile else []
        shoal = [sys.executable, *profile, "-m", "shoal", "--nats-url", server.url]
        shoal += ["--prefix", "bench"]
        shoal += ["--data-dir", str(settings.data_dir)]
        gw_env = {"OTEL_SDK_DISABLED": "true" if args.no_otel else "false"}
        procs.append(
            spawn(
                [
                    *shoal,
                    "gateway",
                    "--config",
                    str(config),
                    "--port",
                    str(gw_port),
                    "--mcp-port",
                    "0",
                ],
                tmp / "gateway.log",
                gw_env,
            )
        )
        gateway = f"http://127.0.0.1:{gw_port}/v1"
        await wait_http(f"{gateway}/models", headers={"Authorization": f"Bearer {secret}"})

        paths = {"direct": (f"{upstream}/chat/completions", "none", "offline-small")}
        paths["shoal gateway"] = (f"{gateway}/chat/completions", secret, "fast")
        if not args.no_litellm:
            litellm = await start_litellm(tmp, upstream, args.litellm_workers, procs)
            if litellm is not None:
                paths["litellm proxy"] = (litellm, LITELLM_KEY, "fast")
        if args.only:
            wanted = {n.strip() for n in args.only.split(",")} | {"direct", "shoal gateway"}
            paths = {n: v for n, v in paths.items() if n in wanted}
        results: dict[tuple[str, int], dict[str, float]] = {}
        for concurrency in (1, 32):
            for name, (url, key, model) in paths.items():
                BODY["model"] = model
                n = args.requests if name != "litellm proxy" else max(200, args.requests // 10)
                results[(name, concurrency)] = await load(url, key, concurrency, n)
        report(results)
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
        server.stop()
        if not os.environ.get("BENCH_KEEP"):
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            print("kept", tmp)


async def start_litellm(
    tmp: Path, upstream: str, workers: int, procs: list[subprocess.Popen[bytes]]
) -> str | None:
    if shutil.which("uv") is None:
        print("litellm proxy: not measured (uv not found)")
        return None
    config = tmp / "litellm.yaml"
    config.write_text(
        json.dumps(
            {
                "model_list": [
                    {
                        "model_name": "fast",
                        "litellm_params": {
                            "model": "openai/offline-small",
                            "api_base": upstream,
                            "api_key": "none",
                        },
                    }
                ],
                "litellm_settings": {"telemetry": False, "drop_params": True},
                "general_settings": {"master_key": LITELLM_KEY},
            }
        )
    )
    port = free_port()
    argv = ["uv", "run", "--no-project", "--with", "litellm[proxy]", "litellm"]
    argv += ["--config", str(config), "--port", str(port), "--num_workers", str(workers)]
    proc = spawn(argv, tmp / "litellm.log", {"LITELLM_LOG": "ERROR"})
    procs.append(proc)
    try:
        await wait_http(f"http://127.0.0.1:{port}/health/liveliness", timeout=600, proc=proc)
    except TimeoutError:
        print("litellm proxy: not measured (it did not start; see its log)")
        print((tmp / "litellm.log").read_text()[-2000:])
        return None
    return f"http://127.0.0.1:{port}/v1/chat/completions"


def report(results: dict[tuple[str, int], dict[str, float]]) -> None:
    print(f"{'path':<16} {'c':>3} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8}")
    for (name, c), r in results.items():
        print(f"{name:<16} {c:>3} {r['rps']:>9.0f} {r['p50_ms']:>8.2f} {r['p99_ms']:>8.2f}")
    direct1, gw1 = results[("direct", 1)], results[("shoal gateway", 1)]
    direct32, gw32 = results[("direct", 32)], results[("shoal gateway", 32)]
    print(
        f"gateway adds at c=1: p50 {gw1['p50_ms'] - direct1['p50_ms']:.2f} ms (target < 1), "
        f"p99 {gw1['p99_ms'] - direct1['p99_ms']:.2f} ms (target < 5)"
    )
    print(f"gateway at c=32: {gw32['rps'] / direct32['rps']:.0%} of direct (target >= 60%)")
    lite = results.get(("litellm proxy", 32))
    if lite is not None:
        print(f"gateway at c=32: {gw32['rps'] / lite['rps']:.1f}x LiteLLM (target >= 5x)")


def serve_upstream(port: int) -> None:
    from aiohttp import web

    from shoal.gateway.offline import OfflineUpstream

    web.run_app(
        OfflineUpstream(keep_bodies=False).app(),
        host="127.0.0.1",
        port=port,
        access_log=None,
        print=None,
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--no-litellm", action="store_true")
    parser.add_argument("--no-otel", action="store_true", help="The gateway without tracing.")
    parser.add_argument("--litellm-workers", type=int, default=1)
    parser.add_argument("--profile", help="Write a cProfile of the gateway process here.")
    parser.add_argument("--only", help="Measure only these paths (comma-separated names).")
    parser.add_argument("--serve-upstream", type=int, default=None, help=argparse.SUPPRESS)
    ns = parser.parse_args()
    if ns.serve_upstream is not None:
        serve_upstream(ns.serve_upstream)
    else:
        asyncio.run(main(ns))

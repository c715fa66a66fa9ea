"""Fixtures: a fake OpenAI-compatible upstream, a gateway in front of it, keys."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from decimal import Decimal
from typing import Any

import pytest

from shoal.aggregates import run_core
from shoal.aggregates.pricing import PriceTable
from shoal.bus import Bus, ShoalSettings
from shoal.gateway import GatewayConfig, KeyStore, RunningGateway, VirtualKey, run_gateway
from shoal.gateway.offline import OfflineUpstream, serve_offline_upstream
from shoal.schemas import ModelCalled
from shoal.schemas.manifest import CapabilityManifest

MakeKey = Callable[..., Awaitable[tuple[VirtualKey, str]]]


@pytest.fixture
async def upstream() -> AsyncIterator[tuple[str, OfflineUpstream]]:
    async with serve_offline_upstream(OfflineUpstream(cached_share=0.5)) as served:
        yield served


def config_for(url: str, **extra: Any) -> GatewayConfig:
    """Provider ``fake`` at ``url``; alias ``fast`` -> offline-small; ``big`` falls back from
    a provider that refuses connections to ``fake``."""
    return GatewayConfig.from_dict(
        {
            "providers": {
                "fake": {"base_url": url, "timeout_s": 5},
                "down": {"base_url": "http://127.0.0.1:1/v1", "timeout_s": 5},  # refuses
            },
            "models": {
                "fast": {"targets": ["fake/offline-small"]},
                "big": {"targets": ["down/gpt-4o-mini", "fake/gpt-4o-mini"]},
                "routed": {
                    "targets": ["fake/offline-small"],
                    "task_classes": {"code": ["fake/gpt-4o"]},
                },
            },
            **extra,
        }
    )


def offline_small(url: str) -> GatewayConfig:
    """Provider ``fake`` at ``url`` serving ``offline-small`` under its own name."""
    return GatewayConfig.from_dict(
        {
            "providers": {"fake": {"base_url": url}},
            "models": {"offline-small": {"targets": ["fake/offline-small"]}},
        }
    )


@pytest.fixture
def gateway_config(upstream: tuple[str, OfflineUpstream]) -> GatewayConfig:
    return config_for(upstream[0])


@pytest.fixture
async def gateway(bus: Bus, gateway_config: GatewayConfig) -> AsyncIterator[RunningGateway]:
    async with run_gateway(bus, gateway_config) as running:
        yield running


@pytest.fixture
def make_key(bus: Bus) -> MakeKey:
    async def make(
        models: tuple[str, ...] = ("fast", "big", "routed"),
        budget: str | None = None,
        **kwargs: Any,
    ) -> tuple[VirtualKey, str]:
        kwargs.setdefault("fleet", "research")
        kwargs.setdefault("agent", "writer")
        manifest = kwargs.pop("manifest", None) or CapabilityManifest(models=models)
        return await KeyStore(bus).create(
            by="tester",
            manifest=manifest,
            budget_usd=Decimal(budget) if budget is not None else None,
            **kwargs,
        )

    return make


async def model_calls(bus: Bus, iid: str, n: int) -> list[ModelCalled]:
    """The ``model.called`` of a session, once there are at least ``n`` (fail after ~5 s)."""
    for _ in range(100):
        found = [
            s.event.data
            for s in await bus.session_events(iid)
            if s.event is not None and isinstance(s.event.data, ModelCalled)
        ]
        if len(found) >= n:
            return found
        await asyncio.sleep(0.05)
    raise AssertionError(f"fewer than {n} model.called in {iid}")


def shoal_cli(settings: ShoalSettings, *args: str) -> str:
    """``python -m shoal`` on the test's server, prefix and data dir; its stdout (exit 0)."""
    base = [sys.executable, "-m", "shoal", "--nats-url", settings.nats_url or ""]
    base += ["--prefix", settings.prefix, "--data-dir", str(settings.data_dir)]
    done = subprocess.run([*base, *args], capture_output=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    return done.stdout.decode()


def gateway_price(calls: Sequence[ModelCalled]) -> Decimal:
    """What the core's table charges for ``calls``, checked equal to the gateway's figures."""
    prices = PriceTable.load(None)
    expected = sum(
        (prices.cost(c.model, c.input_tokens, c.output_tokens, c.cached_tokens) for c in calls),
        Decimal(0),
    )
    assert expected == sum(c.reported_cost_usd or 0 for c in calls) and expected > 0
    return expected


async def cost_by_agent(settings: ShoalSettings) -> tuple[dict[str, Decimal], Decimal]:
    """Run the core until idle, then ``shoal cost --by agent``: cost per agent, and total."""
    await asyncio.wait_for(
        run_core(settings, settings.nats_url or "", asyncio.Event(), until_idle=True), 60
    )
    answer = json.loads(shoal_cli(settings, "cost", "--by", "agent", "--json"))
    rows = {r["key"][0]: Decimal(r["cost_usd"]) for r in answer["rows"]}
    return rows, Decimal(answer["total_usd"])

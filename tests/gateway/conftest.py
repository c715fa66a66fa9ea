"""Fixtures: a fake OpenAI-compatible upstream, a gateway in front of it, keys."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from decimal import Decimal
from typing import Any

import pytest

from shoal.bus import Bus
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

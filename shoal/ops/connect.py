"""How a command reaches NATS: the configured URL, or the embedded server (started if asked)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from shoal.bus import Bus, ShoalSettings
from shoal.errors import NatsUnreachable
from shoal.ops.server import EmbeddedServer

__all__ = ["open_bus", "resolve_url"]


def resolve_url(settings: ShoalSettings, *, start: bool = True) -> str:
    """``NATS_URL`` if set; else the embedded server's URL, starting it when ``start``."""
    if settings.nats_url:
        return settings.nats_url
    server = EmbeddedServer(settings)
    if start:
        started, _ = server.ensure()
        return started.url
    running = server.running()
    if running is None:
        raise NatsUnreachable(
            f"the embedded NATS server is not running (data dir {settings.data_dir}); "
            "run 'shoal up' or set NATS_URL"
        )
    return running.url


@asynccontextmanager
async def open_bus(
    settings: ShoalSettings, *, start: bool = True, provision: bool = True, name: str = "shoal"
) -> AsyncIterator[Bus]:
    """A connected :class:`Bus`, with streams and buckets provisioned unless told not to."""
    async with Bus.connect(resolve_url(settings, start=start), settings, name=name) as bus:
        if provision:
            await bus.provision()
        yield bus

"""Bringing the platform up and down, and reporting its status (library side of the CLI)."""

from __future__ import annotations

from dataclasses import dataclass, field

from nats.js.errors import NotFoundError

from shoal.bus import Bus, ShoalSettings
from shoal.ops.connect import open_bus, resolve_url
from shoal.ops.server import EmbeddedServer

__all__ = ["PlatformStatus", "StreamStatus", "down", "status", "up"]


@dataclass(frozen=True)
class StreamStatus:
    name: str
    messages: int
    bytes: int
    consumers: int


@dataclass(frozen=True)
class PlatformStatus:
    url: str
    embedded: bool
    server_version: str
    memory_bytes: int
    storage_bytes: int
    streams: list[StreamStatus] = field(default_factory=list)

    @property
    def deadletters(self) -> int:
        return next((s.messages for s in self.streams if s.name.endswith("_DEADLETTER")), 0)


async def up(settings: ShoalSettings) -> tuple[str, bool, list[str]]:
    """Start (or reuse) the server and provision streams: (url, started, created names)."""
    started = False
    if settings.embedded:
        _, started = EmbeddedServer(settings).ensure()
    async with open_bus(settings, provision=False) as bus:
        created = await bus.provision()
        return resolve_url(settings, start=False), started, created


def down(settings: ShoalSettings) -> bool:
    """Stop the embedded server; False when none was running."""
    return EmbeddedServer(settings).stop() is not None


async def status(settings: ShoalSettings) -> PlatformStatus:
    """Server URL and version, JetStream usage, and message counts of shoal's streams."""
    url = resolve_url(settings, start=False)
    async with Bus.connect(url, settings, name="shoal-status") as bus:
        account = await bus.js.account_info()
        streams = []
        for spec in bus.topology.streams:
            try:
                info = await bus.js.stream_info(spec.name)
            except NotFoundError:
                continue
            state = info.state
            streams.append(
                StreamStatus(spec.name, state.messages, state.bytes, state.consumer_count)
            )
        return PlatformStatus(
            url=url,
            embedded=settings.embedded,
            server_version=bus.nc.connected_server_version.__str__(),
            memory_bytes=account.memory,
            storage_bytes=account.storage,
            streams=streams,
        )

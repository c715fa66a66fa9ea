"""Bringing the platform up and down, and reporting its status (library side of the CLI)."""

from __future__ import annotations

from dataclasses import dataclass, field

from nats.js.errors import NotFoundError

from shoal.bus import Bus, ShoalSettings
from shoal.ops.connect import open_bus, resolve_url
from shoal.ops.health import Health, check_health, server_version
from shoal.ops.server import EmbeddedServer
from shoal.ops.services import LOCAL_SERVICES

__all__ = ["PlatformStatus", "StreamStatus", "UpResult", "down", "status", "up"]


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
    services: dict[str, int | None] = field(default_factory=dict)
    health: Health = field(default_factory=Health)

    @property
    def deadletters(self) -> int:
        return next((s.messages for s in self.streams if s.name.endswith("_DEADLETTER")), 0)


@dataclass(frozen=True)
class UpResult:
    url: str
    started_server: bool
    created: list[str]
    services: dict[str, int]
    started_services: list[str]


async def up(settings: ShoalSettings, *, services: bool = True) -> UpResult:
    """Start (or reuse) the server, provision streams, and start the local services.

    The services (core, query service, supervisor) are detached processes on this host,
    whether NATS is embedded or external; each is reused if it already runs.
    """
    started = False
    if settings.embedded:
        _, started = EmbeddedServer(settings).ensure()
    url = resolve_url(settings, start=False)
    async with open_bus(settings, provision=False) as bus:
        created = await bus.provision()
    pids: dict[str, int] = {}
    started_services: list[str] = []
    for service in LOCAL_SERVICES if services else ():
        pids[service.name], fresh = service.start(settings, url)
        if fresh:
            started_services.append(service.name)
    return UpResult(url, started, created, pids, started_services)


def down(settings: ShoalSettings) -> tuple[list[str], bool]:
    """Stop the local services, then the embedded server: (services stopped, server stopped)."""
    stopped = [s.name for s in reversed(LOCAL_SERVICES) if s.stop(settings) is not None]
    server = settings.embedded and EmbeddedServer(settings).stop() is not None
    return stopped, server


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
        health = await check_health(bus)
        return PlatformStatus(
            health=health,
            url=url,
            embedded=settings.embedded,
            server_version=server_version(bus),
            memory_bytes=account.memory,
            storage_bytes=account.storage,
            streams=streams,
            services={service.name: service.pid(settings) for service in LOCAL_SERVICES},
        )

"""The registry over NATS: read-only micro endpoints (``<p>.api.registry.<endpoint>``,
service ``shoal-registry``, hosted by ``shoal core``) for the console and any other front end:

| endpoint | request | reply |
|---|---|---|
| ``ls`` | ``{"text"?, "capability"?, "state"?, "kind"?}`` | ``{"rows": [...]}``, one per version |
| ``show`` | ``{"name"}`` | the definition: purpose, owner, every version and its history |
| ``card`` | ``{"name", "version"?, "base_url"?}`` | the agent's A2A agent card |
| ``cards`` | ``{"base_url"?}`` | ``{"cards": [...]}``: every agent with a live version |

Writes are not offered here: registering and lifecycle changes are operator commands run
by the CLI on the registry store with a role check, as fleet commands are (docs/registry.md).
Unknown request fields are refused (400); an unknown name is 404, a bad value 409.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, Literal

from nats.micro.service import Service
from pydantic import BaseModel, RootModel

from shoal.aggregates.agent_cards import agent_card
from shoal.aggregates.definitions import RegistryApplication
from shoal.aggregates.micro import Handlers, Strict, start_service
from shoal.aggregates.persistence import application_env
from shoal.aggregates.registry_query import search
from shoal.bus import Bus, ShoalSettings
from shoal.schemas import Endpoint

__all__ = [
    "REGISTRY",
    "REGISTRY_ENDPOINTS",
    "RegistryService",
    "open_registry",
    "serve_registry",
]

REGISTRY = "registry"
MICRO_NAME = "shoal-registry"


def open_registry(settings: ShoalSettings) -> RegistryApplication:
    """The registry on this machine's persistence (``registry`` store beside ``fleets``)."""
    return RegistryApplication(env=application_env(settings, "registry"))


class LsRequest(Strict):
    text: str = ""
    capability: str | None = None
    state: str | None = None
    kind: Literal["agent", "tool"] | None = None


class ShowRequest(Strict):
    name: str


class CardRequest(Strict):
    name: str
    version: str | None = None
    base_url: str = ""


class CardsRequest(Strict):
    base_url: str = ""


class RowsReply(BaseModel):
    """One row per version that matched (name, kind, version, state, …: docs/registry.md)."""

    rows: list[dict[str, Any]]


class DefinitionReply(RootModel[dict[str, Any]]):
    """A definition: purpose, owner, every version and its history (docs/registry.md)."""


class CardReply(RootModel[dict[str, Any]]):
    """An A2A agent card (the a2a-sdk ``AgentCard`` as JSON)."""


class CardsReply(BaseModel):
    """Every agent with a live version, as A2A agent cards."""

    cards: list[dict[str, Any]]


REGISTRY_ENDPOINTS: tuple[Endpoint, ...] = (
    Endpoint(REGISTRY, "ls", LsRequest, RowsReply, "search agents and tools"),
    Endpoint(REGISTRY, "show", ShowRequest, DefinitionReply, "one definition and its versions"),
    Endpoint(REGISTRY, "card", CardRequest, CardReply, "an agent's A2A agent card"),
    Endpoint(REGISTRY, "cards", CardsRequest, CardsReply, "every live agent's card"),
)
"""Every endpoint of ``shoal-registry``: request and reply bodies."""


class RegistryService:
    """The registry endpoints on one connection, reading one registry application."""

    def __init__(self, bus: Bus, app: RegistryApplication) -> None:
        self.bus = bus
        self.app = app
        self.service: Service | None = None

    async def start(self) -> None:
        def in_thread(fn: Callable[[Any], Any]) -> Callable[[Any], Awaitable[Any]]:
            # The eventsourcing application is synchronous: each read runs in a thread.
            async def call(request: Any) -> Any:
                return await asyncio.to_thread(fn, request)

            return call

        handlers: Handlers = {
            "ls": in_thread(self._ls),
            "show": in_thread(self._show),
            "card": in_thread(self._card),
            "cards": in_thread(self._cards),
        }
        self.service = await start_service(
            self.bus,
            name=MICRO_NAME,
            description="shoal registry: agents, tools, versions, lifecycle, A2A agent cards",
            endpoints=REGISTRY_ENDPOINTS,
            handlers=handlers,
        )

    async def stop(self) -> None:
        if self.service is not None:
            await self.service.stop()
            self.service = None

    def _ls(self, r: LsRequest) -> dict[str, Any]:
        rows = search(self.app.all(), r.text, capability=r.capability, state=r.state, kind=r.kind)
        return {"rows": [row.to_json() for row in rows]}

    def _show(self, r: ShowRequest) -> dict[str, Any]:
        return self.app.find(r.name).to_json()

    def _card(self, r: CardRequest) -> dict[str, Any]:
        definition = self.app.get("agent", r.name)
        prefix = self.bus.settings.prefix
        return agent_card(definition, r.version, prefix=prefix, base_url=r.base_url)

    def _cards(self, r: CardsRequest) -> dict[str, Any]:
        prefix = self.bus.settings.prefix
        cards = [
            agent_card(d, prefix=prefix, base_url=r.base_url)
            for d in self.app.all()
            if d.kind == "agent" and d.latest is not None and d.latest.state != "retired"
        ]
        return {"cards": cards}


async def serve_registry(
    settings: ShoalSettings, url: str, stop: asyncio.Event, *, ready: asyncio.Event | None = None
) -> None:
    """Serve the registry endpoints on their own connection until ``stop`` is set.

    A lost connection raises :class:`~shoal.errors.ConnectionLost` (``Bus.connect``), so
    the process hosting it exits non-zero instead of idling with no endpoints.
    """
    async with Bus.connect(url, settings, name="shoal-registry") as bus:
        app = await asyncio.to_thread(open_registry, settings)
        service = RegistryService(bus, app)
        try:
            await service.start()
            if ready is not None:
                ready.set()
            await stop.wait()
        finally:
            await service.stop()
            app.close()
